"""``--log tensorboard``: every epoch's metrics row as TensorBoard scalars under
``<run>/tensorboard/`` (TensorBoard is an extra: ``pip install 'dait-cache[tensorboard]'``)."""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import DaitError
from . import checkpoint as ckpt

LOG_DIR = "tensorboard"
# metrics row key -> scalar tag; the row's loss terms (checkpoint.loss_terms) go under "loss/<name>"
TAGS = {
    "train_top1": "top1/train",
    "val_top1": "top1/val",
    "test_top1": "top1/test",
    "lr": "schedule/lr",
    "lambda": "schedule/lambda",
    "seconds": "time/epoch_seconds",
    "eval_seconds": "time/eval_seconds",
    "images_per_s": "time/images_per_s",
}


def check_available() -> None:
    """One line, before any work, when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise DaitError(
            "--log tensorboard needs the tensorboard package: pip install 'dait-cache[tensorboard]' (or use --log csv)"
        ) from None


def scalars(row: dict) -> dict[str, float]:
    """The row's numbers under their tags (absent and NaN values left out: no validation split)."""
    losses, out = set(ckpt.loss_terms(row)), {}
    for key, value in row.items():
        tag = f"loss/{key}" if key in losses else TAGS.get(key)
        if tag is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        out[tag] = float(value)
    return out


class TensorBoardLog:
    """Appends each metrics row as it is recorded; a resumed run drops the events a crash left
    after its checkpoint (``purge_step``), so every epoch appears once."""

    def __init__(self, run_dir: Path, first_epoch: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / LOG_DIR), purge_step=first_epoch)

    def add(self, row: dict) -> None:
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
