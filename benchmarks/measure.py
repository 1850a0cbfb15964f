"""The measurements behind ``python -m benchmarks.run``; each returns plain numbers.

Every ratio compares two things measured in the same process, on the same device, with the same
batch size; rates are medians over repeats unless a field says otherwise.
"""

from __future__ import annotations

import functools
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dait_cache.cache.reader import Cache
from dait_cache.config import EncodeConfig, TrainConfig
from dait_cache.data import load_dataset
from dait_cache.data.views import PRESETS, make_base, render_view, sample_view_params
from dait_cache.dist import DistInfo
from dait_cache.encode import encode
from dait_cache.encode_loader import ViewDataset
from dait_cache.models import create_backbone, feature_shape
from dait_cache.train.data import epoch_plan
from dait_cache.train.engine import RunSpec, build_step
from dait_cache.train.loop import (
    TEST,
    TRAIN,
    autocast_for,
    evaluate,
    make_batch,
    prepare_data,
    train_one_epoch,
    train_step,
)
from dait_cache.train.objectives import FeatureDistill, Objective, VLMAlignment
from dait_cache.train.teacher import alignment_objective


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def median(values) -> float:
    return float(statistics.median(values))


# ---------------------------------------------------------------- data


def make_jpeg_folder(root: Path, n_train: int, n_test: int, classes: int, size=(500, 375), seed: int = 0) -> Path:
    """A ``folder:`` dataset of real JPEGs (smooth colour fields plus noise, typical FGVC size)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            c = i % classes
            low = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
            img = Image.fromarray(low).resize(size, Image.BICUBIC)
            noisy = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, size=(size[1], size[0], 3))
            path = root / split / f"class_{c:03d}" / f"{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return root


# ---------------------------------------------------------------- (1) encode vs bare forward


def encode_vs_forward(vlm, cfg: EncodeConfig, repeats: int = 3) -> tuple[dict, Cache]:
    """views/s of the encode pipeline (steady state: after its first batch, until its last) vs
    views/s of ``VLM.encode_images`` on the same number of pre-rendered views, same batch."""
    marks: list[tuple[float, str, int]] = []
    result = encode(cfg, progress=lambda split, done, total: marks.append((time.perf_counter(), split, done)), vlm=vlm)
    offset, last, cumulative = 0, {}, []
    for t, split, done in marks:  # views done counted across both splits
        if split not in last and last:
            offset += max(last.values())
        last[split] = done
        cumulative.append((t, offset + done))
    (t_first, v_first), (t_last, v_last) = cumulative[0], cumulative[-1]
    pipeline = (v_last - v_first) / (t_last - t_first)

    ds = load_dataset(cfg.dataset, cfg.data_root, "train")
    views = cfg.views + 1
    per_batch = max(1, cfg.batch_size // views) * views
    vd = ViewDataset(ds, cfg, views)
    pool = torch.cat([vd[i % len(ds)]["views"] for i in range(2 * per_batch // views)])
    pool = pool.pin_memory() if vlm.device.type == "cuda" else pool
    batches = [pool[:per_batch], pool[per_batch:]]
    n_batches = max(3, result.views_encoded // per_batch // repeats)
    for b in batches[:2]:
        vlm.encode_images(b)  # warm-up
    rates = []
    for _ in range(repeats):
        dt = timed(lambda: [vlm.encode_images(batches[j % len(batches)]) for j in range(n_batches)], vlm.device)
        rates.append(n_batches * per_batch / dt)
    forward = median(rates)
    return {
        "encode_views_per_s": round(pipeline, 1),
        "forward_views_per_s": round(forward, 1),
        "encode_over_forward": round(pipeline / forward, 3),
        "views_encoded": result.views_encoded,
        "encode_wall_s_including_setup": round(result.seconds, 1),
        "batch_views": per_batch,
        "method": "encode: one run, steady state after its first batch; forward: median of "
        f"{repeats} runs of {n_batches} batches",
    }, Cache(cfg.cache_dir)


# ---------------------------------------------------------------- training set-up


@dataclass
class Trainee:
    spec: RunSpec
    data: object
    forward: object
    opt: object
    device: torch.device


def trainee(cache: Cache, cfg: TrainConfig, run_dir: Path, objective_for: Callable) -> Trainee:
    torch.manual_seed(0)
    model = create_backbone(cfg.arch, cache.num_classes, pretrained=False)
    spec = RunSpec(cfg, run_dir, cache, model, objective_for(model))
    device = torch.device(cfg.device)
    data = prepare_data(cache, cfg, device)
    _, forward, opt, _ = build_step(spec, device, DistInfo())
    forward.train()
    return Trainee(spec, data, forward, opt, device)


def epoch_seconds(t: Trainee, epochs: int) -> list[float]:
    """Seconds of each training epoch (epoch 0, a warm-up, excluded)."""
    out = []
    for e in range(epochs):
        row = train_one_epoch(t.forward, t.opt, t.data, t.spec.model, t.spec.cfg, e, t.device, DistInfo())
        if e > 0:
            out.append(row["train_seconds"])
    return out


def resident_batches(t: Trainee, epoch: int = 1) -> list[dict]:
    """One epoch's batches rendered once and kept on the device: the input side costs nothing."""
    cfg = t.spec.cfg
    rows, views = epoch_plan(t.data.train_rows, t.data.num_views, cfg.seed, epoch)
    t.data.loader.batch_sampler.set_plan(TRAIN, rows, views, cfg.batch_size, drop_last=True)
    return [make_batch(p, i, t.data, t.spec.model, t.device) for p, i in t.data.loader]


