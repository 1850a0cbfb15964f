"""The shared training loop for teachers and students; reads top to bottom.

``fit`` = setup (data, model, optimiser) -> resume -> for each epoch: train one epoch, evaluate,
checkpoint -> finish. The caller owns any process group (see :mod:`dait_cache.dist`).

Splits: the validation split (``val_fraction`` per class, seeded) is carved from the cached train
rows first, then ``train_fraction`` is taken from what remains, so every fraction is selected on
the same validation images. The test split is only evaluated, never selected on.

Device discipline: per-batch loss terms and accuracy counts stay on the device; the host reads
them once per epoch (one synchronisation), and a non-finite loss is reported then, before
anything of that epoch is saved.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..cache.reader import Cache, PixelSource
from ..config import TrainConfig, save_config
from ..data.splits import official_fraction, train_val_split
from ..data.views import normalize_pixels
from ..dist import DistInfo, barrier, current
from ..errors import DaitError
from ..io import remove_stale_temps, to_jsonable
from ..locks import exclusive
from ..models import Backbone
from ..progress import Progress
from ..provenance import provenance
from ..vlm import resolve_device
from . import checkpoint as ckpt
from .data import epoch_plan, make_loader
from .objectives import Objective
from .runs import check_same_cache, prepare_run_dir, resume_differences

EpochEnd = Callable[[dict], None]  # one metrics row
TRAIN, TEST = 0, 1  # split codes of the loader's batch index


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


def split_rows(cache: Cache, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows) of the cached train split: ``train_fraction`` of the official
    training set per class, drawn from the rows the validation split left (see split_counts)."""
    return _split(cache, cfg)[:2]


def split_counts(cache: Cache, cfg: TrainConfig) -> dict:
    """n_train / n_val / n_test, and how many training rows the fraction asked for (when the
    validation split leaves fewer, the run trains on fewer and says so: ``capped``)."""
    train, val, requested = _split(cache, cfg)
    return {
        "n_train": len(train),
        "n_val": len(val),
        "n_test": len(cache.labels("test")),
        "n_train_requested": requested,
        "capped": len(train) < requested,
    }


def _split(cache: Cache, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, int]:
    labels = cache.labels("train")
    train, val = train_val_split(labels, cfg.val_fraction, cfg.seed)
    train, requested = official_fraction(labels, train, cfg.train_fraction, cfg.seed)
    return train, val, requested


@dataclass
class TrainData:
    """Everything an epoch reads. Labels and VLM embeddings live on the training device."""

    train_rows: np.ndarray
    val_rows: np.ndarray
    test_rows: np.ndarray
    labels: tuple[torch.Tensor, torch.Tensor]  # (train, test) labels on the device
    vlm_emb: torch.Tensor  # (N_train, V, D) float16 on the device
    loader: torch.utils.data.DataLoader

    @property
    def num_views(self) -> int:
        return int(self.vlm_emb.shape[1])


def prepare_data(cache: Cache, cfg: TrainConfig, device: torch.device) -> TrainData:
    """Cached arrays in memory (and on the device) before any worker starts; one loader."""
    train_rows, val_rows = split_rows(cache, cfg)
    labels = tuple(torch.from_numpy(cache.labels(s)).to(device) for s in ("train", "test"))
    vlm_emb = torch.from_numpy(cache.img_emb("train")).to(device)
    loader = make_loader([PixelSource(cache, "train"), PixelSource(cache, "test")], cfg.workers, device.type == "cuda")
    return TrainData(train_rows, val_rows, np.arange(len(labels[1])), labels, vlm_emb, loader)


def model_input(pixels: torch.Tensor, model: Backbone) -> torch.Tensor:
    """uint8 pixels on the device -> the model's normalised input (channels-last on a GPU)."""
    x = normalize_pixels(pixels, model.mean, model.std)
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cuda" else x


def make_batch(
    pixels: torch.Tensor, index: torch.Tensor, data: TrainData, model: Backbone, device: torch.device
) -> dict:
    """A training batch on the device from the loader's (pixels, [split, row, view]) pair."""
    pixels = pixels.to(device, non_blocking=True)
    index = index.to(device, non_blocking=True)
    rows, views = index[:, 1], index[:, 2]
    return {
        "pixels": pixels,
        "x": model_input(pixels, model),
        "label": data.labels[TRAIN][rows],
        "vlm_img": data.vlm_emb[rows, views].float(),
    }


