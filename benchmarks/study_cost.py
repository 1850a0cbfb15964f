"""GPU-hours each study plan needs, estimated from the plan itself and a measured training
throughput: ``python -m benchmarks.study_cost [--images-per-s 650] [--epochs 100]``.

Training images per run = the run's training rows (official training set less the validation
split, times the fraction) x epochs; the evaluation of validation and test each epoch is added as
the measured share of an epoch (``--eval-share``). An estimate: it prints its assumptions.
"""

from __future__ import annotations

import argparse

from dait_cache.config import TrainConfig
from dait_cache.study.plans import PLANS, build_plan

# Official training-set sizes (aircraft: trainval) of the five datasets, from their annotation files.
TRAIN_SIZES = {"aircraft": 6667, "cub": 5994, "dogs": 12000, "cars": 8144, "nabirds": 23929}


def run_images(cfg: TrainConfig, n_official: int) -> float:
    """Training images one run sees over all its epochs."""
    rows = min(round(cfg.train_fraction * n_official), round((1 - cfg.val_fraction) * n_official))
    return rows * cfg.epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--images-per-s",
        type=float,
        default=650.0,
        help="training throughput (default: H100, 224 px, rendered views, 14 workers)",
    )
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--eval-share", type=float, default=0.17, help="evaluation cost as a share of an epoch")
    args = ap.parse_args()
    base = TrainConfig(epochs=args.epochs)
    print(
        f"assumed: {args.epochs} epochs, {args.images_per_s:g} training images/s, evaluation "
        f"+{args.eval_share:.0%}, one seed\n"
    )
    print("| plan | runs per dataset | " + " | ".join(TRAIN_SIZES) + " | all five |")
    print("|---|---|" + "---|" * (len(TRAIN_SIZES) + 1))
    for plan in PLANS:
        hours = []
        for dataset, n in TRAIN_SIZES.items():
            runs = build_plan(plan, (dataset,), base=base)
            images = sum(run_images(r.cfg, n) for r in runs)
            hours.append(images * (1 + args.eval_share) / args.images_per_s / 3600)
        print(f"| {plan} | {len(runs)} | " + " | ".join(f"{h:.1f}" for h in hours) + f" | {sum(hours):.1f} |")


if __name__ == "__main__":
    main()
