"""``train-teacher`` and ``train-student``: the engine's options (each default written once, in
:class:`~dait_cache.config.TrainConfig`), a progress bar, one line per epoch, the summary."""

from __future__ import annotations

import click

from dait_cache.config import LOG_CHOICES, TrainConfig

from .errors import user_errors
from .options import CONTEXT, compile_option, config_option, device_option, process_group
from .render import RichProgress, epoch_line, render_summary


def engine_options(fn):
    """Options shared by train-teacher and train-student (the engine's settings); every default is
    TrainConfig's, written once."""
    T = TrainConfig
    opts = [
        click.option("--dataset", default=None, help="Dataset in the workspace (optional if only one)."),
        click.option("--epochs", type=click.IntRange(1), default=T.epochs, help="Training epochs."),
        click.option(
            "--batch-size", type=click.IntRange(2), default=T.batch_size, help="Images per step (per process)."
        ),
        click.option("--lr", type=float, default=T.lr, help="AdamW learning rate."),
        click.option("--weight-decay", type=float, default=T.weight_decay, help="AdamW weight decay (decoupled)."),
        click.option("--lr-step", type=click.IntRange(1), default=T.lr_step, help="Epochs between LR decays."),
        click.option("--lr-gamma", type=float, default=T.lr_gamma, help="LR factor at each decay."),
        click.option("--temperature", type=float, default=T.temperature, help="Distillation temperature tau."),
        click.option(
            "--lambda-rate",
            type=float,
            default=None,
            help="CE weight growth per epoch [default: 1/epochs; VL2Lite used 1/(8*epochs)].",
        ),
        click.option(
            "--lambda-bias",
            type=float,
            default=T.lambda_bias,
            help="CE weight at epoch 0: lambda = rate * epoch + bias, clipped to [0, 1].",
        ),
        click.option(
            "--checkpoint-minutes",
            type=float,
            default=T.checkpoint_minutes,
            show_default=True,
            help="Write checkpoint.pt every this many minutes, inside an epoch too (0: after every "
            "epoch instead; always after the last); --resume continues from it exactly.",
        ),
        click.option(
            "--eval-test",
            type=click.Choice(["every", "selected"]),
            default=T.eval_test,
            help="Test every epoch, or only the two reported weights (the best on validation, "
            "from best.pt after the last epoch; the last epoch): same reported numbers, less time.",
        ),
        click.option("--pretrained/--no-pretrained", default=T.pretrained, help="Start from ImageNet weights."),
        click.option(
            "--weights",
            type=click.Path(dir_okay=False),
            default=None,
            help="Local backbone weights file (offline machines).",
        ),
        device_option,
        click.option("--workers", type=click.IntRange(0), default=T.workers, help="View-replay workers."),
        click.option(
            "--seed",
            type=click.IntRange(0),
            default=T.seed,
            help="Sets the validation split, the fraction draw, the initialisation and the view order.",
        ),
        click.option(
            "--val-fraction",
            type=click.FloatRange(0, 1, max_open=True),
            default=T.val_fraction,
            help="Share of the official training set held out for validation (0: none).",
        ),
        click.option(
            "--train-fraction",
            type=click.FloatRange(0, 1, min_open=True),
            default=T.train_fraction,
            help="Train on round(f x N_official) images per class-stratified draw (Table 3).",
        ),
        click.option("--name", default="", help="Run folder name [default: derived from the settings]."),
        click.option("--resume", is_flag=True, help="Continue the run from its last checkpoint."),
        click.option(
            "--log",
            type=click.Choice(LOG_CHOICES),
            default=T.log,
            help="csv: metrics.csv beside metrics.jsonl, rewritten each epoch; tensorboard: scalars "
            "under <run>/tensorboard (needs the [tensorboard] extra); none: metrics.jsonl only.",
        ),
        compile_option,
        config_option,
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _train(ctx: click.Context, role: str, run, opts: dict) -> None:
    """Build the frozen config, train with a progress bar and per-epoch lines, show the summary."""

    cfg = TrainConfig(role=role, workdir=str(ctx.obj["workdir"]), dataset=opts.pop("dataset") or "", **opts)
    with (
        process_group(cfg.device) as dist,
        # under torchrun rank 0 speaks for the group (the library calls on_epoch on rank 0 only)
        RichProgress(lambda key: ("images", cfg.batch_size), show=dist.is_main) as progress,
    ):
        run_dir, summary = run(cfg, progress=progress, on_epoch=epoch_line)
    if dist.is_main:
        render_summary(run_dir, summary)


@click.command("train-teacher", context_settings=CONTEXT, short_help="DAIT stage 1: train the intermediate teacher.")
@click.option("--arch", default="regnety_016", help="Teacher backbone (any timm name).")
@click.option(
    "--method",
    type=click.Choice(["dait", "ce"]),
    default="dait",
    help="dait = DAIT stage 1; ce = plain fine-tune (CNN teachers for kd/rkd).",
)
@engine_options
@click.pass_context
@user_errors
def train_teacher(ctx: click.Context, **opts) -> None:
    """DAIT stage 1: train the intermediate teacher against the cached VLM embeddings."""
    from dait_cache.train.teacher import train_teacher as run

    _train(ctx, "teacher", run, opts)


# what each student alias builds (docs/design.md section 5), for --help
STUDENT_ALIASES = {
    "resnet18": "timm resnet18.tv_in1k (torchvision's weights)",
    "mobilenetv2": "timm mobilenetv2_100",
    "efficientnet_b0": "timm efficientnet_b0",
    "shufflenetv2": "torchvision shufflenet_v2_x1_0",
}


@click.command("train-student", context_settings=CONTEXT, short_help="DAIT stage 2 or a baseline: train a student.")
@click.option(
    "--arch",
    default="resnet18",
    help="Student: "
    + "; ".join(f"{alias} = {where}" for alias, where in STUDENT_ALIASES.items())
    + "; or any timm model name.",
)
@click.option(
    "--method",
    type=click.Choice(["dait-f", "dait-l", "none", "kd", "rkd", "vl2lite", "rise", "borlan"]),
    default="dait-f",
    help="dait-f / dait-l: DAIT stage 2 (features / logits); the rest are the paper's baselines.",
)
@click.option(
    "--teacher",
    default=None,
    help="Teacher run (folder name or path); it must have trained on the same rows (cache, seed, "
    "fractions) [default: the newest such finished teacher, or with --resume the run's own; kd/rkd "
    "without it use the cached CLIP signal].",
)
@click.option(
    "--kd-alpha", type=click.FloatRange(0, 1), default=TrainConfig.kd_alpha, help="KD weight for kd and rise."
)
@engine_options
@click.pass_context
@user_errors
def train_student(ctx: click.Context, **opts) -> None:
    """DAIT stage 2 (dait-f, dait-l) and the baselines: train a lightweight student."""
    from dait_cache.train.student import train_student as run

    _train(ctx, "student", run, opts)
