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


def test_each_attribute_is_drawn_and_a_subtle_one_changes_only_a_small_part():
    """The task is learnable only if the renderer draws what a class name says: with the same
    random pose, a sibling differing in one attribute differs in its image, there only."""
    base = world.task_classes()[0]  # red circle with one stripe and a white dot

    def draw(seed, **change):
        return np.asarray(world.render({**base, **change}, np.random.default_rng(seed))).astype(int)

    def near(image, rgb, tol=40):
        return int((np.abs(image - np.array(rgb)).sum(-1) < tol).sum())

    def stripe_pixels(image):  # the red body darkened to 30 %
        r, g, b = image[..., 0], image[..., 1], image[..., 2]
        return int(((r >= 35) & (r <= 85) & (g < 35) & (b < 35)).sum())

    for seed in range(3):
        ref = draw(seed)
        changed = {
            (k, v): (np.abs(draw(seed, **{k: v}) - ref).sum(-1) > 30).mean()
            for k, v in [("stripes", "two"), ("marker", "black"), ("shape", "square"), ("color", "blue")]
        }
        assert all(fraction > 0.005 for fraction in changed.values()), changed
        assert changed[("marker", "black")] < 0.03 < changed[("color", "blue")]  # the dot: a small part
        black = draw(seed, marker="black")
        assert near(ref, world.RGB["white"]) > near(black, world.RGB["white"]) + 50
        assert near(black, world.RGB["black"]) > near(ref, world.RGB["black"]) + 50
        counts = [stripe_pixels(draw(seed, stripes=s)) for s in ("no", "one", "two", "three")]
        assert counts[0] == 0 and counts[0] < counts[1] < counts[2] < counts[3], counts
