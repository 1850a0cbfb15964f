"""Datasets: ``load_dataset(name, root, split)`` over the official on-disk layouts.

Registry: plain dict name -> loader. ``folder:<path>`` loads a user's own tree.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from ..config import prefixed_path
from ..errors import DatasetError
from ..progress import Progress
from . import aircraft, birds, matlab
from .base import ImageDataset, check_split
from .download import Download, fetch
from .folder import load_folder
from .splits import official_fraction, train_val_split
from .synthetic import load_synthetic

DEFAULT_ROOT = "./data"

# name -> loader(data_root, split); explicit entries, no import magic.
DATASETS: dict[str, Callable[[Path, str], ImageDataset]] = {
    "aircraft": aircraft.load,
    "cub": birds.load_cub,
    "dogs": matlab.load_dogs,
    "cars": matlab.load_cars,
    "nabirds": birds.load_nabirds,
    "synthetic": lambda root, split: load_synthetic(split),
}
# what --download fetches (the official archives); the others need a registration or are gone
DOWNLOADS: dict[str, Download] = {
    "aircraft": aircraft.DOWNLOAD,
    "cub": birds.CUB_DOWNLOAD,
    "dogs": matlab.DOGS_DOWNLOAD,
}


def dataset_names() -> list[str]:
    return list(DATASETS) + ["folder:<path>"]


def default_data_root() -> Path:
    return Path(os.environ.get("DAIT_DATA", DEFAULT_ROOT))


def _root(root: str | os.PathLike | None) -> Path:
    return Path(root) if root is not None else default_data_root()


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    split: str = "train",
    *,
    download: bool = False,
    progress: Progress | None = None,
) -> ImageDataset:
    """Load the official ``split`` ("train" or "test") of dataset ``name`` under ``root``.

    ``aircraft``'s "train" is the official trainval split. A missing or incomplete dataset raises
    :class:`DatasetError` naming the expected path and files. ``download``: fetch the official
    archives first when the dataset's folder is absent (aircraft, cub, dogs; ``progress`` hears
    the megabytes).
    """
    check_split(split)
    data_root = _root(root)
    if name.startswith("folder:"):
        return load_folder(prefixed_path(name, "folder"), split)
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(dataset_names())}")
    if download and name == "cars":
        raise DatasetError(matlab.CARS_GONE.format(folder=data_root / "stanford_cars"))
    if download and name not in DOWNLOADS and name != "synthetic":
        raise DatasetError(f"{name} has no automatic download; see data/README.md")
    spec = DOWNLOADS.get(name) if download else None
    if spec is not None and not (data_root / spec.folder).exists():
        fetch(spec, data_root, progress)
        return DATASETS[name](data_root, split)
    try:
        return DATASETS[name](data_root, split)
    except DatasetError as exc:
        if spec is None:
            raise
        raise DatasetError(
            f"{exc}; --download does not write over an existing folder: move {data_root / spec.folder} "
            "away to fetch it again"
        ) from None


def wait_for_download(name: str, root: str | os.PathLike | None = None, poll_s: float = 2.0) -> None:
    """Return once the folder another process is downloading for ``name`` is in place (at once for
    a dataset without a download, or one already in place)."""
    spec = DOWNLOADS.get(name)
    folder = _root(root) / spec.folder if spec else None
    while folder is not None and not folder.exists():
        time.sleep(poll_s)


__all__ = [
    "DATASETS",
    "ImageDataset",
    "load_dataset",
    "dataset_names",
    "default_data_root",
    "official_fraction",
    "train_val_split",
]
