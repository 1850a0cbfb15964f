"""Dataset parsers on trees laid out like the official archives."""

import os
import re
import shutil
import subprocess
import tarfile
from collections import Counter
from pathlib import Path

import fake_trees
import numpy as np
import pytest
from PIL import Image

from dait_cache.data import DOWNLOADS, load_dataset, official_fraction, train_val_split
from dait_cache.errors import BadImageError, DaitError, DatasetError


def test_aircraft_labels_follow_variants_txt(tmp_path):
    truth = fake_trees.make_aircraft(tmp_path)
    train = load_dataset("aircraft", tmp_path, "train")
    test = load_dataset("aircraft", tmp_path, "test")
    assert train.class_names == ["707-320", "A300B4", "F/A-18", "Cessna 172"]
    assert (len(train), len(test)) == (12, 8)
    got = [(Path(p).name, y) for p, y in train.samples]
    assert got == truth["trainval"]  # order and labels exactly as in the annotation file
    assert {Path(p).name for p, _ in train.samples}.isdisjoint({Path(p).name for p, _ in test.samples})
    img = train.load_image(0)
    assert img.mode == "RGB" and img.size == (48, 40)


@pytest.mark.parametrize(
    "damage, said",
    [
        (
            lambda d: (d / "variants.txt").write_text("707-320\n\nA300B4\nF/A-18\n"),
            "aircraft: images_variant_trainval.txt names variant 'Cessna 172' that is not in variants.txt; re-extract",
        ),
        (
            lambda d: (d / "images_variant_trainval.txt").write_text("1000017\n"),
            "images_variant_trainval.txt:1: expected 2 columns, got '1000017'",
        ),
        (lambda d: (d / "images" / "1000017.jpg").unlink(), "aircraft: 1 listed images are missing under"),
        (  # bytes that are no UTF-8 (a damaged copy): a UnicodeDecodeError's traceback before
            lambda d: (d / "variants.txt").write_bytes(b"707-320\r\nA300B4\r\nF/A-\xff18\r\nCessna 172\r\n"),
            "variants.txt:3: not UTF-8 text; the file looks damaged, re-extract the official archive (",
        ),
        (
            lambda d: (d / "images_variant_trainval.txt").write_bytes(b"1000017 707-320\n\x80\x81 A300B4\n"),
            "images_variant_trainval.txt:2: not UTF-8 text; the file looks damaged",
        ),
    ],
)
def test_aircraft_lists_that_disagree_with_the_files_are_one_line(tmp_path, damage, said):
    fake_trees.make_aircraft(tmp_path)
    damage(tmp_path / "fgvc-aircraft-2013b" / "data")
    with pytest.raises(DatasetError) as err:
        load_dataset("aircraft", tmp_path, "train")
    assert said in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_aircraft_lists_skip_blank_lines_and_windows_line_ends(tmp_path):
    fake_trees.make_aircraft(tmp_path)
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    before = load_dataset("aircraft", tmp_path, "train").samples
    (data / "variants.txt").write_text("707-320\n\nA300B4\nF/A-18\nCessna 172\n\n")
    split = data / "images_variant_trainval.txt"
    split.write_bytes(b"\r\n" + split.read_bytes().replace(b"\n", b"\r\n\r\n"))  # edited on Windows
    train = load_dataset("aircraft", tmp_path, "train")
    assert train.class_names == ["707-320", "A300B4", "F/A-18", "Cessna 172"] and train.samples == before


def test_aircraft_banner_crop(tmp_path):
    fake_trees.make_aircraft(tmp_path)
    from dait_cache.data import aircraft

    ds = aircraft.load(tmp_path, "train", crop_banner=True)
    assert ds.load_image(0).size == (48, 20)  # the archive's copyright banner is 20 pixel rows


def test_the_data_root_defaults_to_dait_data_and_only_downloadable_sets_download(tmp_path, monkeypatch):
    fake_trees.make_aircraft(tmp_path / "elsewhere")
    monkeypatch.setenv("DAIT_DATA", str(tmp_path / "elsewhere"))
    assert load_dataset("aircraft", None, "test").root == str(tmp_path / "elsewhere" / "fgvc-aircraft-2013b")
    assert len(load_dataset("synthetic", None, "train", download=True)) > 0  # nothing to fetch, not refused
    with pytest.raises(DatasetError, match=r"^nabirds has no automatic download; see data/README\.md$"):
        load_dataset("nabirds", tmp_path, "train", download=True)


def test_waiting_for_a_download_returns_once_its_folder_is_in_place(tmp_path):
    import threading
    import time

    from dait_cache.data import wait_for_download

    wait_for_download("synthetic", tmp_path, poll_s=60)  # no download: at once
    (tmp_path / "fgvc-aircraft-2013b").mkdir()
    wait_for_download("aircraft", tmp_path, poll_s=60)  # in place: at once
    timer = threading.Timer(0.3, (tmp_path / "CUB_200_2011").mkdir)
    start = time.monotonic()
    timer.start()
    wait_for_download("cub", tmp_path, poll_s=0.05)
    assert (tmp_path / "CUB_200_2011").is_dir() and time.monotonic() - start >= 0.3


@pytest.mark.parametrize("name", ["aircraft", "cub", "dogs"])
def test_download_fetches_checks_and_unpacks_the_official_archives(tmp_path, monkeypatch, name):
    archives = fake_trees.official_archives(name, tmp_path / "src", tmp_path / "served")
    fake_trees.serve_archives(name, archives, monkeypatch)
    heard = []
    root = tmp_path / "root"
    train = load_dataset(name, root, "train", download=True, progress=lambda *a: heard.append(a))
    # the same dataset as the tree itself, read in place
    truth = load_dataset(name, tmp_path / "src", "train")
    rel = lambda ds, base: [(str(Path(p).relative_to(base)), y) for p, y in ds.samples]  # noqa: E731
    assert rel(train, root) == rel(truth, tmp_path / "src") and train.class_names == truth.class_names
    assert len(load_dataset(name, root, "test", download=True)) == len(load_dataset(name, tmp_path / "src", "test"))
    # only the dataset folder is left: no archive, no temp folder
    assert [p.name for p in root.iterdir()] == [DOWNLOADS[name].folder]
    assert {k for k, _, _ in heard} == {f"download {a.name}" for a in archives}
    assert all(done <= total for _, done, total in heard) and heard[-1][1] == heard[-1][2]
    assert heard[-1][2] == 1  # a few kB count as 1 MB, not as a bar of 0


