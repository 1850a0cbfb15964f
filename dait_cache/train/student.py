"""DAIT stage 2 and the baselines: distil a frozen teacher (or the cached VLM signal) into a student.

The student trains on the same replayed views as the teacher. Methods and what they need:

=========  =============================================  =======================
method     loss                                           signal
=========  =============================================  =======================
none       CE                                             labels
kd         (1-a) CE + a tau^2 KL                          teacher logits or CLIP zero-shot
rkd        CE + RKD(pooled)                               teacher pooled or cached VLM embedding
vl2lite    VL2Lite's stage-1 loss, k = 1/(8E), tau^2/2    cached VLM + text
rise       CE + a KD(zero-shot) + AD + RD                 cached VLM + prompt ensemble
borlan     CE + closed-form Gaussian text contrast        prompt ensemble
dait-l     lambda CE + (1-lambda) tau^2 KL                DAIT teacher logits
dait-f     lambda CE + (1-lambda) SRA(conv1x1(F_S), F_T)  DAIT teacher final map
=========  =============================================  =======================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from ..cache.reader import Cache, open_cache
from ..config import TrainConfig
from ..errors import DaitError
from ..models import Backbone, check_view_size, create_backbone, feature_shape
from ..seeding import own_rng
from ..workspace import resolve_dataset
from .engine import EpochEnd, Progress, RunSpec, fit
from .objectives import BORLAN, RISE, FeatureDistill, HintonKD, LogitDistill, Objective, RelationalKD, VL2LiteAlignment
from .runs import (
    check_same_cache,
    check_settings,
    load_run_backbone,
    pick_teacher,
    prepare_run_dir,
    resolved_settings,
    resumed_teacher,
    run_config,
    run_name,
    run_record,
    teacher_record,
)
from .teacher import alignment_objective, pretrained_arg, schedule

NEEDS_TEACHER = ("dait-f", "dait-l")
NEEDS_ENSEMBLE = ("rise", "borlan")  # per-class text statistics over the prompt ensemble
MAY_USE_TEACHER = ("kd", "rkd")


def _text(cache: Cache) -> torch.Tensor:
    return torch.from_numpy(cache.class_text_emb())


def _channels(model: Backbone, cache: Cache) -> int:
    """Channels of the model's spatial feature map; dait-f aligns maps, which token models lack."""
    shape = feature_shape(model, int(cache.manifest["views"]["image_size"]))
    if len(shape) != 3:
        raise DaitError(
            f"dait-f aligns spatial feature maps (C, H, W), but {model.name} gives features of "
            f"shape {tuple(shape)}; use a convolutional teacher and student, or --method dait-l"
        )
    return shape[0]


# method -> builder(cfg, cache, student, teacher or None) -> Objective; explicit, no magic.
BUILDERS: dict[str, Callable[[TrainConfig, Cache, Backbone, Backbone | None], Objective]] = {
    "none": lambda cfg, cache, s, t: Objective(tau=cfg.temperature),
    "kd": lambda cfg, cache, s, t: HintonKD(_text(cache), cache.logit_scale, alpha=cfg.kd_alpha, tau=cfg.temperature),
    "rkd": lambda cfg, cache, s, t: RelationalKD(tau=cfg.temperature),
    "rise": lambda cfg, cache, s, t: RISE(
        s, torch.from_numpy(cache.text_emb), cache.logit_scale, alpha=cfg.kd_alpha, tau=cfg.temperature
    ),
    "borlan": lambda cfg, cache, s, t: BORLAN(s.num_features, torch.from_numpy(cache.text_emb)),
    "vl2lite": lambda cfg, cache, s, t: alignment_objective(cfg, cache, s.num_features, VL2LiteAlignment),
    "dait-l": lambda cfg, cache, s, t: LogitDistill(**schedule(cfg)),
    "dait-f": lambda cfg, cache, s, t: FeatureDistill(_channels(s, cache), _channels(t, cache), **schedule(cfg)),
}
METHODS = tuple(BUILDERS)


def load_teacher(run_dir: Path, cache: Cache, dataset: str) -> Backbone:
    """Rebuild a finished teacher from its run folder; refuse one trained on another cache."""
    config = run_config(run_dir, required=True)
    if config.get("dataset_dir") != dataset:
        raise DaitError(
            f"teacher {run_dir} was trained on dataset {config.get('dataset_dir')!r}, but this student "
            f"uses {dataset!r}; train a teacher on this dataset or pick one with --teacher"
        )
    check_same_cache(config, cache, f"teacher {run_dir}")
    return load_run_backbone(run_dir, cache.num_classes)


def student_config(cfg: TrainConfig) -> TrainConfig:
    """The settings a student run resolves: its role, and VL2Lite's own lambda schedule."""
    cfg = replace(cfg, role="student")
    if cfg.method not in BUILDERS:
        raise DaitError(f"unknown student method {cfg.method!r}; valid: {', '.join(METHODS)}")
    return resolved_settings(cfg)


@own_rng
def train_student(
    cfg: TrainConfig, progress: Progress | None = None, on_epoch: EpochEnd | None = None
) -> tuple[Path, dict]:
    """Train ``students/<arch>-<method>[-<tag>]``; return (run dir, summary)."""
    cfg = student_config(cfg)
    check_settings(cfg)
    workdir = Path(cfg.workdir)
    dataset = resolve_dataset(workdir, cfg.dataset or None)
    cache = open_cache(workdir / dataset / "cache")
    teacher_dir = teacher = None
    run_dir = workdir / dataset / "students" / run_name(cfg)
    prepare_run_dir(run_dir, cfg.resume)
    if cfg.method in NEEDS_TEACHER or (cfg.method in MAY_USE_TEACHER and cfg.teacher):
        # a resumed run keeps the teacher it began with, not the newest one trained since
        name = cfg.teacher or (resumed_teacher(run_dir) if cfg.resume else None)
        teacher_dir = pick_teacher(workdir / dataset, name, cfg, cache)
        teacher = load_teacher(teacher_dir, cache, dataset)
    torch.manual_seed(cfg.seed)
    student = create_backbone(cfg.arch, cache.num_classes, pretrained_arg(cfg))
    check_view_size(student, int(cache.manifest["views"]["image_size"]))
    objective = BUILDERS[cfg.method](cfg, cache, student, teacher)
    objective.attach_teacher(teacher)
    signal = "teacher" if teacher is not None else "vlm-cache" if cfg.method != "none" else "labels"
    record, summary = run_record(
        cfg,
        cache,
        dataset,
        **teacher_record(teacher_dir),
        signal=signal,
    )
    return run_dir, fit(RunSpec(cfg, run_dir, cache, student, objective, record, summary), progress, on_epoch)
