"""Replayable views: pure, pixel-exact, seeded."""

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from dait_cache.data.views import (
    PARAM_DIM,
    PRESETS,
    ViewParams,
    clean_view_params,
    make_base,
    render_view,
    rotate_bilinear,
    sample_view_params,
)


@pytest.fixture(scope="module")
def base():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    return make_base(img, 256)


def test_make_base_shape_and_dtype(base):
    assert base.shape == (3, 256, 256) and base.dtype == torch.uint8
    gray = make_base(Image.new("L", (50, 70), 7), 64)
    assert gray.shape == (3, 64, 64) and int(gray.max()) == 7


@pytest.mark.parametrize("preset", list(PRESETS))
def test_replay_is_pixel_exact_from_stored_vector(base, preset):
    for view in range(1, 9):
        p = sample_view_params(11, 5, view, preset)
        stored = p.to_vector()
        assert stored.dtype == np.float32 and stored.shape == (PARAM_DIM,)
        again = ViewParams.from_vector(stored)
        assert again == p
        a = render_view(base, p, 224)
        b = render_view(base.clone(), again, 224)
        assert a.dtype == torch.uint8 and a.shape == (3, 224, 224)
        assert torch.equal(a, b)


def test_params_regenerate_from_seed_and_differ_across_views(base):
    assert sample_view_params(1, 2, 3) == sample_view_params(1, 2, 3)
    views = [render_view(base, sample_view_params(1, 2, v), 224) for v in range(1, 6)]
    for i in range(len(views)):
        for j in range(i + 1, len(views)):
            assert not torch.equal(views[i], views[j])
    assert sample_view_params(1, 2, 3) != sample_view_params(1, 3, 3)
    assert sample_view_params(1, 2, 3) != sample_view_params(2, 2, 3)


def test_clean_view_is_the_centre_crop_for_any_seed(base):
    p = sample_view_params(123, 9, 0, "vl2lite")
    assert p == clean_view_params() == sample_view_params(0, 0, 0, "fgvc")
    x = render_view(base, p, 224)
    assert torch.equal(x, base[:, 16:240, 16:240])


def test_views_stay_within_preset_ranges():
    for v in range(1, 200):
        p = sample_view_params(0, v, v, "vl2lite")
        assert 192 / 256 - 1e-6 <= p.height <= 224 / 256 + 1e-6 and p.height == p.width
        assert p.top >= 0 and p.top + p.height <= 1 + 1e-6
        assert -60 <= p.angle <= 60 and 1e-5 <= p.blur_sigma <= 10
        assert sorted(p.order) == [0, 1, 2, 3]
        q = sample_view_params(0, v, v, "fgvc")
        assert 0.5 - 1e-6 <= q.height * q.width <= 1 + 1e-6 and -15 <= q.angle <= 15
        assert q.blur_sigma == 0


