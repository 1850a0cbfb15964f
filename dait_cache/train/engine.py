"""The shared training loop for teachers and students; reads top to bottom.

``fit`` = setup (data, model, optimiser, resume state) -> for each epoch: train one epoch
(:mod:`.loop`), evaluate, record (metrics, best.pt, checkpoint.pt) -> finish. The caller owns any
process group (see :mod:`dait_cache.dist`).
"""

from __future__ import annotations

import errno
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..cache.reader import Cache
from ..config import TrainConfig, save_config
from ..dist import DistInfo, barrier, current
from ..errors import DaitError
from ..io import remove_stale_temps, to_jsonable
from ..locks import exclusive, reading, run_lock
from ..models import Backbone
from ..progress import Progress
from ..provenance import provenance
from ..seeding import own_rng
from ..vlm import resolve_device
from . import checkpoint as ckpt
from .loop import TEST, TRAIN, NonFiniteLoss, TrainData, evaluate, prepare_data, split_counts, train_one_epoch
from .objectives import Objective
from .runs import check_same_cache, prepare_run_dir, resume_differences, run_config
from .tensorboard import TensorBoardLog

EpochEnd = Callable[[dict], None]  # one metrics row


@dataclass
class RunSpec:
    """What to train, where, and what to record beside it."""

    cfg: TrainConfig
    run_dir: Path
    cache: Cache
    model: Backbone
    objective: Objective
    record: dict = field(default_factory=dict)  # extra config.json entries (cache, teacher, ...)
    summary: dict = field(default_factory=dict)  # the run's identity in summary.json (dataset, arch, ...)


class Step(nn.Module):
    """Model + objective as one module, so DDP sees every trainable parameter."""

    def __init__(self, model: Backbone, objective: Objective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: dict, epoch: int):
        return self.objective(self.model, batch, epoch)


def _resume(spec: RunSpec, step: nn.Module, opt, sched) -> tuple[int, dict, list, int, dict | None]:
    """(first epoch, best so far, metrics rows, times resumed, the first epoch's part already
    trained or None) from the run's checkpoint."""
    best = {"val_top1": -1.0, "epoch": -1, "test_top1": None}
    if not (spec.cfg.resume and (spec.run_dir / ckpt.CHECKPOINT).is_file()):
        return 0, best, [], 0, None
    saved = run_config(spec.run_dir, required=True)
    check_same_cache(saved, spec.cache, f"run {spec.run_dir}")
    state = ckpt.load(spec.run_dir / ckpt.CHECKPOINT)
    if missing := {"epoch", "optimizer", "scheduler", "best"} - set(state):
        raise DaitError(
            f"{spec.run_dir / ckpt.CHECKPOINT} is not a training checkpoint (no "
            f"{', '.join(sorted(missing))}); delete it and start the run again"
        )
    if diffs := resume_differences(saved, spec.cfg, state["epoch"] + 1, spec.record):
        raise DaitError(
            f"run {spec.run_dir} was started with other settings ({'; '.join(diffs)}); "
            "--resume takes the run's own settings (only --epochs may grow), or start "
            "another run with --name"
        )
    ckpt.load_into(step, state["step"], spec.run_dir / ckpt.CHECKPOINT, f"{spec.cfg.arch} with {spec.cfg.method}")
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    start = state["epoch"] + 1
    # the checkpoint carries the metric rows (sha256-checked); older checkpoints did not
    metrics = state.get("metrics") or [m for m in ckpt.read_metrics(spec.run_dir) if m["epoch"] < start]
    part = state.get("part")
    return (
        start,
        state["best"],
        metrics,
        int(state.get("resumed", 0)) + 1,
        part if part and part["epoch"] == start else None,
    )


