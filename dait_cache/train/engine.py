"""The shared training loop for teachers and students; reads top to bottom.

Splits: the validation split (``val_fraction`` per class, seeded) is carved from the cached train
rows first, then ``train_fraction`` is taken from what remains, so every fraction is selected on
the same validation images. The test split is only evaluated, never selected on.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from ..cache.reader import Cache
from ..config import TrainConfig, save_config, to_jsonable
from ..data.splits import stratified_fraction, train_val_split
from ..data.views import normalize_pixels
from ..dist import barrier, init_distributed, shutdown
from ..errors import DaitError
from ..models import Backbone
from ..vlm import resolve_device
from . import checkpoint as ckpt
from .data import PixelSource, epoch_plan, make_loader
from .objectives import Objective
from .runs import check_same_cache

Progress = Callable[[str, int, int], None]  # (task, done, total)
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


class Step(nn.Module):
    """Model + objective as one module, so DDP sees every trainable parameter."""

    def __init__(self, model: Backbone, objective: Objective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: dict, epoch: int):
        return self.objective(self.model, batch, epoch)


def split_rows(cache: Cache, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows) of the cached train split."""
    labels = cache.labels("train")
    train, val = train_val_split(labels, cfg.val_fraction, cfg.seed)
    if cfg.train_fraction < 1:
        train = train[stratified_fraction(labels[train], cfg.train_fraction, cfg.seed)]
    return train, val


@torch.no_grad()
def evaluate(model: Backbone, source: PixelSource, rows: np.ndarray, labels: np.ndarray, cfg: TrainConfig,
             device: torch.device, autocast) -> float:
    """Top-1 (%) of the clean view (view 0) of ``rows``."""
    if len(rows) == 0:
        return float("nan")
    model.eval()
    loader = make_loader(source, rows, np.zeros(len(rows), dtype=np.int64), cfg.batch_size * 2,
                         cfg.workers, device.type == "cuda")
    correct = 0
    for pixels, k in loader:
        with autocast():
            z = model(normalize_pixels(pixels, model.mean, model.std, device))
        correct += int((z.argmax(1).cpu() == torch.as_tensor(labels[rows[k.numpy()]])).sum())
    return 100.0 * correct / len(rows)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, 11, epoch]).generate_state(1)[0])


