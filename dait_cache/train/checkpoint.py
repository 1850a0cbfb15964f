"""Atomic checkpoints that load with ``torch.load(weights_only=True)``, and the run files."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import atomic_write_bytes, atomic_write_json
from ..errors import DaitError

CHECKPOINT, BEST, METRICS, SUMMARY = "checkpoint.pt", "best.pt", "metrics.jsonl", "summary.json"


def save_atomic(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load(path: Path) -> dict:
    """A checkpoint's tensors. Only plain tensors and containers load (``weights_only``): a file
    that would run code, or a damaged one, is refused with one line naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DaitError(f"{path} not found; the run has no such checkpoint") from None
    except Exception as exc:  # UnpicklingError, a truncated zip, ...: all mean "not a checkpoint of ours"
        raise DaitError(f"{path} is not a readable dait-cache checkpoint ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); it may be damaged or "
                        "unsafe to load: delete the run and train it again") from None
    if not isinstance(state, dict) or "step" not in state:
        raise DaitError(f"{path} is not a dait-cache checkpoint (no 'step' state); train the run again")
    return state


def load_into(module: torch.nn.Module, state: dict, path: Path, what: str) -> None:
    """``module.load_state_dict(state)``, refusing a checkpoint of another architecture in one line."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise DaitError(f"{path} does not fit {what} ({first}); it was trained with another "
                        "--arch or --method: use that run's settings or another run") from None


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    atomic_write_bytes(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows).encode())


def read_summary(run_dir: Path) -> Optional[dict]:
    path = Path(run_dir) / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


def write_summary(run_dir: Path, summary: dict) -> None:
    atomic_write_json(Path(run_dir) / SUMMARY, summary)
