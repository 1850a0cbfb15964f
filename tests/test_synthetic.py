"""The synthetic world: deterministic, fine-grained, prompt-ready."""

import subprocess
import sys

import numpy as np

from dait_cache.data import load_dataset, world


def test_task_has_24_classes_whose_neighbours_differ_in_one_attribute():
    classes = world.task_classes()
    assert len(classes) == 24 and len(set(map(str, classes))) == 24
    for a, b in zip(classes, classes[1:]):
        diffs = [k for k in a if a[k] != b[k]]
        assert len(diffs) >= 1
    # every class has a sibling that differs only in a subtle attribute
    for a in classes:
        assert any(
            sum(a[k] != b[k] for k in a) == 1 and next(k for k in a if a[k] != b[k]) in ("stripes", "marker")
            for b in classes
        )
    names = [world.class_name(c) for c in classes]
    assert len(set(names)) == len(names)
    assert names[0] == "red circle with one stripe and a white dot"


def test_broader_pool_contains_the_task():
    pool = world.all_combinations()
    assert len(pool) == 6 * 6 * 4 * 4
    assert all(c in pool for c in world.task_classes())
    assert world.caption(pool[0], 1).startswith("a photo of a red circle with no stripes")


def test_dataset_is_balanced_and_deterministic():
    ds = load_dataset("synthetic", split="train")
    assert len(ds) == 960 and ds.num_classes == 24
    assert np.bincount(ds.labels).tolist() == [40] * 24
    a, b = np.asarray(ds.load_image(17)), np.asarray(ds.load_image(17))
    assert np.array_equal(a, b) and a.shape == (96, 96, 3)
    assert not np.array_equal(a, np.asarray(ds.load_image(17 + 24)))  # same class, new nuisance
    test = load_dataset("synthetic", split="test")
    assert len(test) == 480
    assert not np.array_equal(a, np.asarray(test.load_image(17)))


def test_deterministic_across_processes(tmp_path):
    code = (
        "import numpy as np; from dait_cache.data import load_dataset\n"
        "ds = load_dataset('synthetic', split='test')\n"
        f"np.save(r'{tmp_path / 'x.npy'}', np.stack([np.asarray(ds.load_image(i)) for i in (0, 5, 99)]))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    ds = load_dataset("synthetic", split="test")
    here = np.stack([np.asarray(ds.load_image(i)) for i in (0, 5, 99)])
    assert np.array_equal(np.load(tmp_path / "x.npy"), here)