def compute_seconds(t: Trainee, batches: list[dict], repeats: int) -> list[float]:
    autocast = autocast_for(t.device)
    train_step(t.forward, t.opt, batches[0], 1, autocast)  # warm-up
    return [
        timed(lambda: [train_step(t.forward, t.opt, b, 1, autocast) for b in batches], t.device) for _ in range(repeats)
    ]


def count_syncs(t: Trainee) -> int:
    """Host-device synchronisations in one epoch (CUDA's sync debug mode; -1 off CUDA)."""
    if t.device.type != "cuda":
        return -1
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_one_epoch(t.forward, t.opt, t.data, t.spec.model, t.spec.cfg, 5, t.device, DistInfo())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


# ---------------------------------------------------------------- (2) teacher DAIT vs CE


def teacher_dait_over_ce(cache: Cache, cfg: TrainConfig, run_dir: Path, epochs: int) -> dict:
    ce = trainee(cache, cfg, run_dir, lambda m: Objective())
    ce_s = median(epoch_seconds(ce, epochs))
    dait = trainee(cache, cfg, run_dir, lambda m: alignment_objective(cfg, cache, m.num_features))
    dait_s = median(epoch_seconds(dait, epochs))
    t_eval = timed(
        lambda: (
            evaluate(dait.spec.model, dait.data, TRAIN, dait.data.val_rows, cfg, dait.device),
            evaluate(dait.spec.model, dait.data, TEST, dait.data.test_rows, cfg, dait.device),
        ),
        dait.device,
    )
    n = len(dait.data.train_rows) // cfg.batch_size * cfg.batch_size
    return {
        "arch": cfg.arch,
        "batch": cfg.batch_size,
        "ce_s_per_epoch": round(ce_s, 3),
        "dait_s_per_epoch": round(dait_s, 3),
        "teacher_dait_over_ce": round(dait_s / ce_s, 3),
        "dait_images_per_s": round(n / dait_s, 1),
        "eval_val_test_s": round(t_eval, 3),
        "eval_over_epoch": round(t_eval / dait_s, 3),
    }


# ---------------------------------------------------------------- (3) student epoch vs compute


def student_epoch_over_compute(
    cache: Cache, cfg: TrainConfig, teacher_arch: str, run_dir: Path, epochs: int, repeats: int, syncs: bool = False
) -> dict:
    """DAIT-F student (frozen teacher of random weights: speed does not depend on them)."""
    size = int(cache.manifest["views"]["image_size"])
    torch.manual_seed(0)
    teacher = create_backbone(teacher_arch, cache.num_classes, pretrained=False)
    t_channels = feature_shape(teacher, size)[0]

    def objective(model):
        obj = FeatureDistill(feature_shape(model, size)[0], t_channels)
        obj.attach_teacher(teacher)
        return obj

    t = trainee(cache, cfg, run_dir, objective)
    epoch_s = median(epoch_seconds(t, epochs))
    batches = resident_batches(t)
    compute_s = median(compute_seconds(t, batches, repeats))
    n_epoch = len(t.data.train_rows) // cfg.batch_size * cfg.batch_size
    epoch_rate = n_epoch / epoch_s
    compute_rate = sum(len(b["label"]) for b in batches) / compute_s
    row = {
        "arch": cfg.arch,
        "batch": cfg.batch_size,
        "method": "dait-f",
        "teacher": teacher_arch,
        "epoch_images_per_s": round(epoch_rate, 1),
        "compute_images_per_s": round(compute_rate, 1),
        "student_epoch_over_compute": round(epoch_rate / compute_rate, 3),
    }
    if syncs:
        row["syncs_per_epoch"] = count_syncs(t)
        row["batches_per_epoch"] = len(batches)
    del batches
    return row


# ---------------------------------------------------------------- (4) render capacity