def test_view_draws_have_each_presets_distribution(monkeypatch):
    """Over many draws: every crop box inside the image with the preset's area and aspect, flips
    at the preset's rate, jitter factors over their whole documented ranges; a preset whose crops
    cannot fit takes the whole image."""
    from dait_cache.data import views

    monkeypatch.setitem(PRESETS, "rare-flip", replace(PRESETS["fgvc"], name="rare-flip", flip_p=0.2))
    draws = [sample_view_params(3, i, 1 + i % 4, "rare-flip") for i in range(3000)]
    top, left, h, w, flip, hue, bright = (np.array([getattr(p, k) for p in draws]) for k in
                                          ("top", "left", "height", "width", "flip", "hue", "brightness"))  # fmt: skip
    eps = 1e-6
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 1 + eps).all() and (left + w <= 1 + eps).all()
    assert ((h * w >= 0.5 - eps) & (w / h >= 3 / 4 - eps) & (w / h <= 4 / 3 + eps)).all()
    assert (w / h).min() < 0.8 and (w / h).max() > 1.25  # both orientations drawn
    assert abs(flip.mean() - 0.2) < 0.03
    assert (np.abs(hue) <= 0.05).all() and hue.min() < -0.04 and hue.max() > 0.04
    assert (np.abs(bright - 1) <= 0.3 + eps).all() and bright.min() < 0.72 and bright.max() > 1.28
    # the documented seeding: the box is the first draw of SeedSequence([seed, sample, view])
    rng = np.random.default_rng(np.random.SeedSequence([3, 7, 2]))
    assert views._resized_crop_box(rng, PRESETS["fgvc"]) == pytest.approx(
        (lambda p: (p.top, p.left, p.height, p.width))(sample_view_params(3, 7, 2, "fgvc")), abs=1e-7
    )
    # a jitter wider than 1 never draws a negative factor (torchvision's ColorJitter clips at 0 too)
    monkeypatch.setitem(PRESETS, "wild", replace(PRESETS["fgvc"], name="wild", jitter=(1.5, 1.5, 1.5, 0.05)))
    wild = [sample_view_params(3, i, 1, "wild") for i in range(200)]
    assert min(min(p.brightness, p.contrast, p.saturation) for p in wild) >= 0
    too_big = replace(PRESETS["fgvc"], scale=(1.5, 2.0))
    assert views._resized_crop_box(np.random.default_rng(0), too_big) == (0.0, 0.0, 1.0, 1.0)


def test_a_crop_box_rounds_to_pixels_and_stays_inside():
    from dait_cache.data.views import pixel_box

    p = replace(clean_view_params(), top=0.9, left=0.05, height=0.66, width=0.5)
    assert pixel_box(p, 10) == (3, 0, 7, 5)  # 6.6 rounds to 7 rows; a top of 9 would leave the image
    assert pixel_box(replace(p, top=0.0, height=0.01), 10) == (0, 0, 1, 5)  # at least one pixel
    assert pixel_box(replace(p, height=1.2), 10)[::2] == (0, 10)


