"""Atomic checkpoints that load with ``torch.load(weights_only=True)``, and the run files."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import atomic_write_bytes, atomic_write_json

CHECKPOINT, BEST, METRICS, SUMMARY = "checkpoint.pt", "best.pt", "metrics.jsonl", "summary.json"


def save_atomic(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


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
