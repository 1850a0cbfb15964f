"""Datasets: ``load_dataset(name, root, split)`` over the official on-disk layouts.

Registry: plain dict name -> loader. ``folder:<path>`` loads a user's own tree.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..config import prefixed_path
from ..errors import DatasetError
from . import aircraft, birds, matlab
from .base import ImageDataset, check_split
from .folder import load_folder
from .splits import official_fraction, train_val_split
from .synthetic import load_synthetic

DEFAULT_ROOT = "./data"

# name -> loader(data_root, split, download) ; explicit entries, no import magic.
DATASETS: dict[str, Callable[[Path, str, bool], ImageDataset]] = {
    "aircraft": lambda root, split, dl: aircraft.load(root, split, download_missing=dl),
    "cub": lambda root, split, dl: birds.load_cub(root, split),
    "dogs": lambda root, split, dl: matlab.load_dogs(root, split),
    "cars": lambda root, split, dl: matlab.load_cars(root, split, download_missing=dl),
    "nabirds": lambda root, split, dl: birds.load_nabirds(root, split),
    "synthetic": lambda root, split, dl: load_synthetic(split),
}
DOWNLOADABLE = ("aircraft",)


def dataset_names() -> list[str]:
    return list(DATASETS) + ["folder:<path>"]


def default_data_root() -> Path:
    return Path(os.environ.get("DAIT_DATA", DEFAULT_ROOT))


def load_dataset(
    name: str, root: str | os.PathLike | None = None, split: str = "train", *, download: bool = False
) -> ImageDataset:
    """Load the official ``split`` ("train" or "test") of dataset ``name`` under ``root``.

    ``aircraft``'s "train" is the official trainval split. A missing or incomplete dataset raises
    :class:`DatasetError` naming the expected path and files.
    """
    check_split(split)
    data_root = Path(root) if root is not None else default_data_root()
    if name.startswith("folder:"):
        return load_folder(prefixed_path(name, "folder"), split)
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(dataset_names())}")
    if download and name not in DOWNLOADABLE and name not in ("cars", "synthetic"):
        raise DatasetError(f"{name} has no automatic download; see data/README.md")
    return DATASETS[name](data_root, split, download)


__all__ = [
    "DATASETS",
    "ImageDataset",
    "load_dataset",
    "dataset_names",
    "default_data_root",
    "official_fraction",
    "train_val_split",
]