def test_params_are_resolution_independent():
    # One record renders the same picture at any base size: a 224 px view of a 256 px base,
    # shrunk to 64 px, matches the 64 px view of a 72 px base of the same image.
    yy, xx = np.mgrid[0:360, 0:360]
    img = Image.fromarray(np.stack([xx * 255 // 359, yy * 255 // 359, (xx + yy) * 255 // 718], -1).astype(np.uint8))
    large, small = make_base(img, 256), make_base(img, 72)
    diff = {}
    for view in (2, 3):
        p = sample_view_params(0, 1, view, crop_fraction=224 / 256)
        shrunk = F.resize(render_view(large, p, 224), [64, 64], antialias=True).float()
        diff[view] = (
            (shrunk - render_view(small, sample_view_params(0, 1, 2, crop_fraction=224 / 256), 64).float()).abs().mean()
        )
    assert diff[2] < 4  # same record: the same pixels, up to resampling
    assert diff[3] > 4 * diff[2]  # another record: visibly other pixels


def test_render_rejects_float_input(base):
    with pytest.raises(ValueError, match="uint8"):
        render_view(base.float(), clean_view_params(), 224)


# Another process with another BLAS code path: MKL's AVX2 path is the one it takes on AMD CPUs, where
# torchvision's float32 bmm-built rotation grid rounded otherwise (on an AVX-512 Intel machine this
# fails with torchvision's rotate). Every rotated view of both presets must come out byte-identical.
def test_replay_is_identical_in_another_process(base, tmp_path):
    np.save(tmp_path / "base.npy", base.numpy())
    code = (
        "import numpy as np, torch\n"
        "from tests.test_views import rotated_views\n"
        f"np.save(r'{tmp_path / 'out.npy'}', rotated_views(torch.from_numpy(np.load(r'{tmp_path / 'base.npy'}'))).numpy())\n"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        env={**os.environ, "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
        cwd=Path(__file__).parents[1],
    )
    assert np.array_equal(np.load(tmp_path / "out.npy"), rotated_views(base).numpy())


def rotated_views(b: torch.Tensor) -> torch.Tensor:
    """Views 1-5 of three samples in every preset (each view is rotated)."""
    return torch.stack(
        [render_view(b, sample_view_params(7, i, v, p), 224) for p in PRESETS for i in range(3) for v in range(1, 6)]
    )


def test_rotation_is_torchvisions_up_to_rounding():
    # the same rotation as torchvision's rotate (direction, centre, black fill): a pixel differs by
    # at most one level, and only where the two grids round a sample point differently
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (3, 96, 80), dtype=np.uint8))
    for angle in (-60.0, -7.5, 13.7, 45.0):
        ours = rotate_bilinear(x, angle).int()
        theirs = F.rotate(x, angle, interpolation=InterpolationMode.BILINEAR).int()
        assert (ours - theirs).abs().max() <= 1
        assert (ours != theirs).float().mean() < 1e-3
    assert torch.equal(rotate_bilinear(x, 0.0), x)


def test_a_worker_is_silent_when_the_training_process_hangs_up_on_its_fd_sharer(capfd):
    from dait_cache.data.workers import worker_init

    def report(exc: str, filename: str) -> None:
        # what multiprocessing's resource-sharer thread does with an error: sys.excepthook
        scope: dict = {}
        exec(compile(f"def serve():\n    raise {exc}\n", filename, "exec"), scope)
        try:
            scope["serve"]()
        except BaseException:
            sys.excepthook(*sys.exc_info())

    hook, term, threads = sys.excepthook, signal.getsignal(signal.SIGTERM), torch.get_num_threads()
    try:
        worker_init(0)
        # a stopped training process hangs up mid-handshake: multiprocessing's thread says nothing
        sharer = "/usr/lib/python3.11/multiprocessing/resource_sharer.py"
        report("ConnectionResetError(104, 'Connection reset by peer')", sharer)
        report("BrokenPipeError(32, 'Broken pipe')", sharer)
        report("EOFError()", sharer)
        assert capfd.readouterr().err == ""
        # anything else still prints
        report("ValueError('a bug')", sharer)
        report("BrokenPipeError(32, 'Broken pipe')", "/work/dait_cache/some_module.py")
        err = capfd.readouterr().err
        assert "ValueError: a bug" in err and "BrokenPipeError" in err and "some_module.py" in err
    finally:
        sys.excepthook = hook
        signal.signal(signal.SIGTERM, term)
        torch.set_num_threads(threads)


def test_the_decode_probe_sees_decoding_and_resampling(monkeypatch):
    from PIL import Image

    from dait_cache.data import base, views

    probe = views.decode_probe()
    assert len(probe) == 16 and views.decode_probe.__wrapped__() == probe  # the same here, every time
    real_to_rgb = base._to_rgb

    def rounds_one_pixel_up(im):  # a JPEG library that rounds one pixel of its IDCT otherwise
        rgb = np.asarray(real_to_rgb(im)).copy()
        rgb[3, 5, 1] = min(255, int(rgb[3, 5, 1]) + 1)
        return Image.fromarray(rgb)

    monkeypatch.setattr(base, "_to_rgb", rounds_one_pixel_up)
    assert views.decode_probe.__wrapped__() != probe
    monkeypatch.setattr(base, "_to_rgb", real_to_rgb)
    real_base = views.make_base
    # a Pillow whose resampling differs (here: bilinear for bicubic)
    monkeypatch.setattr(views, "make_base", lambda im, side: real_base(im.resize((side, side), Image.BILINEAR), side))
    assert views.decode_probe.__wrapped__() != probe


def test_a_manifest_before_the_probes_replays_and_another_machines_probe_is_named():
    """Caches encoded before the render and decode probes came in hold nothing to compare: they
    replay as before; a probe of another machine is named beside this one's."""
    from dait_cache.cache.reader import decode_mismatch, render_mismatch
    from dait_cache.data import views

    old = {"views": {"base_size": 256}}
    assert render_mismatch(old) is None and decode_mismatch(old) is None
    same = {"views": {"render_probe": views.render_probe(), "decode_probe": views.decode_probe()}}
    assert render_mismatch(same) is None and decode_mismatch(same) is None
    other = {"views": {"render_probe": "f" * 16, "decode_probe": "e" * 16, "decoder": "Pillow 1.0 (libjpeg 6b)"}}
    assert f"render probe {'f' * 16}, here {views.render_probe()}" in render_mismatch(other)
    said = decode_mismatch(other)
    assert f"decode probe {'e' * 16}, Pillow 1.0 (libjpeg 6b); here {views.decode_probe()}" in said


def _reference_view(base, p, size):
    """docs/design.md section 3 step by step with torchvision's own operations: crop resized
    (bilinear, antialiased), flip, rotation, colour jitter in the record's order, blur (kernel 5)."""
    side = base.shape[-1]
    top, left, h, w = (round(v * side) for v in (p.top, p.left, p.height, p.width))
    x = F.resized_crop(base, top, left, h, w, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    if p.flip:
        x = F.horizontal_flip(x)
    x = rotate_bilinear(x, p.angle)  # torchvision's rotation up to rounding: test_rotation_is_torchvisions...
    jitter = [(F.adjust_brightness, p.brightness), (F.adjust_contrast, p.contrast),
              (F.adjust_saturation, p.saturation), (F.adjust_hue, p.hue)]  # fmt: skip
    for k in p.order:
        x = jitter[k][0](x, jitter[k][1])
    return F.gaussian_blur(x, [5, 5], [p.blur_sigma] * 2) if p.blur_sigma else x


def test_a_view_renders_in_the_documented_order_with_torchvisions_operations(base):
    full = ViewParams(0.1, 0.2, 0.6, 0.5, 1.0, 0.0, 1.2, 0.8, 1.3, 0.05, 3.0, 1.0, 0.0, 2.0, 1.5)
    turned = replace(full, flip=0.0, angle=20.0, order0=0.0, order1=1.0, order2=2.0, order3=3.0, blur_sigma=0.0)
    for p in (full, turned, replace(clean_view_params(), hue=0.1)):
        assert torch.equal(render_view(base, p, 64), _reference_view(base, p, 64)), p
    # each step counts: the jitter order, the hue, the flip and the blur change the pixels
    others = (replace(full, order0=2.0, order3=3.0), replace(full, hue=0.0), replace(full, flip=0.0),
              replace(full, blur_sigma=0.0))  # fmt: skip
    assert all(not torch.equal(render_view(base, q, 64), render_view(base, full, 64)) for q in others)


def test_vl2lite_crops_a_crop_and_every_jitter_order_is_drawn():
    draws = [sample_view_params(0, i, 1, "vl2lite") for i in range(2000)]
    # the second crop moves inside the first: boxes start beyond the first crop's own range
    assert max(p.top for p in draws) > 1 - 224 / 256 and max(p.left for p in draws) > 1 - 224 / 256
    assert len({p.order for p in draws}) == 24


def test_the_render_probe_sees_every_presets_operations(monkeypatch):
    from dait_cache.data import views

    probe = views.render_probe()
    assert len(probe) == 16 and views.render_probe.__wrapped__() == probe
    monkeypatch.setattr(views, "BLUR_KERNEL", 3)  # only vl2lite's views are blurred
    assert views.render_probe.__wrapped__() != probe


def test_pixels_are_normalised_with_the_consumers_statistics():
    from dait_cache.data.views import normalize_pixels

    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    got = normalize_pixels(pixels, (0.5, 0.2, 0.0), (0.5, 0.1, 2.0)).flatten().tolist()
    assert got == pytest.approx([(0 - 0.5) / 0.5, (0.2 - 0.2) / 0.1, (1.0 - 0.0) / 2.0], abs=1e-6)