def fit(spec: RunSpec, progress: Optional[Progress] = None, on_epoch: Optional[EpochEnd] = None) -> dict:
    """Train ``spec.model`` with ``spec.objective``; return the run's summary."""
    cfg, cache, run_dir = spec.cfg, spec.cache, Path(spec.run_dir)
    device = resolve_device(cfg.device)
    dist = init_distributed(device.type)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext
    torch.manual_seed(cfg.seed)
    try:
        # ---- data: cached arrays in RAM before any worker starts
        train_rows, val_rows = split_rows(cache, cfg)
        train_labels, test_labels = cache.labels("train"), cache.labels("test")
        vlm_emb = torch.from_numpy(cache.img_emb("train"))  # (N, V, D) float16
        num_views = vlm_emb.shape[1]
        train_src, test_src = PixelSource(cache, "train"), PixelSource(cache, "test")
        test_rows = np.arange(len(test_labels))

        # ---- model, optimiser, schedule
        model, objective = spec.model.to(device), spec.objective.to_device(device)
        step = Step(model, objective)
        if device.type == "cuda":
            step = step.to(memory_format=torch.channels_last)
        trainable = [p for p in step.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
        ddp = (nn.parallel.DistributedDataParallel(step, find_unused_parameters=True)
               if dist.enabled else step)

        # ---- resume or start
        start, best, metrics, resumed = 0, {"val_top1": -1.0, "epoch": -1, "test_top1": None}, [], 0
        if cfg.resume and (run_dir / ckpt.CHECKPOINT).is_file():
            check_same_cache(json.loads((run_dir / "config.json").read_text()), cache, f"run {run_dir}")
            state = ckpt.load(run_dir / ckpt.CHECKPOINT)
            step.load_state_dict(state["step"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start, best = state["epoch"] + 1, state["best"]
            resumed = int(state.get("resumed", 0)) + 1
            metrics = [m for m in ckpt.read_metrics(run_dir) if m["epoch"] < start]
        previous = (ckpt.read_summary(run_dir) or {}) if resumed else {}
        summary = {**previous, "status": "running", "epochs": cfg.epochs, "epochs_done": start,
                   "resumed": resumed, **spec.record.get("summary", {})}
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config({**to_jsonable(cfg), **{k: v for k, v in spec.record.items() if k != "summary"}},
                        run_dir)
            ckpt.write_summary(run_dir, summary)

        # ---- epochs
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            torch.manual_seed(_epoch_seed(cfg.seed, epoch))  # dropout etc. replay on resume
            rows, views = epoch_plan(train_rows, num_views, cfg.seed, epoch, dist.rank, dist.world)
            loader = make_loader(train_src, rows, views, cfg.batch_size, cfg.workers,
                                 device.type == "cuda", drop_last=True)
            ddp.train()
            sums: dict[str, float] = {}
            seen = correct = 0
            total = len(loader) if cfg.max_batches is None else min(len(loader), cfg.max_batches)
            for b, (pixels, k) in enumerate(loader):
                if b == total:
                    break
                k = k.numpy()
                pixels = pixels.to(device, non_blocking=True)
                batch = {
                    "pixels": pixels,
                    "x": normalize_pixels(pixels, model.mean, model.std),
                    "label": torch.as_tensor(train_labels[rows[k]], device=device),
                    "vlm_img": vlm_emb[rows[k], views[k]].to(device).float(),
                }
                if device.type == "cuda":
                    batch["x"] = batch["x"].contiguous(memory_format=torch.channels_last)
                with autocast():
                    loss, logits, terms = ddp(batch, epoch)
                if not torch.isfinite(loss):
                    raise DaitError(f"loss became {loss.item()} at epoch {epoch}, batch {b}; lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                n = len(k)
                seen += n
                correct += int((logits.argmax(1) == batch["label"]).sum())
                for name, value in {"loss": loss.detach(), **terms}.items():
                    sums[name] = sums.get(name, 0.0) + float(value) * n
                if progress:
                    progress(f"epoch {epoch + 1}/{cfg.epochs}", b + 1, total)
            lr = opt.param_groups[0]["lr"]
            sched.step()
            train_time = time.perf_counter() - t0
            val_top1 = evaluate(model, train_src, val_rows, train_labels, cfg, device, autocast)
            test_top1 = evaluate(model, test_src, test_rows, test_labels, cfg, device, autocast)
            row = {"epoch": epoch, **{k: v / max(seen, 1) for k, v in sums.items()},
                   "lambda": objective.lam(epoch), "lr": lr,
                   "train_top1": 100.0 * correct / max(seen, 1), "val_top1": val_top1,
                   "test_top1": test_top1, "seconds": time.perf_counter() - t0,
                   "images_per_s": seen / train_time if train_time > 0 else 0.0}
            metrics.append(row)
            improved = val_top1 > best["val_top1"] or (np.isnan(val_top1) and epoch == cfg.epochs - 1)
            if improved:
                best = {"val_top1": val_top1, "epoch": epoch, "test_top1": test_top1}
            if dist.is_main:
                ckpt.write_metrics(run_dir, metrics)
                if improved:
                    ckpt.save_atomic({"step": step.state_dict(), "epoch": epoch, "val_top1": val_top1},
                                     run_dir / ckpt.BEST)
                ckpt.save_atomic({"step": step.state_dict(), "optimizer": opt.state_dict(),
                                  "scheduler": sched.state_dict(), "epoch": epoch, "best": best,
                                  "resumed": resumed}, run_dir / ckpt.CHECKPOINT)
                summary.update(epochs_done=epoch + 1, test_top1_last=test_top1,
                               val_top1_last=val_top1, test_top1_best_val=best["test_top1"],
                               val_top1_best=best["val_top1"], best_epoch=best["epoch"])
                ckpt.write_summary(run_dir, summary)
            if on_epoch and dist.is_main:
                on_epoch(row)
            barrier(dist)
        summary["status"] = "finished"
        if dist.is_main:
            ckpt.write_summary(run_dir, summary)
        return summary
    except BaseException as exc:
        summary_now = ckpt.read_summary(run_dir) if dist.is_main else None
        if summary_now is not None and summary_now.get("status") == "running":
            summary_now["status"] = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            summary_now["error"] = str(exc)[:500]
            ckpt.write_summary(run_dir, summary_now)
        raise
    finally:
        shutdown(dist)