def test_an_archive_without_a_published_size_shows_progress_by_what_the_server_promises(tmp_path, monkeypatch):
    archives = fake_trees.official_archives("aircraft", tmp_path / "src", tmp_path / "served")
    fake_trees.serve_archives("aircraft", archives, monkeypatch, size=None)  # as FGVC-Aircraft's page gives none
    heard = []
    load_dataset("aircraft", tmp_path / "root", "train", download=True, progress=lambda *a: heard.append(a))
    assert heard and heard[-1] == (f"download {archives[0].name}", 1, 1)


@pytest.mark.parametrize("what", ["size", "md5", "sha256"])
def test_download_of_an_altered_archive_is_refused_and_leaves_nothing(tmp_path, monkeypatch, what):
    archives = fake_trees.official_archives("cub", tmp_path / "src", tmp_path / "served")
    fake_trees.serve_archives("cub", archives, monkeypatch, **{what: 1 if what == "size" else "0" * 32})
    root = tmp_path / "root"
    with pytest.raises(DatasetError) as err:
        load_dataset("cub", root, "train", download=True)
    msg = str(err.value)
    assert f"arrived with {what} " in msg and "CUB_200_2011.tgz" in msg and "\n" not in msg
    assert list(root.iterdir()) == []  # no dataset folder that looks complete, no temp files


