"""Run directories: naming, the refusal to clobber, and finding finished teachers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import DaitError
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
