"""Speed benchmark: encode throughput and seconds per epoch per method, on this machine.

    .venv/bin/python benchmarks/speed.py [--workdir /tmp/dait-bench] [--xxlarge] [--epochs 2]

Encodes the synthetic dataset with the bundled mini-VLM, trains the regnety_016 teacher (DAIT
stage 1) and one student arch with every method on it, and prints one JSON object. With
``--xxlarge`` it also times ConvNeXt-XXLarge's image tower (random weights: speed does not depend
on them) on 224 px views. Numbers are per epoch over the whole cached training split.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from dait_cache.config import EncodeConfig, TrainConfig
from dait_cache.encode import encode
from dait_cache.minivlm import BASE_SIZE, IMAGE_SIZE, bundled_vlm_id
from dait_cache.train import checkpoint as ckpt
from dait_cache.train.student import METHODS, train_student
from dait_cache.train.teacher import train_teacher


def seconds_per_epoch(run_dir: Path) -> float:
    rows = ckpt.read_metrics(run_dir)
    return round(sum(r["seconds"] for r in rows) / len(rows), 2)


def xxlarge_views_per_second(n: int = 4) -> float:
    import open_clip

    model = open_clip.create_model("convnext_xxlarge", pretrained=None).eval()
    x = torch.randn(n, 3, 224, 224)
    with torch.inference_mode():
        model.encode_image(x[:1])
        t0 = time.perf_counter()
        model.encode_image(x)
    return round(n / (time.perf_counter() - t0), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dait-bench"))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--student", default="resnet18")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--xxlarge", action="store_true")
    args = ap.parse_args()
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    result = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"}
    enc = encode(
        EncodeConfig(
            dataset="synthetic",
            workdir=str(args.workdir),
            vlm=bundled_vlm_id(),
            pretrained=None,
            views=8,
            image_size=IMAGE_SIZE,
            base_size=BASE_SIZE,
            batch_size=256,
            workers=2,
            device="cpu",
            prompts="ensemble",
        )
    )
    result["encode"] = {
        "model": "mini-VLM",
        "views": enc.views_encoded,
        "view_px": IMAGE_SIZE,
        "seconds": round(enc.seconds, 1),
        "views_per_s": round(enc.views_per_second, 1),
    }
    common = TrainConfig(
        dataset="synthetic",
        workdir=str(args.workdir),
        epochs=args.epochs,
        batch_size=32,
        pretrained=False,
        device="cpu",
        workers=args.workers,
        lr=1e-3,
    )
    teacher, _ = train_teacher(replace(common, arch="regnety_016", method="dait", name="bench"))
    result["cache"] = "synthetic: 864 train rows (after the 10% val split) + 96 val + 480 test, 64 px views, K=8"
    result["teacher_regnety_016_s_per_epoch"] = seconds_per_epoch(teacher)
    result[f"student_{args.student}_s_per_epoch"] = {}
    for method in METHODS:
        run, _ = train_student(replace(common, role="student", arch=args.student, method=method, teacher="bench"))
        result[f"student_{args.student}_s_per_epoch"][method] = seconds_per_epoch(run)
    if args.xxlarge:
        result["convnext_xxlarge_cpu_views_per_s_224px"] = xxlarge_views_per_second()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
