"""A user's own data: ``<path>/{train,test}/<class>/**/*.jpg``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import DatasetError
from .base import ImageDataset, underscores_to_spaces

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def load_folder(path: Path, split: str) -> ImageDataset:
    """A ``train/<class>/`` + ``test/<class>/`` folder of images; classes from the train folder."""
    split_dir = path / split
    if not split_dir.is_dir():
        raise DatasetError(
            f"folder dataset: {split_dir} not found; lay it out as {path}/train/<class>/*.jpg "
            f"and {path}/test/<class>/*.jpg (see data/README.md)"
        )
    # Class order comes from the train folder so that both splits share one label space.
    train_dir = path / "train"
    classes = _class_folders(train_dir) if train_dir.is_dir() else []
    if not classes:
        raise DatasetError(f"folder dataset: {train_dir} holds no class folders")
    _check_utf8(train_dir, classes)
    _check_distinct_classes(train_dir, classes)
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for name in _class_folders(split_dir):
        cdir = split_dir / name
        if name not in index:
            raise DatasetError(
                f"folder dataset: class {name!r} in {split_dir} is not in "
                f"{train_dir}; both splits must use the same class folders"
            )
        files = image_files(cdir)
        if split == "train" and not files:  # a class the classifier could never learn
            raise DatasetError(
                f"folder dataset: class folder {cdir} holds no images ({', '.join(sorted(EXTENSIONS))}); "
                "add its images or remove the folder"
            )
        _check_utf8(cdir, [str(f.relative_to(cdir)) for f in files])
        samples += [(str(f), index[name]) for f in files]
    if not samples:
        raise DatasetError(f"folder dataset: no images under {split_dir}")
    return ImageDataset(
        f"folder:{path.name}", split, [underscores_to_spaces(c) for c in classes], samples, root=str(path)
    )


def _hidden(name: str) -> bool:
    """Dot-names are the system's, not the user's: .ipynb_checkpoints, macOS's ._photo.jpg."""
    return name.startswith(".")


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not _hidden(p.name))


def image_files(top: Path, suffixes: Iterable[str] = EXTENSIONS) -> list[Path]:
    """Every image under ``top``, in subfolders too (as torchvision's ImageFolder finds them),
    hidden ones left out; sorted, so the order is the same on every file system."""
    suffixes, found = set(suffixes), []
    for folder, subfolders, files in os.walk(top):
        subfolders[:] = [d for d in subfolders if not _hidden(d)]
        found += [Path(folder) / f for f in files if not _hidden(f) and Path(f).suffix.lower() in suffixes]
    return sorted(found)


def _check_utf8(folder: Path, names: list[str]) -> None:
    """Names must be text: they go into hashes, HDF5 and prompts."""
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # bytes the file system could not decode (surrogate escapes)
            raise DatasetError(
                f"folder dataset: {folder / name.encode('utf-8', 'replace').decode()!s} "
                "has a name that is not valid UTF-8; rename it"
            ) from None


def _check_distinct_classes(train_dir: Path, classes: list[str]) -> None:
    """Two class folders must not become one class name (``cat_a`` and ``cat a`` both read "cat a")."""
    seen: dict[str, str] = {}
    for name in classes:
        shown = underscores_to_spaces(name)
        if shown in seen:
            raise DatasetError(
                f"folder dataset: class folders {seen[shown]!r} and {name!r} in {train_dir} "
                f"both become class {shown!r}; rename one of them"
            )
        seen[shown] = name