def test_download_offline_is_one_clear_error(tmp_path, monkeypatch):
    from dataclasses import replace

    from dait_cache import data
    from dait_cache.data.download import Archive

    closed = Archive("http://127.0.0.1:9/fgvc-aircraft-2013b.tar.gz")  # the discard port: refused at once
    monkeypatch.setitem(data.DOWNLOADS, "aircraft", replace(data.DOWNLOADS["aircraft"], archives=(closed,)))
    with pytest.raises(DatasetError, match="download of .*fgvc-aircraft-2013b.tar.gz failed .*check your network"):
        load_dataset("aircraft", tmp_path, "train", download=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("reset", [False, True])
def test_download_cut_off_part_way_is_one_clear_error(tmp_path, monkeypatch, reset):
    """A server that promises an archive and closes (or resets) the connection part-way (a
    local one: real HTTP, no network); never read as a full disk."""
    from dataclasses import replace

    from benchmarks.fault_inputs import cut_off_server
    from dait_cache.data.download import Archive

    with cut_off_server("CUB_200_2011.tgz", reset=reset) as url:
        monkeypatch.setitem(DOWNLOADS, "cub", replace(DOWNLOADS["cub"], archives=(Archive(url),)))
        with pytest.raises(DatasetError, match=f"download of {url} failed .*check your network"):
            load_dataset("cub", tmp_path / "root", "train", download=True)
    assert list((tmp_path / "root").iterdir()) == []


def test_a_network_error_without_a_message_is_named_by_its_type():
    from dait_cache.data.download import _unreachable

    msg = str(_unreachable(DOWNLOADS["cub"], DOWNLOADS["cub"].archives[0], TimeoutError()))
    assert "CUB_200_2011.tgz failed (TimeoutError); check your network" in msg


def test_download_of_a_file_that_is_no_archive_is_one_line(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    (served / "CUB_200_2011.tgz").write_bytes(b"\x1f\x8b" + bytes(3000))  # gzip's magic, then nothing
    fake_trees.serve_archives("cub", [served / "CUB_200_2011.tgz"], monkeypatch)
    with pytest.raises(DatasetError) as err:
        load_dataset("cub", tmp_path / "root", "train", download=True)
    assert str(err.value).startswith("cub: cannot unpack CUB_200_2011.tgz (") and "\n" not in str(err.value)
    assert list((tmp_path / "root").iterdir()) == []


def test_download_never_writes_over_an_existing_folder_and_removes_dead_temps(tmp_path, monkeypatch):
    archives = fake_trees.official_archives("cub", tmp_path / "src", tmp_path / "served")
    fake_trees.serve_archives("cub", archives, monkeypatch)
    root = tmp_path / "root"
    (root / "CUB_200_2011").mkdir(parents=True)  # a user's half-copied tree
    (root / "CUB_200_2011" / "classes.txt").write_text("1 001.Mine\n")
    with pytest.raises(DatasetError, match="does not write over an existing folder: move .*CUB_200_2011 away"):
        load_dataset("cub", root, "train", download=True)
    assert [p.name for p in (root / "CUB_200_2011").iterdir()] == ["classes.txt"]
    shutil.rmtree(root / "CUB_200_2011")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (root / f".CUB_200_2011.download-{dead.pid}").mkdir()  # a killed download's leftovers
    assert len(load_dataset("cub", root, "train", download=True)) == 9
    assert [p.name for p in root.iterdir()] == ["CUB_200_2011"]


def test_download_keeps_no_archive_once_unpacked_and_only_dead_owners_temps_go(tmp_path, monkeypatch):
    """dogs has two archives: the first is gone before the second arrives (disk needed: the
    tree plus one archive). A live process's temp folder is another download in flight."""
    from dait_cache.data import download

    archives = fake_trees.official_archives("dogs", tmp_path / "src", tmp_path / "served")
    fake_trees.serve_archives("dogs", archives, monkeypatch)
    seen, real = [], download._download

    def spy(spec, archive, work, progress):
        seen.append(sorted(p.name for p in work.iterdir() if p.is_file()))
        return real(spec, archive, work, progress)

    monkeypatch.setattr(download, "_download", spy)
    root = tmp_path / "root"
    dead = subprocess.Popen(["true"])
    dead.wait()
    with subprocess.Popen(["sleep", "60"]) as alive:
        for pid in (dead.pid, alive.pid):
            (root / f".stanford_dogs.download-{pid}").mkdir(parents=True)
        try:
            assert len(load_dataset("dogs", root, "train", download=True)) > 0
        finally:
            alive.kill()
    assert seen == [[], []]  # images.tar was unpacked and removed before lists.tar came
    assert sorted(p.name for p in root.iterdir()) == [f".stanford_dogs.download-{alive.pid}", "stanford_dogs"]


def test_fetch_never_unpacks_over_a_folder_and_yields_to_one_put_in_place_meanwhile(tmp_path, monkeypatch):
    """fetch's own guards, behind load_dataset's: a folder that exists is refused; one that another
    process renames into place while this one unpacks is kept, and this copy is dropped."""
    from dait_cache.data import download

    archives = fake_trees.official_archives("cub", tmp_path / "src", tmp_path / "served")
    fake_trees.serve_archives("cub", archives, monkeypatch)
    spec, root = DOWNLOADS["cub"], tmp_path / "root"
    (root / "CUB_200_2011").mkdir(parents=True)
    with pytest.raises(DatasetError, match="CUB_200_2011 exists but is not a complete dataset"):
        download.fetch(spec, root)
    assert list((root / "CUB_200_2011").iterdir()) == []
    (root / "CUB_200_2011").rmdir()
    real = download._unpack

    def other_process_first(spec, path, dest):
        real(spec, path, dest)
        shutil.copytree(dest / "CUB_200_2011", root / "CUB_200_2011")
        (root / "CUB_200_2011" / "theirs").touch()

    monkeypatch.setattr(download, "_unpack", other_process_first)
    assert download.fetch(spec, root) == root / "CUB_200_2011"
    assert (root / "CUB_200_2011" / "theirs").exists()  # theirs, not written over
    assert [p.name for p in root.iterdir()] == ["CUB_200_2011"]


@pytest.mark.parametrize("mount", ["full", "full-while-unpacking", "read-only"])
def test_download_onto_a_full_or_read_only_disk_is_one_clear_error(tmp_path, monkeypatch, mount):
    from benchmarks.fault_inputs import _tmpfs

    archives = fake_trees.official_archives("cub", tmp_path / "src", tmp_path / "served")
    if mount == "full-while-unpacking":  # an archive that fits, holding more than the disk
        (tmp_path / "zeros").write_bytes(bytes(200_000))
        with tarfile.open(archives[0], "w:gz") as tar:
            tar.add(tmp_path / "zeros", "CUB_200_2011/zeros")
        assert archives[0].stat().st_size < 4_000
    else:
        assert archives[0].stat().st_size > 20_000  # more than the small disk holds
    fake_trees.serve_archives("cub", archives, monkeypatch)
    root = tmp_path / "disk"
    with _tmpfs(root, 16, ",ro" if mount == "read-only" else "") as mounted:
        if not mounted:
            pytest.skip("mounting a tmpfs needs root")
        with pytest.raises(DatasetError) as err:
            load_dataset("cub", root / "data", "train", download=True)
        left = [str(p.relative_to(root)) for p in root.rglob("*")]
    msg = str(err.value)
    assert "cub: cannot write" in msg and "free some space or pass another --data-root" in msg and "\n" not in msg
    assert left in ([], ["data"])  # the --data-root at most: no dataset folder, no temp files


@pytest.mark.parametrize("escape", ["path", "link"])
@pytest.mark.parametrize("python_filter", [True, False], ids=["tarfile-filter", "older-python"])
def test_download_refuses_an_archive_whose_paths_leave_the_folder(tmp_path, monkeypatch, python_filter, escape):
    if not python_filter:  # a Python before 3.10.12 / 3.11.4: the check by hand
        monkeypatch.delattr(tarfile, "data_filter")
    served = tmp_path / "served"
    served.mkdir()
    (tmp_path / "evil.txt").write_text("x")
    with tarfile.open(served / "CUB_200_2011.tgz", "w:gz") as tar:
        tar.add(tmp_path / "evil.txt", "CUB_200_2011/classes.txt")
        if escape == "path":
            tar.add(tmp_path / "evil.txt", "CUB_200_2011/../../../evil.txt")  # beside the dataset folder
        else:  # a link inside the folder that points out of it: reading the dataset would read that file
            link = tarfile.TarInfo("CUB_200_2011/images.txt")
            link.type, link.linkname = tarfile.SYMTYPE, "../../../../evil.txt"
            tar.addfile(link)
    fake_trees.serve_archives("cub", [served / "CUB_200_2011.tgz"], monkeypatch)
    root = tmp_path / "a" / "root"
    with pytest.raises(DatasetError, match="cub: cannot unpack CUB_200_2011.tgz"):
        load_dataset("cub", root, "train", download=True)
    assert list(root.iterdir()) == [] and not (tmp_path / "a" / "evil.txt").exists()


def test_cub(tmp_path):
    fake_trees.make_cub(tmp_path)
    train = load_dataset("cub", tmp_path, "train")
    test = load_dataset("cub", tmp_path, "test")
    assert train.class_names == ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross"]
    assert (len(train), len(test)) == (9, 6)
    for p, y in train.samples + test.samples:  # label 1-based id -> folder of that class
        assert Path(p).parent.name.startswith(f"{y + 1:03d}.")
    assert all("_000" in Path(p).name and int(Path(p).stem.split("_")[-2]) < 3 for p, _ in train.samples)


def test_nabirds_leaf_classes_in_sorted_id_order(tmp_path):
    fake_trees.make_nabirds(tmp_path)
    train = load_dataset("nabirds", tmp_path, "train")
    test = load_dataset("nabirds", tmp_path, "test")
    # leaves 295 < 817 < 1010; internal ids 0, 1, 22 are not classes
    assert train.class_names == ["Bewick's Wren", "Oak Titmouse", "Red-tailed Hawk (Dark morph)"]
    assert test.class_names == train.class_names
    for p, y in train.samples + test.samples:
        assert int(Path(p).parent.name) == [295, 817, 1010][y]
    assert (len(train), len(test)) == (6, 6)


def test_dogs_mat_lists(tmp_path):
    fake_trees.make_dogs(tmp_path)
    train = load_dataset("dogs", tmp_path, "train")
    test = load_dataset("dogs", tmp_path, "test")
    assert train.class_names == ["Chihuahua", "Japanese spaniel", "papillon"]
    assert (len(train), len(test)) == (9, 6)
    for p, y in train.samples + test.samples:
        assert Path(p).parent.name == ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02086910-papillon"][y]


def test_cars_torchvision_layout(tmp_path):
    fake_trees.make_cars(tmp_path)
    train = load_dataset("cars", tmp_path, "train")
    test = load_dataset("cars", tmp_path, "test")
    assert train.class_names[1] == "Acura RL Sedan 2012" and len(train.class_names) == 3
    assert (len(train), len(test)) == (6, 6)
    assert [y for _, y in train.samples] == [0, 0, 1, 1, 2, 2]
    assert all("/cars_test/" in p for p, _ in test.samples)


def _edit_mat(path: Path, **changes) -> None:
    """Rewrite one official .mat file with some entries changed (None removes one)."""
    from scipy.io import loadmat, savemat

    mat = {k: v for k, v in loadmat(str(path)).items() if not k.startswith("__")}
    for key, value in changes.items():
        if value is None:
            mat.pop(key)
        else:
            mat[key] = value(mat[key]) if callable(value) else value
    savemat(path, mat)


def test_dog_names_keep_their_hyphens_and_stray_files_are_no_breed(tmp_path):
    breeds = ("n02085620-Chihuahua", "n02089078-black-and-tan_coonhound", "no_wnid")  # a folder renamed by hand
    fake_trees.make_dogs(tmp_path, breeds=breeds)
    (tmp_path / "stanford_dogs" / "Images" / "README.txt").write_text("not a breed")  # sorts first
    train = load_dataset("dogs", tmp_path, "train")
    assert train.class_names == ["Chihuahua", "black-and-tan coonhound", "no wnid"]
    assert [y for _, y in train.samples] == [2, 2, 2, 1, 1, 1, 0, 0, 0]  # the lists run backwards


@pytest.mark.parametrize(
    "change, said",
    [
        ({"labels": lambda a: a[:-1]}, r"train_list\.mat: file_list and labels differ in length"),
        (
            {"labels": lambda a: a % 3 + 1},
            r"gives n02086910-papillon/n02086910_1002\.jpg label 1, which is not its folder's position",
        ),
        ({"labels": lambda a: a + 3}, r"label [4-6], which is not its folder's position among Images/ folders"),
        ({"labels": None}, r"train_list\.mat has no 'labels' entry; it is not the official file"),
        ({"file_list": None}, r"train_list\.mat has no 'file_list' entry"),
        (  # numbers where the paths belong: an IndexError's traceback before
            {"file_list": lambda a: np.arange(len(a))},
            r"^dogs: train_list\.mat holds file_list and labels, but not as the official lists do \(",
        ),
        ({"labels": lambda a: np.array([["x"]] * len(a))}, r"re-extract lists\.tar \(see data/README\.md\)$"),
    ],
)
def test_dog_lists_that_disagree_with_the_folders_are_refused(tmp_path, change, said):
    fake_trees.make_dogs(tmp_path)
    _edit_mat(tmp_path / "stanford_dogs" / "train_list.mat", **change)
    with pytest.raises(DatasetError, match=said) as err:
        load_dataset("dogs", tmp_path, "train")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["dogs", "cars"])
def test_a_listed_image_missing_from_a_mat_dataset_is_named(tmp_path, name):
    getattr(fake_trees, f"make_{name}")(tmp_path)
    victim = Path(load_dataset(name, tmp_path, "test").samples[1][0])
    victim.unlink()
    with pytest.raises(DatasetError, match=rf"{name}: 1 listed images are missing .*{victim.name}"):
        load_dataset(name, tmp_path, "test")


@pytest.mark.parametrize("cid", [0, 4, "x"])
def test_car_class_ids_outside_the_meta_file_are_refused(tmp_path, cid):
    fake_trees.make_cars(tmp_path)
    path = tmp_path / "stanford_cars" / "devkit" / "cars_train_annos.mat"

    def one_bad(annos):
        annos[0, 1]["class"] = np.array([[cid]])
        return annos

    _edit_mat(path, annotations=one_bad)
    said = "gives a class that is not a number" if cid == "x" else r"has class ids outside 1\.\.3"
    with pytest.raises(DatasetError, match=rf"^cars: devkit/cars_train_annos\.mat {said}; re-extract"):
        load_dataset("cars", tmp_path, "train")


def test_car_test_annotations_without_labels_are_refused(tmp_path):
    from scipy.io import savemat

    fake_trees.make_cars(tmp_path)
    path = tmp_path / "stanford_cars" / "cars_test_annos_withlabels.mat"

    def without_class(annos):  # the official cars_test_annos.mat, put in place of this one
        fields = [f for f in annos.dtype.names if f != "class"]
        out = np.zeros(annos.shape, dtype=[(f, "O") for f in fields])
        for f in fields:
            out[f] = annos[f]
        return out

    _edit_mat(path, annotations=without_class)
    with pytest.raises(DatasetError) as err:
        load_dataset("cars", tmp_path, "test")
    said = "cars: cars_test_annos_withlabels.mat has no class field per image; it is not the official "
    assert str(err.value) == said + "annotation file with labels (see data/README.md)"
    savemat(path, {"annotations": np.array([1, 2, 3])})  # no records at all
    with pytest.raises(DatasetError, match="^cars: cars_test_annos_withlabels.mat has no fname or class field"):
        load_dataset("cars", tmp_path, "test")


@pytest.mark.parametrize("damage", [b"", b"MATLAB 5.0 MAT-file" + bytes(200), b"\x00" * 64])
def test_a_damaged_mat_file_is_one_line(tmp_path, damage):
    fake_trees.make_cars(tmp_path)
    meta = tmp_path / "stanford_cars" / "devkit" / "cars_meta.mat"
    meta.write_bytes(damage if damage else meta.read_bytes()[:300])  # b"": cut short
    with pytest.raises(DatasetError, match=rf"^cannot read {re.escape(str(meta))} \(.*\); re-extract it") as err:
        load_dataset("cars", tmp_path, "train")
    assert "\n" not in str(err.value)


def test_cars_download_explains_it_is_gone(tmp_path):
    with pytest.raises(DatasetError, match="gone upstream.*data/README.md"):
        load_dataset("cars", tmp_path, "train", download=True)


def test_folder_dataset(tmp_path):
    path = fake_trees.make_folder(tmp_path)
    train = load_dataset(f"folder:{path}", split="train")
    test = load_dataset(f"folder:{path}", split="test")
    assert train.class_names == ["Blue Jay", "house sparrow"]
    assert (len(train), len(test)) == (4, 2)


# name, fake-tree maker, the official top folder, one annotation file the loader needs
OFFICIAL = [
    ("aircraft", fake_trees.make_aircraft, "fgvc-aircraft-2013b", "data/variants.txt"),
    ("cub", fake_trees.make_cub, "CUB_200_2011", "train_test_split.txt"),
    ("dogs", fake_trees.make_dogs, "stanford_dogs", "train_list.mat"),
    ("cars", fake_trees.make_cars, "stanford_cars", "devkit/cars_meta.mat"),
    ("nabirds", fake_trees.make_nabirds, "nabirds", "hierarchy.txt"),
]


@pytest.mark.parametrize("name,maker,folder,annotation", OFFICIAL)
def test_missing_folder_names_path_and_readme(tmp_path, name, maker, folder, annotation):
    with pytest.raises(DatasetError) as err:
        load_dataset(name, tmp_path, "train")
    msg = str(err.value)
    assert str(tmp_path / folder) in msg and "data/README.md" in msg and "\n" not in msg
    fix = f"`dait-cache encode --dataset {name} --download` fetches it"  # the one-step fix, where there is one
    assert (fix in msg) == (name in DOWNLOADS)


@pytest.mark.parametrize("name,maker,folder,annotation", OFFICIAL)
def test_missing_annotation_file_is_named(tmp_path, name, maker, folder, annotation):
    maker(tmp_path)
    (tmp_path / folder / annotation).unlink()
    with pytest.raises(DatasetError, match=f"missing {annotation}"):
        load_dataset(name, tmp_path, "train")


def test_missing_listed_image_is_reported(tmp_path):
    fake_trees.make_cub(tmp_path)
    victim = (
        tmp_path / "CUB_200_2011" / "images" / "001.Black_footed_Albatross" / "Black_footed_Albatross_0000_1.jpg"
    )  # a training image
    victim.unlink()
    with pytest.raises(DatasetError, match="1 listed images are missing"):
        load_dataset("cub", tmp_path, "train")
    # a folder where an image should be is no image either; the message counts the rest
    victim.mkdir()
    (victim.parent / "Black_footed_Albatross_0001_1.jpg").unlink()
    with pytest.raises(
        DatasetError, match=rf"2 listed images are missing under .* \(first: .*{victim.name} and 1 more\)"
    ):
        load_dataset("cub", tmp_path, "train")


def test_an_image_past_pils_pixel_guard_is_refused_not_decoded(tmp_path, monkeypatch):
    from PIL import Image

    from dait_cache.data.base import decode_image

    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4,096 pixels: past twice the limit, PIL's error
    with pytest.raises(BadImageError, match=r"big\.png.*too many pixels to decode safely"):
        decode_image(tmp_path / "big.png")


def test_class_folder_names_read_as_words():
    from dait_cache.data.base import underscores_to_spaces

    assert underscores_to_spaces("Black_footed_Albatross_") == "Black footed Albatross"


def test_corrupt_jpeg_names_the_file(tmp_path):
    fake_trees.make_cub(tmp_path)
    ds = load_dataset("cub", tmp_path, "train")
    Path(ds.samples[2][0]).write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(BadImageError) as err:
        ds.load_image(2)
    assert ds.samples[2][0] in str(err.value) and "--on-bad-image skip" in str(err.value)
    assert ds.load_image(1).mode == "RGB"


def test_folder_dataset_reads_subfolders_and_leaves_out_hidden_names(tmp_path):
    path = fake_trees.make_folder(tmp_path)
    jay = path / "train" / "Blue_Jay"
    fake_trees.write_jpeg(jay / "spring" / "a.jpg", 1)  # ImageFolder finds these: so must we
    fake_trees.write_jpeg(jay / "UPPER.JPG", 2)
    (jay / "._img0.jpg").write_bytes(b"\0\5Mac resource fork")  # macOS on a USB disk: not a JPEG
    fake_trees.write_jpeg(jay / ".thumbs" / "t.jpg", 3)
    fake_trees.write_jpeg(path / "train" / ".ipynb_checkpoints" / "x.jpg", 4)  # was a class
    for split in ("train", "test"):
        (path / split / "README.txt").write_text("where the photos came from")  # a file, not a class
    train = load_dataset(f"folder:{path}", split="train")
    assert train.class_names == ["Blue Jay", "house sparrow"]
    assert [(str(Path(p).relative_to(path / "train")), y) for p, y in train.samples] == [
        ("Blue_Jay/UPPER.JPG", 0),
        ("Blue_Jay/img0.jpg", 0),
        ("Blue_Jay/img1.jpg", 0),
        ("Blue_Jay/spring/a.jpg", 0),
        ("house_sparrow/img0.jpg", 1),
        ("house_sparrow/img1.jpg", 1),
    ]
    assert len(load_dataset(f"folder:{path}", split="test")) == 2
    (path / "train" / "crow" / "notes").mkdir(parents=True)  # a class no image could teach
    with pytest.raises(DatasetError) as err:
        load_dataset(f"folder:{path}", split="train")
    assert str(err.value) == (
        f"folder dataset: class folder {path / 'train' / 'crow'} holds no images "
        "(.bmp, .jpeg, .jpg, .png, .tif, .tiff, .webp); add its images or remove the folder"
    )


def _rm(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


@pytest.mark.parametrize(
    "split, damage, said",
    [
        (
            "test",
            lambda d: [_rm(d / "test"), (d / "test").write_text("")],
            "{d}/test not found; lay it out as {d}/train/<class>/*.jpg",
        ),
        ("test", lambda d: _rm(d / "train"), "{d}/train holds no class folders"),
        (
            "train",
            lambda d: shutil.copytree(d / "train/Blue_Jay", d / "train/Blue Jay"),
            "class folders 'Blue Jay' and 'Blue_Jay' in {d}/train both become class 'Blue Jay'; rename one",
        ),
        (
            "test",
            lambda d: shutil.copytree(d / "test/Blue_Jay", d / "test/crow"),
            "class 'crow' in {d}/test is not in {d}/train; both splits must use the same class folders",
        ),
        ("test", lambda d: [_rm(f) for f in (d / "test").rglob("*.jpg")], "no images under {d}/test"),
        (
            "train",
            lambda d: os.makedirs(os.path.join(bytes(d / "train"), b"bad\xff")),
            "{d}/train/bad? has a name that is not valid UTF-8; rename it",
        ),
        (
            "train",
            lambda d: fake_trees.write_jpeg(
                Path(os.fsdecode(os.path.join(bytes(d / "train/Blue_Jay"), b"x\xfe.jpg"))), 5
            ),
            "{d}/train/Blue_Jay/x?.jpg has a name that is not valid UTF-8",
        ),
    ],
)
def test_a_folder_dataset_laid_out_wrong_is_one_line(tmp_path, split, damage, said):
    path = fake_trees.make_folder(tmp_path)
    damage(path)
    with pytest.raises(DatasetError) as err:
        load_dataset(f"folder:{path}", split=split)
    assert str(err.value).startswith("folder dataset: ") and said.format(d=path) in str(err.value), str(err.value)


def test_a_test_class_without_images_is_allowed(tmp_path):
    path = fake_trees.make_folder(tmp_path)
    for f in (path / "test" / "house_sparrow").iterdir():
        f.unlink()
    test = load_dataset(f"folder:{path}", split="test")
    assert [y for _, y in test.samples] == [0] and test.class_names == ["Blue Jay", "house sparrow"]


def test_a_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    from dait_cache.data.base import decode_image

    # PIL's convert("RGB") clipped every value above 255: this gradient came out 99.6 % white
    values = np.arange(0, 65536, 13, dtype=np.uint16)[:4900].reshape(70, 70)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    rgb = np.asarray(decode_image(tmp_path / "g16.png"))
    expected = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    assert rgb.shape == (70, 70, 3) and all(np.array_equal(rgb[..., c], expected) for c in range(3))
    # 8-bit values held in a 32-bit image are not scaled
    Image.fromarray(values.astype(np.int32) % 256, mode="I").save(tmp_path / "i8.tif")
    assert np.array_equal(np.asarray(decode_image(tmp_path / "i8.tif"))[..., 0], (values % 256).astype(np.uint8))
    # a float TIFF has no range to scale from: PIL turned values in [0, 1] black, silently
    Image.fromarray(values.astype(np.float32) / 65535).save(tmp_path / "f32.tif")
    with pytest.raises(BadImageError) as err:
        decode_image(tmp_path / "f32.tif")
    assert err.value.reason == (
        "32-bit floating-point pixels, whose range cannot be told; save it as an 8- or 16-bit image"
    )


# How a viewer shows stored pixels (rows, columns) for each EXIF orientation tag (EXIF 2.32, 4.6.5)
SHOWN = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # upside down
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
    6: lambda a: np.rot90(a, k=-1),  # stored turned 90 degrees anticlockwise: shown clockwise
    7: lambda a: np.rot90(a, k=2).transpose(1, 0, 2),  # mirrored along the anti-diagonal
    8: lambda a: np.rot90(a, k=1),
}


@pytest.mark.parametrize("tag", sorted(SHOWN))
def test_exif_orientation_shows_each_tag_as_a_viewer_does(tmp_path, tag):
    from dait_cache.data.base import decode_image

    stored = np.random.default_rng(tag).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = tag
    Image.fromarray(stored).save(tmp_path / "p.png", exif=exif)
    assert np.array_equal(np.asarray(decode_image(tmp_path / "p.png")), stored)  # off: as stored
    assert np.array_equal(np.asarray(decode_image(tmp_path / "p.png", exif_orientation=True)), SHOWN[tag](stored))
    # the banner is cut from the stored pixels' bottom (where FGVC-Aircraft has it), then turned
    cut = np.asarray(decode_image(tmp_path / "p.png", crop_bottom=4, exif_orientation=True))
    assert np.array_equal(cut, SHOWN[tag](stored[:-4]))


@pytest.mark.parametrize("block", [b"garbage", b"Exif\x00\x00MM\x00*\x00\x00\xff\xff\xff"], ids=["raises", "warns"])
def test_a_damaged_exif_block_leaves_the_pixels_as_stored_quietly(tmp_path, block):
    import warnings

    from dait_cache.data.base import decode_image

    stored = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    Image.fromarray(stored).save(tmp_path / "p.png", exif=block)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert np.array_equal(np.asarray(decode_image(tmp_path / "p.png", exif_orientation=True)), stored)
    assert [str(w.message) for w in shown] == []  # Pillow's "Corrupt EXIF data", once per image


def test_grayscale_image_becomes_rgb(tmp_path):
    path = fake_trees.make_folder(tmp_path)
    Image.new("L", (20, 20), 128).save(path / "train" / "Blue_Jay" / "gray.jpg")
    ds = load_dataset(f"folder:{path}", split="train")
    i = [Path(p).name for p, _ in ds.samples].index("gray.jpg")
    assert ds.load_image(i).mode == "RGB"


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(DatasetError, match="valid: aircraft, cub, dogs, cars, nabirds, synthetic"):
        load_dataset("imagenet", "/nowhere", "train")


def test_unknown_split():
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        load_dataset("synthetic", None, "val")


LABELS = np.repeat(np.arange(10), [30, 30, 20, 20, 12, 12, 9, 9, 5, 3])


def test_validation_split_is_stratified_disjoint_and_seeded():
    train, val = train_val_split(LABELS, 0.1, seed=3)
    assert len(set(train) & set(val)) == 0 and len(train) + len(val) == len(LABELS)
    counts = Counter(LABELS[val].tolist())
    for c, n in Counter(LABELS.tolist()).items():
        assert counts[c] == max(1, round(0.1 * n))  # every class, in proportion
        assert (LABELS[train] == c).sum() >= 1
    again = train_val_split(LABELS, 0.1, seed=3)
    assert np.array_equal(val, again[1])
    assert not np.array_equal(val, train_val_split(LABELS, 0.1, seed=4)[1])


def test_train_fraction_counts_the_official_set_and_draws_from_what_val_left():
    rest, _ = train_val_split(LABELS, 0.1, seed=0)
    official = Counter(LABELS.tolist())
    keep, requested = official_fraction(LABELS, rest, 0.3, seed=0)
    assert set(keep) <= set(rest) and requested == sum(max(1, round(0.3 * n)) for n in official.values())
    assert Counter(LABELS[keep].tolist()) == {c: max(1, round(0.3 * n)) for c, n in official.items()}
    assert np.array_equal(keep, official_fraction(LABELS, rest, 0.3, seed=0)[0])
    assert not np.array_equal(keep, official_fraction(LABELS, rest, 0.3, seed=1)[0])
    half, _ = official_fraction(LABELS, rest, 0.5, seed=0)
    assert set(keep) < set(half)  # nested: 30% is inside 50%
    full, requested = official_fraction(LABELS, rest, 1.0, seed=0)
    assert np.array_equal(full, rest) and requested == len(LABELS)  # capped at what val left
    for wrong in (0.0, 1.5, float("nan")):  # the library's callers get what the CLI's range gives
        with pytest.raises(DaitError, match=f"train fraction must be in \\(0, 1\\], got {wrong}"):
            official_fraction(LABELS, rest, wrong, seed=0)
        with pytest.raises(DaitError, match=f"validation fraction must be in \\[0, 1\\), got {wrong + 1}"):
            train_val_split(LABELS, wrong + 1, seed=0)


def test_splits_are_seeded_permutations_per_class_on_streams_of_their_own():
    """Exact rows from an independent computation: per class in label order, a permutation drawn
    from SeedSequence([seed, 2]) (validation) or ([seed, 1]) (fraction); a class never gives its
    last image to validation."""
    labels = np.array([0, 1, 1, 2, 0, 2, 2, 0, 3, 1, 2, 0])
    seed = 5
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    val = []
    for c in range(4):
        idx = np.flatnonzero(labels == c)
        val += rng.permutation(idx)[: min(max(1, round(0.5 * len(idx))), len(idx) - 1)].tolist()
    train, got_val = train_val_split(labels, 0.5, seed)
    assert got_val.tolist() == sorted(val) and 8 not in got_val  # class 3's one image stays in train
    assert train.tolist() == sorted(set(range(len(labels))) - set(val))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    keep, requested = [], 0
    for c in range(4):  # drawn from every row (--val-fraction 0): the draw, not a cap, decides
        idx, want = np.flatnonzero(labels == c), max(1, round(0.5 * (labels == c).sum()))
        keep += rng.permutation(idx)[:want].tolist()
        requested += want
    got, got_requested = official_fraction(labels, np.arange(len(labels)), 0.5, seed)
    assert got.tolist() == sorted(keep) and got_requested == requested
    with pytest.raises(DaitError, match=r"validation fraction must be in \[0, 1\), got 1.0"):
        train_val_split(labels, 1.0, seed)
    with pytest.raises(DaitError, match=r"train fraction must be in \(0, 1\], got 0"):
        official_fraction(labels, train, 0, seed)


def test_bird_lists_sort_class_ids_as_numbers_and_need_a_split_entry_per_image(tmp_path):
    fake_trees.make_cub(tmp_path, n_classes=4, per_class=(1, 1))
    folder = tmp_path / "CUB_200_2011"
    classes = folder / "classes.txt"
    classes.write_text(classes.read_text().replace("4 004.", "10 010."))
    labels = folder / "image_class_labels.txt"
    labels.write_text("".join(line.replace(" 4", " 10") + "\n" for line in labels.read_text().splitlines()))
    train = load_dataset("cub", tmp_path, "train")
    assert train.class_names == ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross", "Groove billed Ani"]
    assert [y for _, y in train.samples] == [0, 1, 2, 3]
    split = folder / "train_test_split.txt"
    split.write_text("".join(line + "\n" for line in split.read_text().splitlines()[1:]))
    with pytest.raises(DatasetError, match=r"cub: image id 1 has no label or split entry; .*re-extract the official"):
        load_dataset("cub", tmp_path, "train")


@pytest.mark.parametrize("name, folder", [("cub", "CUB_200_2011"), ("nabirds", "nabirds")])
def test_a_bird_label_that_classes_txt_does_not_list_is_one_line(tmp_path, name, folder):
    (fake_trees.make_cub if name == "cub" else fake_trees.make_nabirds)(tmp_path)
    labels = tmp_path / folder / "image_class_labels.txt"
    lines = labels.read_text().splitlines()
    last_id = lines[-1].split()[0]
    labels.write_text("".join(line + "\n" for line in lines[:-1]) + f"{last_id} 999\n")
    for split in ("train", "test"):  # whichever split the image is in (a KeyError's traceback before)
        with pytest.raises(DatasetError) as err:
            load_dataset(name, tmp_path, split)
        assert str(err.value) == (
            f"{name}: image id {last_id} has class id 999, which classes.txt does not list; the annotation "
            "files do not match, re-extract the official archive (see data/README.md)"
        )


@pytest.mark.parametrize("name, folder", [("cub", "CUB_200_2011"), ("nabirds", "nabirds")])
@pytest.mark.parametrize("flag", ["2", "yes"])
def test_a_bird_split_entry_other_than_0_or_1_is_one_line(tmp_path, name, folder, flag):
    (fake_trees.make_cub if name == "cub" else fake_trees.make_nabirds)(tmp_path)
    split = tmp_path / folder / "train_test_split.txt"
    rows = [line.split() for line in split.read_text().splitlines()]
    split.write_text("".join(f"{i} {flag if k == 0 else t}\n" for k, (i, t) in enumerate(rows)))
    for which in ("train", "test"):  # the image was in neither split before, silently
        with pytest.raises(DatasetError) as err:
            load_dataset(name, tmp_path, which)
        assert str(err.value) == (
            f"{name}: train_test_split.txt gives image id {rows[0][0]} the value {flag!r}, not 1 (train) "
            "or 0 (test); the file looks damaged, re-extract the official archive (see data/README.md)"
        )


@pytest.mark.parametrize("name, folder", [("cub", "CUB_200_2011"), ("nabirds", "nabirds")])
def test_a_bird_class_id_that_is_no_number_is_one_line(tmp_path, name, folder):
    (fake_trees.make_cub if name == "cub" else fake_trees.make_nabirds)(tmp_path)
    classes = tmp_path / folder / "classes.txt"
    classes.write_text(classes.read_text() + "x9 Odd bird\n")
    listed_in = "classes.txt"
    if name == "nabirds":  # only the labelled ids are its classes: label an image with it
        labels = tmp_path / folder / "image_class_labels.txt"
        lines = labels.read_text().splitlines()
        labels.write_text("".join(line + "\n" for line in lines[:-1]) + f"{lines[-1].split()[0]} x9\n")
        listed_in = "image_class_labels.txt"
    with pytest.raises(DatasetError) as err:  # a ValueError's traceback before
        load_dataset(name, tmp_path, "train")
    assert str(err.value) == (
        f"{name}: {listed_in} lists class id 'x9', which is no number; the file looks damaged, "
        "re-extract the official archive (see data/README.md)"
    )


def test_nabirds_classes_are_every_labelled_leaf_even_one_only_a_split_holds(tmp_path):
    fake_trees.make_nabirds(tmp_path)
    folder = tmp_path / "nabirds"
    labels = dict(line.split() for line in (folder / "image_class_labels.txt").read_text().splitlines())
    split = folder / "train_test_split.txt"
    rows = [line.split() for line in split.read_text().splitlines()]
    split.write_text("".join(f"{i} {'0' if labels[i] == '1010' else t}\n" for i, t in rows))  # a test-only leaf
    train, test = (load_dataset("nabirds", tmp_path, s) for s in ("train", "test"))
    assert train.class_names == test.class_names == ["Bewick's Wren", "Oak Titmouse", "Red-tailed Hawk (Dark morph)"]
    assert {y for _, y in train.samples} == {0, 1} and 2 in {y for _, y in test.samples}


def test_fetch_itself_never_unpacks_over_a_folder_and_checks_the_archive_holds_the_dataset(tmp_path, monkeypatch):
    from dait_cache.data import download

    root = tmp_path / "root"
    (root / "CUB_200_2011").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"CUB_200_2011 exists but is not a complete dataset.*move it away"):
        download.fetch(DOWNLOADS["cub"], root)
    (root / "CUB_200_2011").rmdir()
    served = tmp_path / "served"
    (served / "other").mkdir(parents=True)
    (served / "other" / "classes.txt").write_text("1 001.Bird\n")
    with tarfile.open(served / "CUB_200_2011.tgz", "w:gz") as tar:
        tar.add(served / "other", arcname="other")
    fake_trees.serve_archives("cub", [served / "CUB_200_2011.tgz"], monkeypatch)
    with pytest.raises(DatasetError, match=r"^cub: the archive did not hold CUB_200_2011/; it is not the official one"):
        download.fetch(DOWNLOADS["cub"], root)
    assert list(root.iterdir()) == []


