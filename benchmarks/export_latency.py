"""Batch-1 CPU latency of the exported students (ONNX through onnxruntime, a torch.export
program, TorchScript) against PyTorch eager, with file sizes, parameters and GFLOPs:
``python -m benchmarks.export_latency``.

The students have random weights (latency does not depend on the values) and the paper's 224 px
view of a 256 px base; the numbers are this machine's, so the JSON records its CPU count.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from dait_cache.deploy.bundle import PixelClassifier, Preprocessing, RunModel
from dait_cache.deploy.export import FORMATS, export_run
from dait_cache.models import create_backbone
from dait_cache.provenance import device_name

STUDENTS = ("resnet18", "mobilenetv2", "efficientnet_b0", "shufflenetv2")


def fake_run(arch: str, run_dir: Path, classes: int, image_size: int, base_size: int) -> RunModel:
    """A student as ``export`` sees it, without training one."""
    torch.manual_seed(0)
    backbone = create_backbone(arch, classes, pretrained=False).eval()
    names = [f"class {i}" for i in range(classes)]
    return RunModel(
        run_dir,
        PixelClassifier(backbone, backbone.mean, backbone.std).eval(),
        Preprocessing(base_size, image_size),
        names,
        {"arch": arch, "method": "none"},
        {"status": "finished"},
        "best",
        "none",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default=",".join(STUDENTS))
    ap.add_argument("--classes", type=int, default=100, help="100: FGVC-Aircraft's variants")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--base-size", type=int, default=256)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            rm = fake_run(arch, Path(tmp) / arch, args.classes, args.image_size, args.base_size)
            for fmt in args.formats.split(","):
                r = export_run(rm, fmt, Path(tmp) / f"{arch}{FORMATS[fmt]}", latency_runs=args.runs)
                rows.append(
                    {
                        "arch": arch,
                        "format": fmt,
                        "size_mb": r.size_bytes / 2**20,
                        "latency_ms": r.latency_ms,
                        "eager_ms": r.eager_latency_ms,
                        "parameters": r.record["parameters"],
                        "gflops": r.record["gflops"],
                    }
                )
                print(
                    f"{arch:16s} {fmt:11s} {rows[-1]['size_mb']:6.1f} MB  {r.latency_ms:7.2f} ms  "
                    f"eager {r.eager_latency_ms:7.2f} ms  {r.record['gflops']:.2f} GFLOPs",
                    flush=True,
                )
    if args.out:
        import onnxruntime

        args.out.write_text(
            json.dumps(
                {
                    "device": device_name("cpu"),
                    "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
                    "cpus": len(os.sched_getaffinity(0)),
                    "torch_threads": torch.get_num_threads(),
                    "image_size": args.image_size,
                    "rows": rows,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
