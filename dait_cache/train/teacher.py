"""DAIT stage 1: train the intermediate teacher against the cached VLM embeddings.

The VLM is never loaded: its image embeddings come from the cache for the exact view the teacher
sees, its class text embeddings from ``text.h5``. The trainable MLP_img / MLP_txt projections are
saved with the teacher run.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..cache.reader import open_cache
from ..config import TrainConfig
from ..errors import DaitError
from ..models import PretrainedArg, check_view_size, create_backbone
from ..seeding import own_rng
from ..workspace import resolve_dataset
from .engine import EpochEnd, Progress, RunSpec, fit
from .objectives import Objective, VLMAlignment
from .runs import check_settings, prepare_run_dir, resolved_settings, run_name, run_record

TEACHER_METHODS = ("dait", "ce")


def pretrained_arg(cfg: TrainConfig) -> PretrainedArg:
    """What ``create_backbone`` takes as ``pretrained``: a weights file when given, else the flag."""
    return cfg.weights if cfg.weights else cfg.pretrained


def schedule(cfg: TrainConfig) -> dict:
    """The temperature and the lambda schedule every distilling objective takes."""
    return {"tau": cfg.temperature, "lambda_rate": cfg.resolved_lambda_rate, "lambda_bias": cfg.lambda_bias}


def alignment_objective(cfg: TrainConfig, cache, feat_dim: int, cls: type = VLMAlignment) -> VLMAlignment:
    """DAIT stage 1 (or ``cls``, e.g. VL2Lite's variant) against the cache, for a network whose
    pooled features have ``feat_dim``."""
    return cls(
        int(cache.manifest["vlm"]["embed_dim"]), feat_dim, torch.from_numpy(cache.class_text_emb()), **schedule(cfg)
    )


def teacher_objective(cfg: TrainConfig, cache, feat_dim: int) -> Objective:
    """The objective of a teacher run: CE only, or DAIT stage 1."""
    if cfg.method == "ce":
        return Objective(tau=cfg.temperature)
    if cfg.method == "dait":
        return alignment_objective(cfg, cache, feat_dim)
    raise DaitError(f"unknown teacher method {cfg.method!r}; valid: {', '.join(TEACHER_METHODS)}")


@own_rng
def train_teacher(
    cfg: TrainConfig, progress: Progress | None = None, on_epoch: EpochEnd | None = None
) -> tuple[Path, dict]:
    """Train a teacher run under ``<workdir>/<dataset>/teacher/<name>``; return (run dir, summary)."""
    cfg = resolved_settings(replace(cfg, role="teacher"))
    check_settings(cfg)
    dataset = resolve_dataset(Path(cfg.workdir), cfg.dataset or None)
    cache = open_cache(Path(cfg.workdir) / dataset / "cache")
    run_dir = Path(cfg.workdir) / dataset / "teacher" / run_name(cfg)
    if cfg.method not in TEACHER_METHODS:
        raise DaitError(f"unknown teacher method {cfg.method!r}; valid: {', '.join(TEACHER_METHODS)}")
    prepare_run_dir(run_dir, cfg.resume)
    torch.manual_seed(cfg.seed)  # the heads' random init is part of the run's identity
    model = create_backbone(cfg.arch, cache.num_classes, pretrained_arg(cfg))
    check_view_size(model, int(cache.manifest["views"]["image_size"]))
    objective = teacher_objective(cfg, cache, model.num_features)
    record, summary = run_record(cfg, cache, dataset)
    return run_dir, fit(RunSpec(cfg, run_dir, cache, model, objective, record, summary), progress, on_epoch)
