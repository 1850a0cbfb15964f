"""FGVC-Aircraft 2013b, variant level (100 classes), in torchvision's ``FGVCAircraft`` layout."""

from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from .base import ImageDataset, check_images_exist, read_table, require_paths, text_lines
from .download import Archive, Download

FOLDER = "fgvc-aircraft-2013b"
URL = "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz"
# no size or digest is published for it; the loader checks what it unpacked
DOWNLOAD = Download("aircraft", (Archive(URL),), FOLDER, inner=FOLDER, approx_gb=2.6)
# The official split names: our "train" is the paper's trainval (6,667 images).
SPLIT_FILES = {"train": "images_variant_trainval.txt", "test": "images_variant_test.txt"}
BANNER_PX = 20


def load(data_root: Path, split: str, *, crop_banner: bool = False) -> ImageDataset:
    """FGVC-Aircraft (variant level, 100 classes) from its official ``data/`` layout."""
    folder = data_root / FOLDER
    needed = ["data/images", "data/variants.txt", f"data/{SPLIT_FILES[split]}"]
    require_paths("aircraft", folder, needed, data_root, DOWNLOAD.hint)
    data = folder / "data"
    classes = [line for _, line in text_lines(data / "variants.txt")]
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
