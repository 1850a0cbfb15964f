"""FGVC-Aircraft 2013b, variant level (100 classes), in torchvision's ``FGVCAircraft`` layout."""

from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from .base import README_HINT, ImageDataset, check_images_exist, read_table, require_paths

FOLDER = "fgvc-aircraft-2013b"
URL = "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz"
# The official split names: our "train" is the paper's trainval (6,667 images).
SPLIT_FILES = {"train": "images_variant_trainval.txt", "test": "images_variant_test.txt"}
BANNER_PX = 20


def download(data_root: Path) -> None:
    """Fetch and unpack the official archive (about 2.6 GB) with torchvision's downloader."""
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(URL, str(data_root))
    except Exception as exc:  # urllib raises several unrelated types for "offline"
        raise DatasetError(
            f"aircraft: download of {URL} failed ({type(exc).__name__}: {exc}); "
            f"check your network, or fetch the archive by hand and unpack it into {data_root} "
            "(see data/README.md)"
        ) from None


def load(data_root: Path, split: str, *, download_missing: bool = False, crop_banner: bool = False) -> ImageDataset:
    """FGVC-Aircraft (variant level, 100 classes) from its official ``data/`` layout."""
    folder = data_root / FOLDER
    if download_missing and not (folder / "data" / SPLIT_FILES[split]).exists():
        download(data_root)
    needed = ["data/images", "data/variants.txt", f"data/{SPLIT_FILES[split]}"]
    require_paths(
        "aircraft", folder, needed, data_root, f"pass --download to fetch it (about 2.6 GB), or {README_HINT}"
    )
    data = folder / "data"
    with open(data / "variants.txt", encoding="utf-8") as f:
        classes = [line.strip() for line in f if line.strip()]
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for image_id, variant in read_table(data / SPLIT_FILES[split], 2):
        if variant not in index:
            raise DatasetError(
                f"aircraft: {SPLIT_FILES[split]} names variant {variant!r} that is not in "
                "variants.txt; re-extract the official archive (see data/README.md)"
            )
        samples.append((str(data / "images" / f"{image_id}.jpg"), index[variant]))
    check_images_exist("aircraft", samples, data / "images")
    return ImageDataset(
        "aircraft", split, classes, samples, root=str(folder), crop_bottom=BANNER_PX if crop_banner else 0
    )
