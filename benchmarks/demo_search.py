"""The audited search behind the demo's settings: train candidate miniatures and compare them on
the **validation** split only (test numbers are never read here).

    python -m benchmarks.demo_search --grid teacher --root /tmp/demo-search --out docs/demo-search.jsonl

Every candidate is a set of :class:`dait_cache.demo.DemoConfig` overrides; all candidates share one
encoded cache (symlinked into each candidate's workspace). One JSON line per candidate: the
overrides, per role/method the validation top-1 (best epoch and last epoch) per seed and their
mean, and the wall time. ``docs/demo-search.md`` summarises the lines.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from dait_cache.demo import DemoConfig, run_demo, run_dir_of
from dait_cache.encode import encode
from dait_cache.train import checkpoint as ckpt

# stages A-C (and D's first three) train the students on the teacher's schedule
SAME = dict(student_lr_step=None, student_lr_gamma=None)
FAST = dict(batch_size=64, lr=3e-3, **SAME)
TEACHER_ONLY = dict(student_archs=("test_efficientnet",), methods=("none",), **FAST)
GRIDS: dict[str, list[dict]] = {
    # Stage A: can a teacher absorb the mini-VLM (validation top-1 far above the `none` student)?
    "teacher": [
        {"teacher_arch": "test_resnet", "teacher_epochs": 30, "student_epochs": 30, "lr_step": 20, **TEACHER_ONLY},
        {"teacher_arch": "test_resnet", "teacher_epochs": 60, "student_epochs": 60, "lr_step": 40, **TEACHER_ONLY},
        {"teacher_arch": "test_convnext", "teacher_epochs": 30, "student_epochs": 30, "lr_step": 20, **TEACHER_ONLY},
        {"teacher_arch": "regnetx_002", "teacher_epochs": 30, "student_epochs": 30, "lr_step": 20, **TEACHER_ONLY},
        {
            "teacher_arch": "test_resnet",
            "teacher_epochs": 30,
            "student_epochs": 30,
            "lr_step": 20,
            "train_fraction": 1.0,
            **TEACHER_ONLY,
        },
    ],
    # Stage B: the five demo methods on the stage-A winner (test_resnet teacher, 60 epochs, 30%)
    "methods": [
        {
            "teacher_arch": "test_resnet",
            "teacher_epochs": 60,
            "student_archs": ("test_efficientnet",),
            "student_epochs": e,
            "lr_step": 40,
            **FAST,
        }
        for e in (40, 25)
    ],
    # Stage C: students that can follow the teacher (a wider student; more, smaller steps)
    "students": [
        {
            "teacher_arch": "test_resnet",
            "teacher_epochs": 60,
            "student_archs": ("test_resnet",),
            "student_epochs": 40,
            "lr_step": 40,
            **FAST,
        },
        {
            "teacher_arch": "test_resnet",
            "teacher_epochs": 60,
            "student_archs": ("test_efficientnet",),
            "student_epochs": 30,
            "lr_step": 40,
            "batch_size": 32,
            "lr": 2e-3,
            **SAME,
        },
    ],
    # Stage D: does the schedule end converged? (the stage-C students never decayed their lr)
    "schedule": [
        {"lr_step": 40, "lr_gamma": 0.5, **SAME},  # the settings chosen in stage C, rerun for comparison
        {"lr_step": 30, "lr_gamma": 0.1, **SAME},
        {"lr_step": 20, "lr_gamma": 0.3, **SAME},
        # both decayed schedules cost the 60-epoch teacher its lead (criterion 1): students only
        {"student_lr_step": 30, "student_lr_gamma": 0.1},
    ],
}


def val_numbers(cfg: DemoConfig) -> dict:
    """role/method -> {"best": [...], "last": [...]} validation top-1 per seed (no test numbers)."""
    out: dict = {}
    for run in cfg.plan():
        s = ckpt.read_summary(run_dir_of(run)) or {}
        key = f"teacher {run.arch}" if run.role == "teacher" else f"{run.arch} {run.method}"
        entry = out.setdefault(key, {"best": [], "last": []})
        entry["best"].append(s.get("val_top1_best"))
        entry["last"].append(s.get("val_top1_last"))
    for entry in out.values():
        for k in ("best", "last"):
            vals = [v for v in entry[k] if v is not None]
            entry[f"{k}_mean"] = float(np.mean(vals)) if vals else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", choices=sorted(GRIDS), required=True)
    ap.add_argument("--root", default="/tmp/demo-search")
    ap.add_argument("--out", default="docs/demo-search.jsonl")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--only", type=int, nargs="*", default=None, help="candidate indices of the grid to run")
    args = ap.parse_args()
    root = Path(args.root)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    shared = DemoConfig(workdir=str(root / "shared"))
    encode(shared.encode_config())
    for i, overrides in enumerate(GRIDS[args.grid]):
        if args.only is not None and i not in args.only:
            continue
        name = f"{args.grid}-{i}"
        cfg = replace(shared, workdir=str(root / name), seeds=seeds, **overrides)
        link = root / name / "synthetic" / "cache"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to((root / "shared" / "synthetic" / "cache").resolve())
        t0 = time.perf_counter()
        run_demo(cfg)
        line = {
            "candidate": name,
            "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
            "seeds": list(seeds),
            "seconds": round(time.perf_counter() - t0, 1),
            "val": val_numbers(cfg),
        }
        with open(args.out, "a") as f:
            f.write(json.dumps(line) + "\n")
        summary = "  ".join(
            f"{k}: {v['best_mean']:.1f}/{v['last_mean']:.1f}"
            for k, v in line["val"].items()
            if v["best_mean"] is not None
        )
        print(f"{name} ({line['seconds']:.0f} s) val best/last  {summary}", flush=True)


if __name__ == "__main__":
    main()
