"""Run directories: naming, the refusal to clobber, and finding finished teachers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..cache.manifest import field_differences
from ..cache.reader import Cache
from ..config import TrainConfig
from ..models import Backbone, create_backbone
from ..errors import CacheError, DaitError
from . import checkpoint as ckpt


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """A fresh run must not overwrite an earlier one; ``--resume`` needs a checkpoint."""
    has_ckpt = (run_dir / ckpt.CHECKPOINT).is_file()
    if resume and not has_ckpt:
        raise DaitError(f"nothing to resume in {run_dir} (no {ckpt.CHECKPOINT}); drop --resume")
    if not resume and has_ckpt:
        raise DaitError(f"run {run_dir} already exists; pass --resume to continue it or --name "
                        "to start another")


def fraction_tag(train_fraction: float) -> str:
    return "" if train_fraction >= 1 else f"-frac{train_fraction:g}"


def finished_runs(parent: Path) -> list[Path]:
    """Run folders under ``parent`` whose summary says finished, newest first."""
    if not parent.is_dir():
        return []
    runs = [d for d in parent.iterdir() if (ckpt.read_summary(d) or {}).get("status") == "finished"
            and (d / ckpt.BEST).is_file()]
    return sorted(runs, key=lambda d: (d / ckpt.SUMMARY).stat().st_mtime_ns, reverse=True)


def newest_teacher(dataset_dir: Path, name: Optional[str]) -> Path:
    """The teacher run named ``name`` (a folder name or a path), else the newest finished one."""
    parent = dataset_dir / "teacher"
    if name:
        path = Path(name) if Path(name).is_dir() else parent / name
        if not (path / ckpt.BEST).is_file():
            have = ", ".join(d.name for d in finished_runs(parent)) or "none"
            raise DaitError(f"teacher run {name!r} not found or unfinished (finished teachers: {have})")
        return path
    runs = finished_runs(parent)
    if not runs:
        raise DaitError(f"no finished teacher under {parent}; run `dait-cache train-teacher` first "
                        "or name one with --teacher")
    return runs[0]


def run_record(cfg: TrainConfig, cache: Cache, dataset: str, **extra) -> dict:
    """What config.json and summary.json carry beside the config: the cache it read, and more."""
    common = {"dataset_dir": dataset, "cache_fingerprint": cache.fingerprint}
    return {**common, "cache_fingerprint_fields": cache.manifest["fingerprint_fields"],
            "lambda_rate_resolved": cfg.resolved_lambda_rate, **extra,
            "summary": {"dataset": dataset, "role": cfg.role, "arch": cfg.arch, "method": cfg.method,
                        "train_fraction": cfg.train_fraction, "cache_fingerprint": cache.fingerprint,
                        **{k: v for k, v in extra.items() if k == "teacher_run"}}}


def check_same_cache(run_config: dict, cache: Cache, what: str) -> None:
    """Refuse ``cache`` when the run described by ``run_config`` was trained on another one."""
    if run_config.get("cache_fingerprint") == cache.fingerprint:
        return
    diffs = field_differences(run_config.get("cache_fingerprint_fields", {}),
                              cache.manifest["fingerprint_fields"])
    raise CacheError(f"{what} was trained on cache {run_config.get('cache_fingerprint')}, not on "
                     f"{cache.dir} ({cache.fingerprint}): {'; '.join(diffs[:4]) or 'unknown fields'}; "
                     "re-encode with the run's settings or start a new run")


def load_run_backbone(run_dir: Path, num_classes: int, head: bool = True) -> Backbone:
    """A run's backbone with its best weights. ``head=False`` loads the network only, which is
    all pooled features need and works whatever head the method used (rise replaces it)."""
    config = json.loads((Path(run_dir) / "config.json").read_text())
    model = create_backbone(config["arch"], num_classes, pretrained=False)
    state = ckpt.load(Path(run_dir) / ckpt.BEST)["step"]
    # Checkpoints of earlier versions also held the classifier inside the net: drop that copy.
    stale = f"model.net.{model.classifier_name}."
    state = {k: v for k, v in state.items() if not k.startswith(stale)}
    prefix = "model." if head else "model.net."
    target = model if head else model.net
    target.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return model.eval()
