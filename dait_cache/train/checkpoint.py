"""Atomic checkpoints (``torch.save`` bytes behind a sha256 header; only tensors and containers
load: ``weights_only=True``) and the run files, each with a digest."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from ..config import json_digest
from ..errors import DaitError
from ..io import atomic_write_bytes, atomic_write_json

CHECKPOINT, BEST, METRICS, SUMMARY = "checkpoint.pt", "best.pt", "metrics.jsonl", "summary.json"
METRICS_CSV = "metrics.csv"
# what a metrics row holds besides its loss terms (every other number in a row is a loss term)
ROW_FIELDS = frozenset(
    (
        "epoch",
        "train_top1",
        "val_top1",
        "test_top1",
        "lambda",
        "lr",
        "seconds",
        "eval_seconds",
        "images_per_s",
        "digest",
    )
)


def loss_terms(row: dict) -> list[str]:
    """The loss terms of a metrics row, in the order the objective reported them."""
    return [k for k, v in row.items() if k not in ROW_FIELDS and isinstance(v, (int, float))]


MAGIC = b"DAIT-CHECKPOINT-1\n"  # then the payload's sha256 (64 hex digits and a newline), then torch.save bytes


def save_atomic(obj: Any, path: Path) -> None:
    """Write ``torch.save(obj)`` behind a header holding its sha256: torch's zip format does not
    check tensor data on load, so a flipped byte would otherwise load as different weights."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getbuffer()  # a view: a checkpoint of a large teacher is not copied again
    header = MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"
    atomic_write_bytes(path, [header, payload])


def _refuse(path: Path, why: str) -> DaitError:
    return DaitError(
        f"{path} is not a readable dait-cache checkpoint ({why}); it may be damaged or "
        "unsafe to load: delete the run and train it again"
    )


def _torch_load(source, path: Path) -> Any:
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, a truncated zip, ...: all mean "not a checkpoint of ours"
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise _refuse(path, f"{type(exc).__name__}: {first}") from None


def load(path: Path) -> dict:
    """A checkpoint's tensors. Only plain tensors and containers load (``weights_only``); a file
    that would run code, a damaged one (sha256 of its payload) or a foreign one is refused with
    one line naming it. Checkpoints written before the sha256 header (plain ``torch.save``) still load."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DaitError(f"{path} not found; the run has no such checkpoint") from None
    if data.startswith(MAGIC):
        head = len(MAGIC) + 65
        if hashlib.sha256(data[head:]).hexdigest().encode() != data[len(MAGIC) : head - 1]:
            raise _refuse(path, "its content does not match its sha256")
        data = data[head:]
    state = _torch_load(io.BytesIO(data), path)
    if not isinstance(state, dict) or "step" not in state:
        raise DaitError(f"{path} is not a dait-cache checkpoint (no 'step' state); train the run again")
    return state


def load_into(module: torch.nn.Module, state: dict, path: Path, what: str) -> None:
    """``module.load_state_dict(state)``, refusing a checkpoint of another architecture in one line."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise DaitError(
            f"{path} does not fit {what} ({first}); it was trained with another "
            "--arch or --method: use that run's settings or another run"
        ) from None


def _sealed(row: dict) -> dict:
    """``row`` with a digest of its content, so an edited or damaged number is noticed on reading."""
    row = {k: v for k, v in row.items() if k != "digest"}
    return {**row, "digest": json_digest(row)}


def _unsealed(row: Any, where: str) -> dict:
    if not isinstance(row, dict):
        raise DaitError(f"{where} is damaged (not a JSON object)")
    body = {k: v for k, v in row.items() if k != "digest"}
    if "digest" in row and row["digest"] != json_digest(body):
        raise DaitError(f"{where} is damaged (its content does not match its digest)")
    return body


def read_metrics(run_dir: Path) -> list[dict]:
    """The run's metric rows; a damaged line is one error naming it (``--resume`` rewrites the
    file from the checkpoint)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if line.strip():
            where = f"{path} line {n}"
            try:
                rows.append(_unsealed(json.loads(line.decode("utf-8")), where))
            except (ValueError, UnicodeDecodeError):
                raise DaitError(
                    f"{where} is damaged (not JSON); continue the run with --resume to rewrite it from the checkpoint"
                ) from None
    return rows


def write_metrics(run_dir: Path, rows: list[dict], csv_too: bool = False) -> None:
    """metrics.jsonl (each row sealed with its digest) and, with ``csv_too``, metrics.csv for
    spreadsheets and plotting tools (the same numbers; a resumed run rewrites both)."""
    atomic_write_bytes(Path(run_dir) / METRICS, "".join(json.dumps(_sealed(r)) + "\n" for r in rows).encode())
    if csv_too:
        atomic_write_bytes(Path(run_dir) / METRICS_CSV, metrics_csv(rows).encode())


def metrics_csv(rows: list[dict]) -> str:
    """Metric rows as CSV, columns in first-seen order, missing values empty."""
    columns = list(dict.fromkeys(k for r in rows for k in r))  # first-seen order: epoch, loss terms, ...
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")  # None and missing keys write as ""
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def read_summary(run_dir: Path) -> dict | None:
    """The run's summary; a damaged one reads as ``{"status": "damaged", "error": ...}`` so that a
    report shows it as such instead of a wrong number, and nothing treats the run as finished."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        return None
    try:
        return _unsealed(json.loads(path.read_bytes().decode("utf-8")), str(path))
    except (ValueError, UnicodeDecodeError, DaitError) as exc:
        return {"status": "damaged", "error": str(exc) if isinstance(exc, DaitError) else f"{path} is not JSON"}


def write_summary(run_dir: Path, summary: dict) -> None:
    atomic_write_json(Path(run_dir) / SUMMARY, _sealed(summary))


def save_epoch(
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
    write_metrics(run_dir, metrics, csv_too=csv_log)
    if improved:
        save_atomic({"step": step.state_dict(), "epoch": epoch, "val_top1": best["val_top1"]}, run_dir / BEST)
    if checkpoint:
        save_atomic(
            {
                "step": step.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch,
                "best": best,
                "resumed": resumed,
                "metrics": metrics,
            },
            run_dir / CHECKPOINT,
        )
    summary.update(summary_numbers(metrics, best))
    write_summary(run_dir, summary)


def save_part(run_dir: Path, step, opt, sched, epoch: int, best: dict, resumed: int, metrics: list, done: dict) -> None:
    """checkpoint.pt part-way through ``epoch``: the epochs before it, and where this one stands."""
    save_atomic(
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
        run_dir / CHECKPOINT,
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
