"""The GPU script's correctness half: the CLI under ``torchrun`` on NCCL, and one JSON at the end.

    python -m benchmarks.gpu_checks torchrun OUT_DIR   # encode twice, then every method under DDP
    python -m benchmarks.gpu_checks merge OUT_DIR      # env + torchrun + bench -> OUT_DIR/gpu.json
    torchrun --nproc_per_node=N -m benchmarks.gpu_checks ddp WORKDIR OUT_JSON [cpu|cuda]

``torchrun --nproc_per_node=1`` still builds an NCCL process group, so every collective of the
CUDA path (encode's all_reduce, DDP's gradient buckets with find_unused_parameters=False for
every student method) runs for real. Its cache must be byte-identical to a plain encode.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("none", "kd", "rkd", "vl2lite", "rise", "borlan", "dait-l", "dait-f")


def _cli(workdir: Path, args: list[str], torchrun: bool, log) -> dict:
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_port=29533", "-m", "cli.main"]
        if torchrun
        else [sys.executable, "-m", "cli.main"]
    )
    t0 = time.perf_counter()
    proc = subprocess.run(launcher + ["--workdir", str(workdir)] + args, stdout=log, stderr=subprocess.STDOUT)
    return {
        "command": " ".join(["torchrun --nproc_per_node=1" if torchrun else "dait-cache"] + args),
        "exit_code": proc.returncode,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _shards(cache: Path) -> dict:
    return {str(p.relative_to(cache)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(cache.rglob("*.h5"))}


def ddp_all_methods(
    workdir: Path,
    device: str,
    epochs: int = 1,
    max_batches: int | None = None,
    teacher: str = "regnety_004",
    student: str = "resnet18",
    batch: int = 64,
) -> dict:
    """Under torchrun: a DAIT teacher, a CE teacher, then a student per method, each with DDP and
    ``find_unused_parameters=False`` (a parameter without a gradient fails the next step)."""
    from dataclasses import replace

    from dait_cache.config import TrainConfig
    from dait_cache.dist import process_group
    from dait_cache.train.student import train_student
    from dait_cache.train.teacher import train_teacher

    base = TrainConfig(
        workdir=str(workdir),
        epochs=epochs,
        batch_size=batch,
        pretrained=False,
        device=device,
        workers=4 if device == "cuda" else 0,
        max_batches=max_batches,
        val_fraction=0.25,
    )
    done = {}
    with process_group(device) as dist:
        for method in ("ce", "dait"):
            _, summary = train_teacher(replace(base, arch=teacher, method=method, name=f"ddp-{method}"))
            done[f"teacher-{method}"] = summary["status"]
        for method in METHODS:
            _, summary = train_student(
                replace(base, role="student", arch=student, method=method, teacher="ddp-dait", name="ddp")
            )
            done[method] = summary["status"]
        done["world"] = dist.world
        done["group"] = dist.enabled
    return done


def torchrun_checks(out: Path) -> dict:
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "dait-gpu-checks"
    shutil.rmtree(work, ignore_errors=True)
    device = os.environ.get("DEVICE", "cuda")  # cpu: a dry run of this script on a machine without GPU
    res: dict = {"device": device, "runs": []}
    enc = [
        "encode",
        "--dataset",
        "synthetic",
        "--views",
        "4",
        "--device",
        device,
        "--workers",
        "8",
        "--prompts",
        "ensemble",
    ]  # rise and borlan need it
    with open(out / "torchrun.log", "w") as log:
        res["runs"].append(_cli(work / "ddp", enc, True, log))
        res["runs"].append(_cli(work / "plain", enc, False, log))
        a, b = _shards(work / "ddp" / "synthetic" / "cache"), _shards(work / "plain" / "synthetic" / "cache")
        res["encode_torchrun_equals_plain"] = bool(a) and a == b
        res["shards_compared"] = len(a)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node=1",
                "--master_port=29534",
                "-m",
                "benchmarks.gpu_checks",
                "ddp",
                str(work / "ddp"),
                str(out / "ddp.json"),
                device,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        res["runs"].append(
            {
                "command": "torchrun -m benchmarks.gpu_checks ddp (teacher ce + dait, 8 student methods, 1 epoch each)",
                "exit_code": proc.returncode,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        ddp = out / "ddp.json"
        res["ddp_runs"] = json.loads(ddp.read_text()) if ddp.is_file() else None
    res["all_exit_zero"] = all(r["exit_code"] == 0 for r in res["runs"])
    (out / "torchrun.json").write_text(json.dumps(res, indent=2))
    return res


def merge(out: Path) -> dict:
    merged = {}
    for name in ("env", "torchrun", "bench"):
        path = out / f"{name}.json"
        merged[name] = json.loads(path.read_text()) if path.is_file() else {"missing": True}
    (out / "gpu.json").write_text(json.dumps(merged, indent=2))
    return merged


if __name__ == "__main__":
    what, folder = sys.argv[1], Path(sys.argv[2])
    if what == "ddp":  # under torchrun: python -m benchmarks.gpu_checks ddp WORKDIR OUT_JSON [cpu]
        device = sys.argv[4] if len(sys.argv) > 4 else "cuda"
        if device == "cuda":
            runs = ddp_all_methods(folder, device)
        else:  # the CPU test: the parameter sets are the methods', whatever the network's size
            runs = ddp_all_methods(folder, device, max_batches=2, batch=4, teacher="test_resnet", student="test_resnet")
        if int(os.environ.get("RANK", "0")) == 0:
            Path(sys.argv[3]).write_text(json.dumps(runs, indent=2))
        sys.exit(0)
    folder.mkdir(parents=True, exist_ok=True)
    result = torchrun_checks(folder) if what == "torchrun" else merge(folder)
    print(json.dumps(result, indent=1)[:3000])