def autocast_for(device: torch.device):
    return (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext


def train_step(forward, opt: torch.optim.Optimizer, batch: dict, epoch: int, autocast) -> tuple:
    """One optimiser step; returns (loss, logits, terms) as device tensors (no host sync)."""
    with autocast():
        loss, logits, terms = forward(batch, epoch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss, logits, terms


def train_one_epoch(
    forward,
    opt,
    data: TrainData,
    model: Backbone,
    cfg: TrainConfig,
    epoch: int,
    device: torch.device,
    dist: DistInfo,
    progress: Progress | None = None,
    part: dict | None = None,
    save_part: Callable[[dict], None] | None = None,
    every_s: float = 0.0,
) -> dict:
    """Train one epoch; return its averaged loss terms, train top-1, images seen and seconds.

    ``part`` continues an epoch stopped part-way (what ``save_part`` received: the next batch, the
    running sums and the RNG state), exactly where it stopped; ``save_part`` is called every
    ``every_s`` seconds inside the epoch so that an interruption loses at most that much."""
    t0 = time.perf_counter()
    autocast = autocast_for(device)
    torch.manual_seed(_epoch_seed(cfg.seed, epoch))  # dropout etc. replay on resume
    start = part["batch"] if part else 0
    rows, views = epoch_plan(data.train_rows, data.num_views, cfg.seed, epoch, dist.rank, dist.world)
    data.loader.batch_sampler.set_plan(TRAIN, rows, views, cfg.batch_size, drop_last=True, start=start)
    total = start + len(data.loader)
    total = total if cfg.max_batches is None else min(total, cfg.max_batches)
    sums: dict[str, torch.Tensor] = {}
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen, before = 0, 0.0
    if part:
        torch.set_rng_state(part["rng"])
        if device.type == "cuda" and part.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(part["cuda_rng"], device)
        sums = {k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in part["sums"].items()}
        correct += part["correct"]
        seen, before = part["seen"], part["seconds"]
    last_part = time.monotonic()
    for b, (pixels, index) in enumerate(data.loader, start):
        if b == total:
            break
        batch = make_batch(pixels, index, data, model, device)
        loss, logits, terms = train_step(forward, opt, batch, epoch, autocast)
        n = len(index)
        seen += n
        correct += (logits.argmax(1) == batch["label"]).sum()
        for name, value in {"loss": loss.detach(), **terms}.items():
            sums[name] = sums.get(name, 0.0) + value.float() * n
        if progress:
            progress(f"epoch {epoch + 1}/{cfg.epochs}", b + 1, total)
        if save_part and every_s > 0 and b + 1 < total and time.monotonic() - last_part >= every_s:
            save_part(
                {
                    "epoch": epoch,
                    "batch": b + 1,
                    "sums": {k: float(v) for k, v in sums.items()},
                    "correct": int(correct),
                    "seen": seen,
                    "seconds": before + time.perf_counter() - t0,
                    "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                }
            )
            last_part = time.monotonic()
    names = list(sums)
    values = torch.stack([sums[k] for k in names] + [correct.float()]).tolist() if names else [0.0]
    row = {k: v / max(seen, 1) for k, v in zip(names, values)}
    if not all(math.isfinite(v) for v in row.values()):
        raise DaitError(
            f"loss became non-finite during epoch {epoch} ({row}); nothing of this epoch "
            "was saved: lower --lr and continue with --resume"
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = before + time.perf_counter() - t0
    return {**row, "train_top1": 100.0 * values[-1] / max(seen, 1), "seen": seen, "train_seconds": seconds}


@torch.no_grad()
def evaluate(
    model: Backbone, data: TrainData, split: int, rows: np.ndarray, cfg: TrainConfig, device: torch.device
) -> float:
    """Top-1 (%) of the clean view (view 0) of ``rows`` of ``split`` (TRAIN for val, or TEST)."""
    if len(rows) == 0:
        return float("nan")
    model.eval()
    autocast = autocast_for(device)
    data.loader.batch_sampler.set_plan(split, rows, np.zeros(len(rows), dtype=np.int64), cfg.batch_size * 2)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for pixels, index in data.loader:
        index = index.to(device, non_blocking=True)
        with autocast():
            z = model(model_input(pixels.to(device, non_blocking=True), model))
        correct += (z.argmax(1) == data.labels[split][index[:, 1]]).sum()
    return 100.0 * int(correct) / len(rows)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, 11, epoch]).generate_state(1)[0])


def _resume(spec: RunSpec, step: nn.Module, opt, sched) -> tuple[int, dict, list, int, dict | None]:
    """(first epoch, best so far, metrics rows, times resumed, the first epoch's part already
    trained or None) from the run's checkpoint."""
    best = {"val_top1": -1.0, "epoch": -1, "test_top1": None}
    if not (spec.cfg.resume and (spec.run_dir / ckpt.CHECKPOINT).is_file()):
        return 0, best, [], 0, None
    saved = json.loads((spec.run_dir / "config.json").read_text())
    check_same_cache(saved, spec.cache, f"run {spec.run_dir}")
    state = ckpt.load(spec.run_dir / ckpt.CHECKPOINT)
    if missing := {"epoch", "optimizer", "scheduler", "best"} - set(state):
        raise DaitError(
            f"{spec.run_dir / ckpt.CHECKPOINT} is not a training checkpoint (no "
            f"{', '.join(sorted(missing))}); delete it and start the run again"
        )
    if diffs := resume_differences(saved, spec.cfg, state["epoch"] + 1):
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


def _save_epoch(
    run_dir: Path,
    step,
    opt,
    sched,
    epoch: int,
    best: dict,
    improved: bool,
    resumed: int,
    metrics: list,
    summary: dict,
    checkpoint: bool = True,
    csv_log: bool = True,
) -> None:
    """Metrics, best.pt when validation improved, checkpoint.pt when ``checkpoint`` (a resume
    replays the epochs after it exactly), and the summary."""
    ckpt.write_metrics(run_dir, metrics, csv_too=csv_log)
    if improved:
        ckpt.save_atomic({"step": step.state_dict(), "epoch": epoch, "val_top1": best["val_top1"]}, run_dir / ckpt.BEST)
    if checkpoint:
        ckpt.save_atomic(
            {
                "step": step.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch,
                "best": best,
                "resumed": resumed,
                "metrics": metrics,
            },
            run_dir / ckpt.CHECKPOINT,
        )
    summary.update(summary_numbers(metrics, best))
    ckpt.write_summary(run_dir, summary)


def _save_part(
    run_dir: Path, step, opt, sched, epoch: int, best: dict, resumed: int, metrics: list, done: dict
) -> None:
    """checkpoint.pt part-way through ``epoch``: the epochs before it, and where this one stands."""
    ckpt.save_atomic(
        {
            "step": step.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "epoch": epoch - 1,
            "best": best,
            "resumed": resumed,
            "metrics": metrics,
            "part": done,
        },
        run_dir / ckpt.CHECKPOINT,
    )


def summary_numbers(metrics: list, best: dict) -> dict:
    """What summary.json reports, from the metric rows and the best-on-validation record."""
    row = metrics[-1]
    return {
        "epochs_done": row["epoch"] + 1,
        "test_top1_last": row["test_top1"],
        "val_top1_last": row["val_top1"],
        "test_top1_best_val": best["test_top1"],
        "val_top1_best": best["val_top1"],
        "best_epoch": best["epoch"],
    }


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


def own_rng(fn):
    """Run ``fn`` on a private copy of torch's random state: the runs seed it for reproducible
    numbers, and the caller's state is as it was afterwards."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            return fn(*args, **kwargs)

    return wrapper


@own_rng
def fit(spec: RunSpec, progress: Progress | None = None, on_epoch: EpochEnd | None = None) -> dict:
    """Train ``spec.model`` with ``spec.objective``; return the run's summary."""
    cfg, run_dir = spec.cfg, Path(spec.run_dir)
    device = resolve_device(cfg.device)
    dist = current()
    torch.manual_seed(cfg.seed)
    # one writer per run folder; the lock sits beside it, so the folder holds only the run's files
    with exclusive(run_dir.parent / f".{run_dir.name}.lock", f"run {run_dir}", held=dist.is_main):
        try:
            # ---- setup
            # checked again under the lock: a run that finished between the caller's check and here
            # would otherwise be trained over from scratch
            prepare_run_dir(run_dir, cfg.resume)
            if dist.is_main and run_dir.is_dir():  # an earlier crash's temp files
                remove_stale_temps(run_dir)
            data = prepare_data(spec.cache, cfg, device)
            step, forward, opt, sched = build_step(spec, device, dist)
            model, objective = spec.model, spec.objective

            # ---- resume or start
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
                **(summary_numbers(metrics, best) if metrics else {}),
            }
            if dist.is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
                save_config(
                    {**to_jsonable(cfg), **spec.record, "provenance": provenance(cfg.workdir, str(device))}, run_dir
                )
                ckpt.write_summary(run_dir, summary)
                if resumed:
                    ckpt.write_metrics(
                        run_dir, metrics, csv_too=cfg.log == "csv"
                    )  # a damaged metrics.jsonl is rewritten

            # ---- epochs
            last_checkpoint = time.monotonic()
            for epoch in range(start, cfg.epochs):
                t0 = time.perf_counter()
                forward.train()
                # inside an epoch too, every --checkpoint-minutes (one process: ranks would each need their part)
                save_part = (
                    functools.partial(_save_part, run_dir, step, opt, sched, epoch, best, resumed, metrics)
                    if dist.is_main and not dist.multi
                    else None
                )
                trained = train_one_epoch(
                    forward,
                    opt,
                    data,
                    model,
                    cfg,
                    epoch,
                    device,
                    dist,
                    progress,
                    part=part if epoch == start else None,
                    save_part=save_part,
                    every_s=60 * cfg.checkpoint_minutes,
                )
                lr = opt.param_groups[0]["lr"]
                sched.step()
                t_eval = time.perf_counter()
                val_top1 = evaluate(model, data, TRAIN, data.val_rows, cfg, device)
                improved = val_top1 > best["val_top1"] or (np.isnan(val_top1) and epoch == cfg.epochs - 1)
                reported = improved or epoch == cfg.epochs - 1
                test_top1 = (
                    evaluate(model, data, TEST, data.test_rows, cfg, device)
                    if reported or cfg.eval_test == "every"
                    else None
                )
                seen, train_seconds = trained.pop("seen"), trained.pop("train_seconds")
                row = {
                    "epoch": epoch,
                    **trained,
                    "lambda": objective.lambda_at(epoch),
                    "lr": lr,
                    "val_top1": val_top1,
                    "test_top1": test_top1,
                    "seconds": time.perf_counter() - t0,
                    "eval_seconds": time.perf_counter() - t_eval,
                    "images_per_s": seen / train_seconds if train_seconds > 0 else 0.0,
                }
                metrics.append(row)
                if improved:
                    best = {"val_top1": val_top1, "epoch": epoch, "test_top1": test_top1}
                due = epoch == cfg.epochs - 1 or time.monotonic() - last_checkpoint >= 60 * cfg.checkpoint_minutes
                if dist.is_main:
                    _save_epoch(
                        run_dir,
                        step,
                        opt,
                        sched,
                        epoch,
                        best,
                        improved,
                        resumed,
                        metrics,
                        summary,
                        due,
                        cfg.log == "csv",
                    )
                if due:
                    last_checkpoint = time.monotonic()
                if on_epoch and dist.is_main:
                    on_epoch(row)
                barrier(dist)

            # ---- finish
            summary["status"] = "finished"
            if dist.is_main:
                ckpt.write_summary(run_dir, summary)
            return summary
        except BaseException as exc:
            summary_now = ckpt.read_summary(run_dir) if dist.is_main else None
            if summary_now is not None and summary_now.get("status") == "running":
                summary_now["status"] = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
                summary_now["error"] = str(exc)[:500]
                try:
                    ckpt.write_summary(run_dir, summary_now)
                except OSError:  # a full disk: the original error is the one to report
                    pass
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise DaitError(
                    f"the disk holding {run_dir} is full ({exc.strerror}); free some space and "
                    "continue with --resume (from its last checkpoint)"
                ) from None
            raise
