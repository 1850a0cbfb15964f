"""The dataset object every parser returns, and the checks they share."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from ..errors import BadImageError, DatasetError

SPLITS = ("train", "test")
README_HINT = "see data/README.md for where to get it and how to lay it out"


@dataclass
class ImageDataset:
    """A labelled image list: ``samples[i] = (path, label)``, labels index ``class_names``.

    ``crop_bottom`` removes that many pixel rows from the bottom of every image after decoding
    (FGVC-Aircraft's copyright banner); ``exif_orientation`` then turns each image upright by its
    EXIF orientation tag, as image viewers show it.
    """

    name: str
    split: str
    class_names: list[str]
    samples: list[tuple[str, int]]
    root: str = ""
    crop_bottom: int = 0
    exif_orientation: bool = False
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]

    def load_image(self, i: int) -> Image.Image:
        """Decode sample ``i`` as an RGB PIL image; a corrupt file raises :class:`BadImageError`."""
        return decode_image(self.samples[i][0], self.crop_bottom, self.exif_orientation)


WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit greyscale PNG / TIFF open as these


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB with 8 bits per channel. PIL's own conversion of 16-bit greyscale clips every value
    above 255 to white (a 16-bit PNG became a white image): scale it down instead. A float image
    has no range to scale from (PIL made it black): refused."""
    if im.mode == "F":
        raise ValueError("32-bit floating-point pixels, whose range cannot be told; save it as an 8- or 16-bit image")
    if im.mode in WIDE_GREY and im.getextrema()[1] > 255:
        grey = np.clip(np.rint(np.asarray(im, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return im.convert("RGB")


# EXIF orientation tag value -> the transpose that shows the stored pixels upright
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def exif_orientation_of(im: Image.Image) -> int:
    """The EXIF orientation tag of an opened image (1, as stored, when absent or unreadable:
    a damaged EXIF block must not make a decodable photo unusable)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns "Corrupt EXIF data" on each such photo
            value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - Pillow's EXIF parser raises many types on damaged blocks
        return 1
    return value if value in _UPRIGHT else 1


def decode_image(path: str | Path, crop_bottom: int = 0, exif_orientation: bool = False) -> Image.Image:
    """Decode an image file as RGB, less ``crop_bottom`` pixel rows at the bottom (of the stored
    pixels, where FGVC-Aircraft's banner is), then, with ``exif_orientation``, turned upright by
    its EXIF tag; a corrupt or unsafe file raises :class:`BadImageError`. Encoding, training and
    ``predict`` all decode here."""
    path = str(path)
    try:
        with Image.open(path) as im:
            im.load()
            img = _to_rgb(im)
            turn = _UPRIGHT.get(exif_orientation_of(im)) if exif_orientation else None
    except Image.DecompressionBombError as exc:  # pixel count past PIL's guard: refuse, never decode
        raise BadImageError(path, f"too many pixels to decode safely ({exc})") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise BadImageError(path, str(exc) or type(exc).__name__) from None
    if crop_bottom and img.height > crop_bottom:
        img = img.crop((0, 0, img.width, img.height - crop_bottom))
    return img if turn is None else img.transpose(turn)


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    return split


def require_paths(
    dataset: str, folder: Path, relpaths: Iterable[str], data_root: Path, hint: str = README_HINT
) -> None:
    """Raise one error listing every missing file or folder of a dataset layout, ending with ``hint``."""
    if not folder.is_dir():
        raise DatasetError(f"{dataset}: folder {folder} not found (expected under --data-root {data_root}); {hint}")
    missing = [p for p in relpaths if not (folder / p).exists()]
    if missing:
        raise DatasetError(f"{dataset}: {folder} is incomplete, missing {', '.join(missing)}; {hint}")


def text_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped line) of each non-blank line of a UTF-8 annotation file (any of
    ``\n``, ``\r\n``, ``\r`` ends a line); one line naming where it is not text."""

    def split(text: str) -> list[str]:
        return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")

    data = Path(path).read_bytes()
    try:
        lines = split(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        lineno = len(split(data[: exc.start].decode("utf-8")))  # the text before it is whole lines and a start
        raise DatasetError(
            f"{path}:{lineno}: not UTF-8 text; the file looks damaged, re-extract the official archive ({README_HINT})"
        ) from None
    return [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]


def read_table(path: Path, ncols: int) -> list[list[str]]:
    """Whitespace-separated annotation file; the last column keeps its inner spaces."""
    rows = []
    for lineno, line in text_lines(path):
        parts = line.split(maxsplit=ncols - 1)
        if len(parts) != ncols:
            raise DatasetError(
                f"{path}:{lineno}: expected {ncols} columns, got {line!r}; "
                f"the file looks damaged, re-extract the official archive ({README_HINT})"
            )
        rows.append(parts)
    return rows


def check_images_exist(dataset: str, samples: Sequence[tuple[str, int]], folder: Path) -> None:
    """Fail early (not after hours of encoding) when listed image files are absent."""
    missing = [p for p, _ in samples if not Path(p).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DatasetError(
            f"{dataset}: {len(missing)} listed images are missing under {folder} "
            f"(first: {missing[0]}{more}); re-extract the official archive ({README_HINT})"
        )


def underscores_to_spaces(name: str) -> str:
    return name.replace("_", " ").strip()