def test_a_download_that_another_process_completed_first_is_taken_whole(tmp_path, monkeypatch):
    """Two encodes on one --data-root: the second to finish finds the first's tree in place."""
    from dait_cache.data import download

    archives = fake_trees.official_archives("cub", tmp_path / "src", tmp_path / "served")
    fake_trees.serve_archives("cub", archives, monkeypatch)
    root, real = tmp_path / "root", download._unpack

    def unpack_while_another_finishes(spec, path, dest):
        real(spec, path, dest)
        shutil.copytree(dest / "CUB_200_2011", root / "CUB_200_2011")  # the other process's rename
        (root / "CUB_200_2011" / "theirs").write_text("")

    monkeypatch.setattr(download, "_unpack", unpack_while_another_finishes)
    assert download.fetch(DOWNLOADS["cub"], root) == root / "CUB_200_2011"
    assert (root / "CUB_200_2011" / "theirs").exists() and [p.name for p in root.iterdir()] == ["CUB_200_2011"]
    shutil.rmtree(root / "CUB_200_2011")

    def unpack_while_a_file_takes_the_name(spec, path, dest):
        real(spec, path, dest)
        (root / "CUB_200_2011").write_text("")

    monkeypatch.setattr(download, "_unpack", unpack_while_a_file_takes_the_name)
    with pytest.raises(
        DatasetError, match=r"^cub: cannot move the unpacked dataset to .*CUB_200_2011 \(Not a directory\)"
    ) as err:
        download.fetch(DOWNLOADS["cub"], root)
    assert "remove or rename what is at" in str(err.value) and "free some space" not in str(err.value)
    assert [p.name for p in root.iterdir()] == ["CUB_200_2011"]  # the file only: no temp folder left
