"""CUB-200-2011 and NABirds: both ship images.txt / image_class_labels.txt / train_test_split.txt."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import DatasetError
from .base import ImageDataset, check_images_exist, read_table, require_paths, underscores_to_spaces
from .download import Archive, Download

LISTS = ["images", "images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"]
# CaltechDATA's copy of the official archive; its md5 is the one the dataset's users have checked since 2011
CUB_DOWNLOAD = Download(
    "cub",
    (
        Archive(
            "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
            md5="97eceeb196236b17998738112f37df78",
        ),
    ),
    "CUB_200_2011",
    inner="CUB_200_2011",
    approx_gb=1.2,
)


def _read_lists(name: str, folder: Path, split: str) -> tuple[list[tuple[str, str]], dict]:
    """Return ``[(image path, raw class id)]`` of the split, and ``{raw class id: raw name}``."""
    paths = dict(read_table(folder / "images.txt", 2))
    labels = dict(read_table(folder / "image_class_labels.txt", 2))
    is_train = dict(read_table(folder / "train_test_split.txt", 2))
    classes = dict(read_table(folder / "classes.txt", 2))
    for image_id, cid in labels.items():  # of both splits: NABirds' leaves come from all labels
        if cid not in classes:
            raise DatasetError(
                f"{name}: image id {image_id} has class id {cid}, which classes.txt does not list; the "
                "annotation files do not match, re-extract the official archive (see data/README.md)"
            )
    for image_id, flag in is_train.items():  # anything else would leave the image out of both splits
        if flag not in ("0", "1"):
            raise DatasetError(
                f"{name}: train_test_split.txt gives image id {image_id} the value {flag!r}, not 1 "
                "(train) or 0 (test); the file looks damaged, re-extract the official archive (see data/README.md)"
            )
    want = "1" if split == "train" else "0"
    out = []
    for image_id, rel in paths.items():
        if image_id not in labels or image_id not in is_train:
            raise DatasetError(
                f"{name}: image id {image_id} has no label or split entry; the annotation "
                "files do not match, re-extract the official archive (see data/README.md)"
            )
        if is_train[image_id] == want:
            out.append((str(folder / "images" / rel), labels[image_id]))
    return out, classes


def _numeric_order(name: str, ids, listed_in: str) -> list[str]:
    """Class ids in their numeric order; an id that is no number is one line naming its file."""
    ids = list(ids)
    odd = next((cid for cid in ids if not cid.isdigit()), None)
    if odd is not None:
        raise DatasetError(
            f"{name}: {listed_in} lists class id {odd!r}, which is no number; the file looks damaged, "
            "re-extract the official archive (see data/README.md)"
        )
    return sorted(ids, key=int)


def load_cub(data_root: Path, split: str) -> ImageDataset:
    """CUB-200-2011 from its official lists (``images.txt``, ``train_test_split.txt``, ...)."""
    folder = data_root / "CUB_200_2011"
    require_paths("cub", folder, LISTS, data_root, CUB_DOWNLOAD.hint)
    rows, classes = _read_lists("cub", folder, split)
    ids = _numeric_order("cub", classes, "classes.txt")  # ids are 1..200, labels are 1-based
    names = [underscores_to_spaces(re.sub(r"^\d+\.", "", classes[i])) for i in ids]
    index = {cid: k for k, cid in enumerate(ids)}
    samples = [(path, index[cid]) for path, cid in rows]
    check_images_exist("cub", samples, folder / "images")
    return ImageDataset("cub", split, names, samples, root=str(folder))


def load_nabirds(data_root: Path, split: str) -> ImageDataset:
    """NABirds' leaf classes from its official lists (same layout as CUB plus ``hierarchy.txt``)."""
    folder = data_root / "nabirds"
    require_paths("nabirds", folder, LISTS + ["hierarchy.txt"], data_root)
    rows, classes = _read_lists("nabirds", folder, split)
    # classes.txt lists the whole taxonomy; only the leaves appear as labels. Both splits must
    # agree on the mapping, so it comes from all labelled images, not from this split alone.
    labelled = {cid for _, cid in read_table(folder / "image_class_labels.txt", 2)}
    leaves = _numeric_order("nabirds", labelled, "image_class_labels.txt")
    index = {cid: k for k, cid in enumerate(leaves)}
    names = [classes[cid] for cid in leaves]
    samples = [(path, index[cid]) for path, cid in rows]
    check_images_exist("nabirds", samples, folder / "images")
    return ImageDataset("nabirds", split, names, samples, root=str(folder))
