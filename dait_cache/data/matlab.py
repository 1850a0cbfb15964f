"""Stanford Dogs and Stanford Cars: splits and labels come in MATLAB .mat files (scipy)."""

from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from .base import ImageDataset, check_images_exist, require_paths, underscores_to_spaces
from .download import Archive, Download

CARS_GONE = (
    "cars: the official Stanford Cars download (and torchvision's) is gone upstream; "
    "get the archive from a mirror (see data/README.md) and unpack it into {folder}"
)


# the official archives; sizes and sha256 as TensorFlow Datasets records them for the same URLs
DOGS_URL = "http://vision.stanford.edu/aditya86/ImageNetDogs/"
DOGS_DOWNLOAD = Download(
    "dogs",
    (
        Archive(
            DOGS_URL + "images.tar",
            size=793_579_520,
            sha256="a443fc2f9a851aa1a7b8e4fa4af94b8459fce2c9f5a2f4dd4669cf9673a4ec58",
        ),
        Archive(
            DOGS_URL + "lists.tar",
            size=481_280,
            sha256="34b47cacd9a98b5d150e084f24d29391c084c55272295ec65c85651bc35f4d6c",
        ),
    ),
    "stanford_dogs",
    approx_gb=0.8,
)


def _loadmat(path: Path, **kw) -> dict:
    from scipy.io import loadmat

    try:
        return loadmat(str(path), **kw)
    except Exception as exc:  # scipy raises ValueError/TypeError/MatReadError on damage
        raise DatasetError(
            f"cannot read {path} ({exc}); re-extract it from the official archive (see data/README.md)"
        ) from None


def _key(mat: dict, key: str, path: Path):
    if key not in mat:
        raise DatasetError(f"{path} has no {key!r} entry; it is not the official file (see data/README.md)")
    return mat[key]


def load_dogs(data_root: Path, split: str) -> ImageDataset:
    """Stanford Dogs from its ``Images/`` folder and ``{train,test}_list.mat``."""
    folder = data_root / "stanford_dogs"
    listfile = f"{split}_list.mat"
    require_paths("dogs", folder, ["Images", listfile], data_root, DOGS_DOWNLOAD.hint)
    mat = _loadmat(folder / listfile)
    try:  # the official lists: a column of 1x1 cells holding a path, a column of 1-based numbers
        files = [str(entry[0][0]) for entry in _key(mat, "file_list", folder / listfile)]
        labels = [int(x) - 1 for x in _key(mat, "labels", folder / listfile).ravel()]
    except (IndexError, TypeError, ValueError):
        raise DatasetError(
            f"dogs: {listfile} holds file_list and labels, but not as the official lists do (a path "
            "per image, a class number per image); re-extract lists.tar (see data/README.md)"
        ) from None
    if len(files) != len(labels):
        raise DatasetError(f"{folder / listfile}: file_list and labels differ in length")
    # The 1-based labels follow the sorted breed folders; the folder of each listed file tells
    # which breed a label is, and must agree with that order.
    breeds = sorted(p.name for p in (folder / "Images").iterdir() if p.is_dir())
    for rel, label in zip(files, labels):
        wnid_breed = rel.split("/")[0]
        if label >= len(breeds) or breeds[label] != wnid_breed:
            raise DatasetError(
                f"dogs: {listfile} gives {rel} label {label + 1}, which is not its folder's "
                f"position among Images/ folders; re-extract images.tar and lists.tar "
                "(see data/README.md)"
            )
    names = [underscores_to_spaces(b.split("-", 1)[1] if "-" in b else b) for b in breeds]
    samples = [(str(folder / "Images" / rel), label) for rel, label in zip(files, labels)]
    check_images_exist("dogs", samples, folder / "Images")
    return ImageDataset("dogs", split, names, samples, root=str(folder))


def load_cars(data_root: Path, split: str) -> ImageDataset:
    """Stanford Cars from its devkit ``.mat`` annotations (test labels from ``cars_test_annos_withlabels.mat``)."""
    folder = data_root / "stanford_cars"
    if split == "train":
        annos, images = "devkit/cars_train_annos.mat", "cars_train"
    else:
        annos, images = "cars_test_annos_withlabels.mat", "cars_test"
    needed = ["devkit/cars_meta.mat", annos, images]
    require_paths("cars", folder, needed, data_root)
    meta = _loadmat(folder / "devkit/cars_meta.mat", squeeze_me=True)
    names = [str(n) for n in _key(meta, "class_names", folder / "devkit/cars_meta.mat").tolist()]
    rows = _key(_loadmat(folder / annos, squeeze_me=True), "annotations", folder / annos)
    fields = getattr(getattr(rows, "dtype", None), "names", None) or ()
    missing = [f for f in ("fname", "class") if f not in fields]
    if missing:  # cars_test_annos.mat, the test annotations without labels, put in place of this one
        raise DatasetError(
            f"cars: {annos} has no {' or '.join(missing)} field per image; it is not the official "
            "annotation file with labels (see data/README.md)"
        )
    try:
        samples = [(str(folder / images / str(r["fname"])), int(r["class"]) - 1) for r in rows]
    except (TypeError, ValueError):  # a class that is no number
        raise DatasetError(
            f"cars: {annos} gives a class that is not a number; re-extract the archive (see data/README.md)"
        ) from None
    bad = [label for _, label in samples if not 0 <= label < len(names)]
    if bad:
        raise DatasetError(
            f"cars: {annos} has class ids outside 1..{len(names)}; re-extract the archive (see data/README.md)"
        )
    check_images_exist("cars", samples, folder / images)
    return ImageDataset("cars", split, names, samples, root=str(folder))
