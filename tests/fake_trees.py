"""Dataset trees in the official on-disk layouts, with small real JPEGs, for tests."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (40, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="JPEG", quality=90)


def _lines(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(" ".join(str(c) for c in r) + "\n" for r in rows), encoding="utf-8")


def make_aircraft(root: Path, variants=("707-320", "A300B4", "F/A-18", "Cessna 172"), per_split=(3, 2)) -> dict:
    """fgvc-aircraft-2013b/data/{images/*.jpg, variants.txt, images_variant_{trainval,test}.txt}."""
    data = root / "fgvc-aircraft-2013b" / "data"
    _lines(data / "variants.txt", [[v] for v in variants])
    truth = {}
    n = 1000000
    for split, count in zip(("trainval", "test"), per_split):
        rows = []
        for v in variants:
            for _ in range(count):
                n += 17
                write_jpeg(data / "images" / f"{n:07d}.jpg", n, size=(48, 40))
                rows.append((f"{n:07d}", v))
        rows.reverse()  # the official lists are not sorted by class
        _lines(data / f"images_variant_{split}.txt", rows)
        truth[split] = [(f"{i}.jpg", variants.index(v)) for i, v in rows]
    for split in ("train", "val"):  # present in the archive, unused by the tool
        _lines(data / f"images_variant_{split}.txt", [])
    return truth


def _birds_lists(folder: Path, classes: list[tuple[int, str]], images: list[tuple[str, int, int]]):
    """images: (relative path, class id, is_train)."""
    _lines(folder / "classes.txt", classes)
    ids = [f"{k + 1}" if folder.name == "CUB_200_2011" else f"{k:04x}deadbeef" for k in range(len(images))]
    _lines(folder / "images.txt", [(i, rel) for i, (rel, _, _) in zip(ids, images)])
    _lines(folder / "image_class_labels.txt", [(i, c) for i, (_, c, _) in zip(ids, images)])
    _lines(folder / "train_test_split.txt", [(i, t) for i, (_, _, t) in zip(ids, images)])
    for k, (rel, _, _) in enumerate(images):
        write_jpeg(folder / "images" / rel, 500 + k)


def make_cub(root: Path, n_classes=3, per_class=(3, 2)) -> None:
    folder = root / "CUB_200_2011"
    names = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross", "004.Groove_billed_Ani"][
        :n_classes
    ]
    images = []
    for cid, name in enumerate(names, 1):
        for k in range(sum(per_class)):
            images.append((f"{name}/{name.split('.')[1]}_{k:04d}_{cid}.jpg", cid, 1 if k < per_class[0] else 0))
    _birds_lists(folder, [(i, n) for i, n in enumerate(names, 1)], images)


def make_nabirds(root: Path, per_class=(2, 2)) -> None:
    """Taxonomy ids include internal nodes (0, 1, 22) that never label an image."""
    folder = root / "nabirds"
    classes = [
        (0, "Birds"),
        (1, "Perching Birds"),
        (22, "Gulls"),
        (817, "Oak Titmouse"),
        (295, "Bewick's Wren"),
        (1010, "Red-tailed Hawk (Dark morph)"),
    ]
    leaves = [817, 295, 1010]
    images = []
    for cid in leaves:
        for k in range(sum(per_class)):
            images.append((f"{cid:04d}/{cid:04d}{k:028x}.jpg", cid, 1 if k < per_class[0] else 0))
    _birds_lists(folder, classes, images)
    _lines(folder / "hierarchy.txt", [(817, 1), (295, 1), (1010, 22), (1, 0), (22, 0)])


DOG_BREEDS = ("n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02086910-papillon")


def make_dogs(root: Path, per_class=(3, 2), breeds=DOG_BREEDS) -> None:
    """stanford_dogs/{Images/<wnid>-<breed>/*.jpg, train_list.mat, test_list.mat}; ``breeds`` in
    wnid order, as the official labels follow."""
    from scipy.io import savemat

    folder = root / "stanford_dogs"
    lists = {"train": [], "test": []}
    for label, breed in enumerate(breeds, 1):
        wnid = breed.split("-")[0]
        for k in range(sum(per_class)):
            rel = f"{breed}/{wnid}_{1000 + k}.jpg"
            write_jpeg(folder / "Images" / rel, 900 + 10 * label + k)
            lists["train" if k < per_class[0] else "test"].append((rel, label))
    for split, rows in lists.items():
        rows = rows[::-1]
        files = np.empty((len(rows), 1), dtype=object)
        annos = np.empty((len(rows), 1), dtype=object)
        for i, (rel, _) in enumerate(rows):
            files[i, 0] = np.array([rel])
            annos[i, 0] = np.array([rel[:-4]])
        labels = np.array([[lab] for _, lab in rows], dtype=np.uint8)
        savemat(folder / f"{split}_list.mat", {"file_list": files, "annotation_list": annos, "labels": labels})


def make_cars(root: Path, per_class=(2, 2)) -> None:
    """stanford_cars/{cars_train, cars_test, devkit/{cars_meta,cars_train_annos}.mat,
    cars_test_annos_withlabels.mat} (torchvision's StanfordCars layout)."""
    from scipy.io import savemat

    folder = root / "stanford_cars"
    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012"]
    meta = np.empty((1, len(names)), dtype=object)
    for i, n in enumerate(names):
        meta[0, i] = np.array([n])
    (folder / "devkit").mkdir(parents=True, exist_ok=True)
    savemat(folder / "devkit" / "cars_meta.mat", {"class_names": meta})
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    for split, count, annos in (
        ("train", per_class[0], "devkit/cars_train_annos.mat"),
        ("test", per_class[1], "cars_test_annos_withlabels.mat"),
    ):
        rows = []
        for cid in range(1, len(names) + 1):
            for _ in range(count):
                fname = f"{len(rows) + 1:05d}.jpg"
                write_jpeg(folder / f"cars_{split}" / fname, 1300 + 7 * len(rows) + cid)
                rows.append((1, 2, 30, 20, cid, fname))
        arr = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
        for i, r in enumerate(rows):
            for f, v in zip(fields, r):
                arr[0, i][f] = np.array([[v]]) if f != "fname" else np.array([v])
        savemat(folder / annos, {"annotations": arr})


def make_folder(root: Path, classes=("Blue_Jay", "house_sparrow"), per_class=(2, 1)) -> Path:
    path = root / "mybirds"
    for ci, c in enumerate(classes):
        for split, count in zip(("train", "test"), per_class):
            for k in range(count):
                write_jpeg(path / split / c / f"img{k}.jpg", 2000 + 10 * ci + k)
    return path


def official_archives(name: str, src: Path, out: Path, **tree) -> list[Path]:
    """The fake tree of ``name`` (``make_<name>(src, **tree)``) packed as its official archives
    pack it (names and shapes)."""
    globals()[f"make_{name}"](src, **tree)
    out.mkdir(parents=True, exist_ok=True)
    if name == "dogs":  # images.tar holds Images/, lists.tar the .mat files at its top
        with tarfile.open(out / "images.tar", "w") as tar:
            tar.add(src / "stanford_dogs" / "Images", "Images")
        with tarfile.open(out / "lists.tar", "w") as tar:
            for mat in sorted((src / "stanford_dogs").glob("*.mat")):
                tar.add(mat, mat.name)
        return [out / "images.tar", out / "lists.tar"]
    folder = {"cub": "CUB_200_2011", "aircraft": "fgvc-aircraft-2013b"}[name]
    path = out / {"cub": "CUB_200_2011.tgz", "aircraft": "fgvc-aircraft-2013b.tar.gz"}[name]
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src / folder, folder)
        if name == "cub":  # the official archive also holds attributes.txt beside the folder
            (src / "attributes.txt").write_text("1 has_bill_shape::dagger\n")
            tar.add(src / "attributes.txt", "attributes.txt")
    return [path]


def serve_archives(name: str, archives: list[Path], monkeypatch, **override) -> None:
    """Point --download of ``name`` at file:// copies of its archives (the network's stand-in),
    with their true sizes and digests unless ``override`` changes one."""
    from dataclasses import replace

    from dait_cache import data
    from dait_cache.data.download import Archive

    spec = data.DOWNLOADS[name]
    served = tuple(
        Archive(
            path.as_uri(),
            size=override.get("size", path.stat().st_size),
            md5=override.get("md5", hashlib.md5(path.read_bytes()).hexdigest()),
            sha256=override.get("sha256", hashlib.sha256(path.read_bytes()).hexdigest()),
        )
        for path in archives
    )
    assert [a.filename for a in served] == [a.filename for a in spec.archives]  # the official file names
    monkeypatch.setitem(data.DOWNLOADS, name, replace(spec, archives=served))