def render_capacity(image_size: int, base_size: int, jpeg: Path, n: int = 100) -> dict:
    """Views/s of ``render_view`` per CPU core per preset, and decode + base per core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = make_base(Image.open(jpeg), base_size)
        out = {}
        for name in PRESETS:
            params = [
                sample_view_params(0, i, 1 + i % 16, name, crop_fraction=image_size / base_size) for i in range(n)
            ]
            render_view(base, params[0], image_size)
            t0 = time.perf_counter()
            for p in params:
                render_view(base, p, image_size)
            out[name] = round(n / (time.perf_counter() - t0), 1)
        m = max(10, n // 5)
        t0 = time.perf_counter()
        for _ in range(m):
            with Image.open(jpeg) as im:
                make_base(im, base_size)
        decode = m / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return {"render_views_per_s_per_core": out, "decode_base_images_per_s_per_core": round(decode, 1)}


def cores_needed(
    render: dict, preset: str, encode_views_per_s: float, views_per_image: int, student_compute_images_per_s: float
) -> dict:
    r = render["render_views_per_s_per_core"][preset]
    d = render["decode_base_images_per_s_per_core"]
    images_per_s = encode_views_per_s / views_per_image
    return {
        "encode": round(images_per_s * (1 / d + views_per_image / r), 2),
        "training_from_image_cache": round(student_compute_images_per_s / r, 2),
    }


# ---------------------------------------------------------------- (5) cached vs online VLM


def cached_over_online(vlm, cache: Cache, cfg: TrainConfig, run_dir: Path, steps: int) -> dict:
    """One DAIT teacher step reading the cache vs the same step with the VLM run on the batch
    (VL2Lite's way). Medians over ``steps`` steps after a warm-up."""
    dim = int(cache.manifest["vlm"]["embed_dim"])

    def objective(m):
        if dim == vlm.embed_dim:
            return alignment_objective(cfg, cache, m.num_features)
        # the cache came from another VLM: same lookup, at this VLM's width
        return VLMAlignment(vlm.embed_dim, m.num_features, torch.randn(cache.num_classes, vlm.embed_dim))

    t = trainee(cache, cfg, run_dir, objective)
    if dim != vlm.embed_dim:
        n, v, _ = t.data.vlm_emb.shape
        t.data.vlm_emb = torch.randn(n, v, vlm.embed_dim, device=t.device).half()
    batches = resident_batches(t)[:steps]
    autocast = autocast_for(t.device)

    def online(batch):
        with torch.no_grad(), vlm._autocast():
            v = vlm.model.encode_image(vlm.normalize(batch["pixels"]), normalize=False).float()
        return train_step(t.forward, t.opt, {**batch, "vlm_img": v}, 1, autocast)

    cached_s, online_s = [], []
    train_step(t.forward, t.opt, batches[0], 1, autocast)
    online(batches[0])
    for b in batches * max(1, steps // len(batches)):
        cached_s.append(timed(functools.partial(train_step, t.forward, t.opt, b, 1, autocast), t.device))
        online_s.append(timed(functools.partial(online, b), t.device))
    c, o = median(cached_s), median(online_s)
    return {
        "vlm": vlm.name,
        "teacher": cfg.arch,
        "batch": cfg.batch_size,
        "cached_step_s": round(c, 4),
        "online_step_s": round(o, 4),
        "cached_over_online_speedup": round(o / c, 2),
    }


# ---------------------------------------------------------------- (6) GPU efficiency


def vlm_flops_per_view(vlm, image_size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter:
        vlm.encode_images(x)
    return counter.get_total_flops() / 2


def matmul_peak_tflops(device: torch.device, n: int = 8192, iters: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    dt = timed(lambda: [a @ b for _ in range(iters)], device)
    return 2 * n**3 * iters / dt / 1e12


# ---------------------------------------------------------------- torch.compile


def compile_effect(vlm, image_size: int, batch: int, repeats: int = 3, n_batches: int = 8) -> dict:
    """Bare VLM forward views/s with and without torch.compile, and how far the values move."""
    x = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8)
    plain = vlm.encode_images(x)

    def rate():
        return batch * n_batches / timed(lambda: [vlm.encode_images(x) for _ in range(n_batches)], vlm.device)

    eager = median([rate() for _ in range(repeats)])
    t0 = time.perf_counter()
    vlm.compile()
    compiled_out = vlm.encode_images(x)
    compile_s = time.perf_counter() - t0
    compiled = median([rate() for _ in range(repeats)])
    vlm._image_fn = None
    rel = float((compiled_out - plain).norm() / plain.norm())
    return {
        "eager_views_per_s": round(eager, 1),
        "compiled_views_per_s": round(compiled, 1),
        "compiled_over_eager": round(compiled / eager, 3),
        "compile_seconds": round(compile_s, 1),
        "relative_difference": rel,
        "same_dtype": compiled_out.dtype == plain.dtype,
    }
