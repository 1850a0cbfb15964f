"""Speed as ratios side by side: ``python -m benchmarks.run [--quick] [--device cuda] [--out FILE]``.

1. encode pipeline / bare VLM forward (views/s; goal >= 0.9: I/O and rendering hidden)
2. teacher DAIT epoch / CE-only epoch, same teacher and cache (goal <= 1.10)
3. student epoch / pure compute on device-resident batches (goal >= 0.8: view replay keeps up)
4. render capacity per CPU core and preset, and the cores (1) and (3) need
5. cached vs online VLM: one teacher step reading the cache vs running the VLM on the batch
6. on a GPU: the VLM's achieved TFLOP/s and its fraction of a measured bf16 matmul peak

Each section writes the JSON file again as soon as it finishes, so a run cut short keeps what it
measured. ``--quick`` is the small CPU profile the tests run (well under 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dait_cache import provenance
from dait_cache.cache.manifest import read_manifest
from dait_cache.cache.view_store import build_view_store, has_store
from dait_cache.config import EncodeConfig, TrainConfig
from dait_cache.io import atomic_write_json
from dait_cache.minivlm import BASE_SIZE, IMAGE_SIZE
from dait_cache.vlm import RANDOM_WEIGHTS, load_vlm

from . import measure as M

GOALS = {
    "encode_over_forward": (">=", 0.9),
    "teacher_dait_over_ce": ("<=", 1.10),
    "student_epoch_over_compute": (">=", 0.8),
}


@dataclass(frozen=True)
class Profile:
    vlm: str
    online_vlm: str  # section 5 on CPU: a mid-size architecture
    image_size: int
    base_size: int
    images: int  # training images; a quarter as many test images
    classes: int
    views: int
    encode_batch: int
    teacher: str
    students: tuple[str, ...]
    batches: tuple[int, ...]
    epochs: int  # per training measurement, the first one a warm-up
    repeats: int
    render_n: int


QUICK = Profile(
    vlm="bundled",
    online_vlm="convnext_base",
    image_size=IMAGE_SIZE,
    base_size=BASE_SIZE,
    images=40,
    classes=4,
    views=2,
    encode_batch=30,
    teacher="regnety_004",
    students=("resnet18", "mobilenetv2"),
    batches=(16,),
    epochs=2,
    repeats=2,
    render_n=20,
)
FULL = Profile(
    vlm="convnext_xxlarge",
    online_vlm="convnext_xxlarge",
    image_size=224,
    base_size=256,
    images=1536,
    classes=16,
    views=8,
    encode_batch=256,
    teacher="regnety_016",
    students=("resnet18", "mobilenetv2", "efficientnet_b0", "shufflenetv2"),
    batches=(32, 256),
    epochs=4,
    repeats=3,
    render_n=100,
)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), {os.cpu_count()} CPU cores, torch {torch.__version__}"
    return f"CPU {provenance.device_name('cpu')} ({os.cpu_count()} cores), torch {torch.__version__}"


def load(name: str, device: str):
    if name == "bundled":
        from dait_cache.minivlm import bundled_vlm_id

        return load_vlm(bundled_vlm_id(), None, device)
    return load_vlm(name, RANDOM_WEIGHTS, device)  # random weights: speed does not depend on them


SECTIONS = ("encode", "store", "teacher", "students", "render", "online", "gpu", "compile")


class _Bench:
    """One benchmark run: each section measures into ``res``, which is rewritten to ``out`` after
    every section so a run cut short keeps what it measured."""

    def __init__(self, p: Profile, device: torch.device, workers: int, work: Path, out: Path):
        self.p, self.device, self.workers, self.work, self.out = p, device, workers, work, out
        self.res: dict = {"device": device_name(device), "profile": p.__dict__, "workers": workers, "sections_s": {}}
        self.res["sections_failed"] = {}
        self.data = M.make_jpeg_folder(work / "jpegs", p.images, max(4, p.images // 4), p.classes)
        self.vlm = load(p.vlm, device.type)
        self.tcfg = TrainConfig(
            workdir=str(work / "ws"), arch=p.teacher, device=device.type, workers=workers, pretrained=False, epochs=100
        )
        self.cache = None

    def section(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # one broken section must not lose the others' numbers
            self.res["sections_failed"][name] = f"{type(exc).__name__}: {exc}"[:400]
            traceback.print_exc()
        self.res["sections_s"][name] = round(time.perf_counter() - t0, 1)
        atomic_write_json(self.out, self.res)
        print(f"[bench] {name}: {self.res['sections_s'][name]} s", flush=True)

    def encode(self) -> None:
        p = self.p
        ecfg = EncodeConfig(
            dataset=f"folder:{self.data}",
            workdir=str(self.work / "ws"),
            vlm=self.vlm.name,
            pretrained=self.vlm.pretrained,
            views=p.views,
            image_size=p.image_size,
            base_size=p.base_size,
            batch_size=p.encode_batch,
            workers=self.workers,
            device=self.device.type,
            shard_size=256,
        )
        self.res["encode"], self.cache = M.encode_vs_forward(self.vlm, ecfg, p.repeats)
        self.res["encode_over_forward"] = self.res["encode"]["encode_over_forward"]

    def view_store(self) -> None:
        t0 = time.perf_counter()
        nbytes = build_view_store(self.cache, self.workers)
        self.res["view_store"] = {"bytes": nbytes, "build_s": round(time.perf_counter() - t0, 1)}

    def teacher(self) -> None:
        p = self.p
        rows = [
            M.teacher_dait_over_ce(self.cache, replace(self.tcfg, batch_size=b), self.work / "run", p.epochs)
            for b in p.batches
        ]
        self.res["teacher"] = rows
        self.res["teacher_dait_over_ce"] = max(r["teacher_dait_over_ce"] for r in rows)

    def students(self) -> None:
        p, cache, rows = self.p, self.cache, []
        stored = has_store(cache.dir, cache.manifest)
        for b in p.batches:
            for i, arch in enumerate(p.students):
                # with a view store, the first arch is measured rendering too: both in one run
                for use_store in (True, False) if stored and i == 0 else (stored,):
                    cache.manifest.pop("view_store", None) if not use_store else None
                    row = M.student_epoch_over_compute(
                        cache,
                        replace(self.tcfg, arch=arch, batch_size=b),
                        p.teacher,
                        self.work / "run",
                        p.epochs,
                        p.repeats,
                        syncs=i == 0,
                    )
                    rows.append({**row, "views": "store" if use_store else "rendered"})
                    cache.manifest = read_manifest(cache.dir)
                    atomic_write_json(self.out, {**self.res, "students": rows})
        self.res["students"] = rows
        self.res["student_epoch_over_compute"] = {
            f"{r['arch']}@{r['batch']}" + ("" if r["views"] == "rendered" else "+store"): r[
                "student_epoch_over_compute"
            ]
            for r in rows
        }

    def render(self) -> None:
        p, res = self.p, self.res
        jpeg = next((self.data / "train").rglob("*.jpg"))
        render = M.render_capacity(224, 256, jpeg, p.render_n)
        res["render"] = render
        res["render_views_per_s_per_core"] = render["render_views_per_s_per_core"]
        best_compute = max((r["compute_images_per_s"] for r in res.get("students", [])), default=0.0)
        if "encode" in res and p.image_size == 224:
            res["cores_needed"] = M.cores_needed(
                render, "fgvc", res["encode"]["forward_views_per_s"], p.views + 1, best_compute
            )

    def online(self) -> None:
        p = self.p
        online = self.vlm if p.online_vlm == p.vlm else load(p.online_vlm, self.device.type)
        self.res["cached_vs_online"] = M.cached_over_online(
            online,
            self.cache,
            replace(self.tcfg, batch_size=p.batches[0]),
            self.work / "run",
            steps=max(4, p.repeats * 2),
        )
        self.res["cached_over_online_speedup"] = self.res["cached_vs_online"]["cached_over_online_speedup"]

    def gpu(self) -> None:
        flops = M.vlm_flops_per_view(self.vlm, self.p.image_size)
        peak = M.matmul_peak_tflops(self.device)
        achieved = flops * self.res["encode"]["forward_views_per_s"] / 1e12
        self.res["gpu"] = {
            "vlm_gflops_per_view": round(flops / 1e9, 1),
            "vlm_tflops_achieved": round(achieved, 1),
            "bf16_matmul_peak_tflops": round(peak, 1),
            "fraction_of_peak": round(achieved / peak, 3),
        }

    def compile(self) -> None:
        self.res["compile"] = M.compile_effect(self.vlm, self.p.image_size, self.res["encode"]["batch_views"])


def run(p: Profile, device: torch.device, workers: int, work: Path, out: Path, only: tuple[str, ...]) -> dict:
    """Measure the sections named in ``only`` (encode always runs: it makes the cache)."""
    b = _Bench(p, device, workers, work, out)
    b.section("encode_over_forward", b.encode)
    sections = (
        ("store", "view_store", b.view_store),
        ("teacher", "teacher_dait_over_ce", b.teacher),
        ("students", "student_epoch_over_compute", b.students),
        ("render", "render", b.render),
        ("online", "cached_over_online", b.online),
        ("gpu", "gpu_efficiency", b.gpu),
        ("compile", "compile", b.compile),
    )
    for key, name, fn in sections:
        # every section reads the cache that encode made
        if key in only and (key != "gpu" or device.type == "cuda") and b.cache is not None:
            b.section(name, fn)
    b.res["goals"] = goals(b.res)
    atomic_write_json(out, b.res)
    return b.res


def goals(res: dict) -> dict:
    out = {}
    for key, (op, goal) in GOALS.items():
        v = res.get(key)
        values = list(v.values()) if isinstance(v, dict) else [v] if v is not None else []
        if values:
            worst = min(values) if op == ">=" else max(values)
            out[key] = {"worst": worst, "goal": f"{op} {goal}", "met": worst >= goal if op == ">=" else worst <= goal}
    return out


def _row(label: str, value: float, absolute: str = "", digits: int = 3) -> str:
    return f"{label:<48}{value:>10.{digits}f}   {absolute}".rstrip()


def table(res: dict) -> str:
    lines = [f"device: {res['device']}", f"{'ratio':<48}{'value':>10}   absolute"]
    e = res.get("encode")
    if e:
        lines.append(
            _row(
                "encode / bare VLM forward",
                e["encode_over_forward"],
                f"{e['encode_views_per_s']} vs {e['forward_views_per_s']} views/s",
            )
        )
    for r in res.get("teacher", []):
        lines.append(
            _row(
                f"teacher DAIT / CE epoch @{r['batch']}",
                r["teacher_dait_over_ce"],
                f"{r['dait_s_per_epoch']} vs {r['ce_s_per_epoch']} s/epoch ({r['arch']}); "
                f"val+test eval {r['eval_val_test_s']} s",
            )
        )
    for r in res.get("students", []):
        store = "+store" if r.get("views") == "store" else ""
        lines.append(
            _row(
                f"student epoch / compute {r['arch']}@{r['batch']}{store}",
                r["student_epoch_over_compute"],
                f"{r['epoch_images_per_s']} vs {r['compute_images_per_s']} images/s",
            )
        )
    c = res.get("cached_vs_online")
    if c:
        lines.append(
            _row(
                "cached / online VLM step speed-up",
                c["cached_over_online_speedup"],
                f"{c['cached_step_s']} vs {c['online_step_s']} s/step ({c['vlm']}, batch {c['batch']})",
                digits=2,
            )
        )
    for preset, v in res.get("render_views_per_s_per_core", {}).items():
        lines.append(_row(f"render {preset} 224px views/s/core", v, digits=1))
    g = res.get("gpu")
    if g:
        lines.append(
            _row(
                "VLM fraction of bf16 matmul peak",
                g["fraction_of_peak"],
                f"{g['vlm_tflops_achieved']} of {g['bf16_matmul_peak_tflops']} TFLOP/s",
            )
        )
    for name, err in res.get("sections_failed", {}).items():
        lines.append(f"FAILED {name}: {err}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CPU, under 3 minutes)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--workers", type=int, default=None, help="loader workers [default: cores - 2, at least 1]")
    ap.add_argument("--out", type=Path, default=Path("bench.json"))
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder [default: a temp folder]")
    ap.add_argument("--images", type=int, default=None, help="training images of the generated dataset")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile on the VLM forward")
    ap.add_argument(
        "--store-views", action="store_true", help="also build the view store and measure students reading it"
    )
    ap.add_argument(
        "--only",
        default=None,
        help=f"comma-separated sections of {','.join(SECTIONS)} (encode always runs: it makes the cache)",
    )
    ap.add_argument("--batches", default=None, help="training batch sizes, e.g. 32,256")
    ap.add_argument("--students", default=None, help="student archs, e.g. resnet18,mobilenetv2")
    ap.add_argument(
        "--online-vlm",
        default=None,
        help="the VLM section 5 runs on the batch, e.g. convnext_base, or 'bundled' (the mini-VLM)",
    )
    args = ap.parse_args()
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    p = QUICK if args.quick else FULL
    if args.images:
        p = replace(p, images=args.images)
    if args.batches:
        p = replace(p, batches=tuple(int(b) for b in args.batches.split(",")))
    if args.students:
        p = replace(p, students=tuple(args.students.split(",")))
    if args.online_vlm:
        p = replace(p, online_vlm=args.online_vlm)
    only = (
        tuple(args.only.split(","))
        if args.only
        else tuple(k for k in SECTIONS if (k != "compile" or args.compile) and (k != "store" or args.store_views))
    )
    workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 2) - 2)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="dait-bench-"))
    try:
        res = run(p, device, workers, work, args.out, only)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(table(res))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