def build_step(spec: RunSpec, device: torch.device, dist: DistInfo):
    """(step module, forward callable, optimiser, scheduler). DDP needs no unused-parameter search:
    every parameter of every objective takes part in its loss."""
    cfg = spec.cfg
    step = Step(spec.model.to(device), spec.objective.to_device(device))
    if device.type == "cuda":
        step = step.to(memory_format=torch.channels_last)
    trainable = [p for p in step.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    forward = nn.parallel.DistributedDataParallel(step, find_unused_parameters=False) if dist.enabled else step
    if cfg.compile:
        forward = torch.compile(forward)  # step.state_dict() keeps its plain keys
    return step, forward, opt, sched


@dataclass
class _Run:
    """A run in progress: what ``fit``'s phases share."""

    spec: RunSpec
    device: torch.device
    dist: DistInfo
    data: TrainData
    step: nn.Module
    forward: Callable
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    start: int  # first epoch to train
    best: dict
    metrics: list
    resumed: int
    part: dict | None  # the first epoch's part already trained
    summary: dict
    last_checkpoint: float = field(default_factory=time.monotonic)
    tensorboard: TensorBoardLog | None = None  # --log tensorboard, main process


def _setup(spec: RunSpec, device: torch.device, dist: DistInfo) -> _Run:
    """Data, model, optimiser; the state to resume from; config.json and the first summary."""
    cfg, run_dir = spec.cfg, Path(spec.run_dir)
    # checked again under the lock: a run that finished between the caller's check and here
    # would otherwise be trained over from scratch
    prepare_run_dir(run_dir, cfg.resume)
    if dist.is_main and run_dir.is_dir():  # an earlier crash's temp files
        remove_stale_temps(run_dir)
    data = prepare_data(spec.cache, cfg, device)
    step, forward, opt, sched = build_step(spec, device, dist)
    start, best, metrics, resumed, part = _resume(spec, step, opt, sched)
    # numbers of a resumed run come from its checkpoint, never from a summary that may be damaged
    summary = {
        "status": "running",
        "epochs": cfg.epochs,
        "epochs_done": start,
        "resumed": resumed,
        **spec.summary,
        **split_counts(spec.cache, cfg),
        "val_fraction": cfg.val_fraction,
        **(ckpt.summary_numbers(metrics, best) if metrics else {}),
    }
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        here = provenance(cfg.workdir, str(device))
        save_config(
            {**to_jsonable(cfg), **spec.record, **provenance_record(run_dir, here, start if resumed else None)}, run_dir
        )
        ckpt.write_summary(run_dir, summary)
        if resumed:
            ckpt.write_metrics(run_dir, metrics, csv_too=cfg.log == "csv")  # a damaged metrics.jsonl is rewritten
    tb = TensorBoardLog(run_dir, start) if cfg.log == "tensorboard" and dist.is_main else None
    return _Run(
        spec,
        device,
        dist,
        data,
        step,
        forward,
        opt,
        sched,
        start,
        best,
        metrics,
        resumed,
        part,
        summary,
        tensorboard=tb,
    )


def provenance_record(run_dir: Path, here: dict, resumed_at: int | None) -> dict:
    """config.json's provenance: where the run began (``provenance``) and, for a resumed run, where
    each later part of it ran (``resumed_provenance``, oldest first, each with the epoch it began
    at: a finished run resumed with no epoch left trained nothing there). A resume on another
    machine or version replaced the first record before, and with it the trace of the numbers."""
    saved = run_config(run_dir) if resumed_at is not None else {}
    if not isinstance(saved.get("provenance"), dict):  # a fresh run, or one from before provenance was kept
        return {"provenance": here}
    later = [*saved.get("resumed_provenance", []), {**here, "from_epoch": resumed_at}]
    return {"provenance": saved["provenance"], "resumed_provenance": later}


def _epoch(run: _Run, epoch: int, progress: Progress | None) -> tuple[dict, bool]:
    """Train one epoch (continuing its saved part, if any), step the schedule, evaluate; the
    epoch's metrics row, and whether validation improved."""
    cfg, run_dir, dist = run.spec.cfg, Path(run.spec.run_dir), run.dist
    t0 = time.perf_counter()
    run.forward.train()
    # inside an epoch too, every --checkpoint-minutes: every rank takes part (the sums and RNG
    # states are the group's), rank 0 writes
    save_part = functools.partial(
        ckpt.save_part, run_dir, run.step, run.opt, run.sched, epoch, run.best, run.resumed, run.metrics
    )
    if not dist.is_main:
        save_part = lambda done: None  # noqa: E731
    trained = train_one_epoch(
        run.forward, run.opt, run.data, run.spec.model, cfg, epoch, run.device, dist, progress,
        part=run.part if epoch == run.start else None, save_part=save_part, every_s=60 * cfg.checkpoint_minutes,
    )  # fmt: skip
    lr = run.opt.param_groups[0]["lr"]
    run.sched.step()
    t_eval = time.perf_counter()
    val_top1 = evaluate(run.spec.model, run.data, TRAIN, run.data.val_rows, cfg, run.device, dist)
    # no validation split: the last epoch is the one reported as "best"
    improved = val_top1 > run.best["val_top1"] or (np.isnan(val_top1) and epoch == cfg.epochs - 1)
    test_top1 = None  # "selected": the best-on-validation epoch is tested once, at the end (_test_best)
    if epoch == cfg.epochs - 1 or cfg.eval_test == "every":
        test_top1 = evaluate(run.spec.model, run.data, TEST, run.data.test_rows, cfg, run.device, dist)
    seen, train_seconds = trained.pop("seen"), trained.pop("train_seconds")
    return {
        "epoch": epoch,
        **trained,
        "lambda": run.spec.objective.lambda_at(epoch),
        "lr": lr,
        "val_top1": val_top1,
        "test_top1": test_top1,
        "seconds": time.perf_counter() - t0,
        "eval_seconds": time.perf_counter() - t_eval,
        "images_per_s": seen / train_seconds if train_seconds > 0 else 0.0,
    }, improved


def _record(run: _Run, row: dict, improved: bool) -> None:
    """Metrics, best.pt and (every --checkpoint-minutes, and at the end) checkpoint.pt."""
    cfg, epoch = run.spec.cfg, row["epoch"]
    run.metrics.append(row)
    if improved:
        run.best = {"val_top1": row["val_top1"], "epoch": epoch, "test_top1": row["test_top1"]}
    if run.tensorboard:  # before the checkpoint: a resume re-logs (and purges) what follows it
        run.tensorboard.add(row)
    due = epoch == cfg.epochs - 1 or time.monotonic() - run.last_checkpoint >= 60 * cfg.checkpoint_minutes
    if run.dist.is_main:
        ckpt.save_epoch(
            Path(run.spec.run_dir), run.step, run.opt, run.sched, epoch, run.best, improved, run.resumed,
            run.metrics, run.summary, due, cfg.log == "csv",
        )  # fmt: skip
    if due:
        run.last_checkpoint = time.monotonic()


def _test_best(run: _Run) -> None:
    """With ``--eval-test selected``, the test top-1 of the best-on-validation weights (best.pt),
    evaluated once after the last epoch instead of at every new best; the same number, as
    evaluation is a pure function of the weights. Fills the best epoch's metrics row too. The
    model keeps the best weights: the last ones are in checkpoint.pt, and nothing trains after.
    Every rank evaluates its share (best.pt was written before the epoch's barrier); rank 0 writes."""
    best, run_dir = run.best, Path(run.spec.run_dir)
    if best["test_top1"] is not None or best["epoch"] < 0:
        return
    ckpt.load_into(run.step, ckpt.load(run_dir / ckpt.BEST)["step"], run_dir / ckpt.BEST, run.spec.cfg.arch)
    best["test_top1"] = evaluate(run.spec.model, run.data, TEST, run.data.test_rows, run.spec.cfg, run.device, run.dist)
    for row in run.metrics:
        if row["epoch"] == best["epoch"]:
            row["test_top1"] = best["test_top1"]
    if run.dist.is_main:
        ckpt.write_metrics(run_dir, run.metrics, csv_too=run.spec.cfg.log == "csv")
    run.summary.update(ckpt.summary_numbers(run.metrics, best))


def _stopped(run_dir: Path, dist: DistInfo, exc: BaseException) -> DaitError | None:
    """Mark a run that stopped on ``exc`` as interrupted or failed in its summary; the error to
    raise instead of ``exc`` where there is a clearer one."""
    summary = ckpt.read_summary(run_dir) if dist.is_main else None
    if summary is not None and summary.get("status") == "running":
        summary["status"] = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        summary["error"] = str(exc)[:500]
        try:
            ckpt.write_summary(run_dir, summary)
        except OSError:  # a full disk: the original error is the one to report
            pass
    if isinstance(exc, NonFiniteLoss):  # --resume keeps the run's --lr: it cannot be the fix
        kept = (run_dir / ckpt.CHECKPOINT).is_file()
        return DaitError(
            f"{exc}; "
            + (
                f"the last checkpoint is from before it, but a resumed run keeps its --lr: lower --lr and "
                f"start another run (--name NEW, or delete {run_dir})"
                if kept
                else "nothing was saved: lower --lr and run the command again"
            )
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return DaitError(
            f"the disk holding {run_dir} is full ({exc.strerror}); free some space and "
            "continue with --resume (from its last checkpoint)"
        )
    return None


@own_rng
def fit(spec: RunSpec, progress: Progress | None = None, on_epoch: EpochEnd | None = None) -> dict:
    """Train ``spec.model`` with ``spec.objective``; return the run's summary.

    setup (data, model, optimiser, resume state) -> for each epoch: train, evaluate, record
    (metrics, best.pt, checkpoint.pt) -> finish (summary status "finished")."""
    run_dir, dist = Path(spec.run_dir), current()
    torch.manual_seed(spec.cfg.seed)
    # one writer per run folder; the lock sits beside it, so the folder holds only the run's files
    with (
        exclusive(run_lock(run_dir), f"run {run_dir}", held=dist.is_main),
        reading(spec.cache.dir, f"run {run_dir}", held=dist.is_main),
    ):
        run = None
        try:
            run = _setup(spec, resolve_device(spec.cfg.device), dist)
            for epoch in range(run.start, spec.cfg.epochs):
                row, improved = _epoch(run, epoch, progress)
                _record(run, row, improved)
                if on_epoch and dist.is_main:
                    on_epoch(row)
                barrier(dist)
            _test_best(run)
            run.summary["status"] = "finished"
            if dist.is_main:
                ckpt.write_summary(run_dir, run.summary)
            return run.summary
        except BaseException as exc:
            if clearer := _stopped(run_dir, dist, exc):
                raise clearer from None
            raise
        finally:
            if run is not None and run.tensorboard:
                run.tensorboard.close()
