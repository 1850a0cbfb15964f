"""Frozen configs, one per command; each output directory holds its resolved ``config.json``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .io import atomic_write_json

DEFAULT_VLM = "convnext_xxlarge"
DEFAULT_PRETRAINED = "laion2b_s34b_b82k_augreg_soup"


def json_digest(value: Any, length: int = 16) -> str:
    """sha256 of ``value``'s canonical JSON (sorted keys), cut to ``length`` hex digits."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:length]


def save_config(cfg: Any, directory: Path) -> None:
    atomic_write_json(Path(directory) / "config.json", cfg)


LOG_CHOICES = ("csv", "tensorboard", "none")  # --log


@dataclass(frozen=True)
class EncodeConfig:
    """Everything ``dait-cache encode`` needs; the numeric subset forms the cache fingerprint."""

    dataset: str = "synthetic"
    data_root: str = "./data"
    workdir: str = "./dait-work"
    download: bool = False
    # None: the dataset's defaults (presets.encode_defaults), resolved by encode() itself, so the
    # command line and Python get the same settings
    vlm: str | None = None
    pretrained: str | None = None  # with vlm None: the default model's tag
    views: int = 16
    view_preset: str = "fgvc"
    image_size: int | None = None
    base_size: int | None = None
    batch_size: int = 64
    workers: int | None = None  # None: one per usable core, at most 4 (dist.default_workers)
    device: str = "auto"
    seed: int = 0
    shard_size: int = 1024
    prompts: str = "dataset"
    image_cache: bool = True
    on_bad_image: str = "fail"
    overwrite: bool = False
    crop_banner: bool = False
    # turn photos upright by their EXIF orientation tag (caches encoded before the option: not)
    exif_orientation: bool = True
    compile: bool = False  # torch.compile the image tower; same dtype, so the same cached values
    store_views: bool = False  # also keep every view's uint8 pixels (views/<split>.u8) for training

    @property
    def cache_dir(self) -> Path:
        return Path(self.workdir) / dataset_slug(self.dataset) / "cache"


def prefixed_path(name: str, prefix: str) -> Path | None:
    """The path of a ``<prefix>:<path>`` name (``folder:``, ``local-dir:``), or None without the prefix."""
    return Path(name[len(prefix) + 1 :]).expanduser() if name.startswith(prefix + ":") else None


def arch_slug(arch: str) -> str:
    """An architecture as part of a folder or file name: a timm source prefix's ':' and a hub
    repository's '/' become '-' (``hf-hub:timm/resnet18.a1_in1k`` -> ``hf-hub-timm-resnet18.a1_in1k``),
    and a ``local-dir:`` model is named by its resolved folder (``local-dir-<folder name>``)."""
    source, colon, rest = arch.partition(":")
    if not colon:
        return arch
    if source == "local-dir":
        rest = prefixed_path(arch, "local-dir").resolve().name
    return f"{source}-{rest.strip('/').replace('/', '-')}"


def dataset_slug(name: str) -> str:
    """Workspace folder name of a dataset (``folder:/x/birds`` -> ``folder-birds``)."""
    if name.startswith("folder:"):
        return "folder-" + prefixed_path(name, "folder").resolve().name
    return name


@dataclass(frozen=True)
class TrainConfig:
    """Shared by ``train-teacher`` and ``train-student``."""

    role: str = "teacher"  # teacher | student
    dataset: str = ""
    workdir: str = "./dait-work"
    arch: str = "regnety_016"
    method: str = "dait"
    name: str = ""
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    lr_step: int = 30
    lr_gamma: float = 0.5
    temperature: float = 2.0
    lambda_rate: float | None = None  # None -> 1/epochs
    lambda_bias: float = 0.0
    pretrained: bool = True
    weights: str | None = None
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    val_fraction: float = 0.1
    train_fraction: float = 1.0
    resume: bool = False
    teacher: str | None = None
    kd_alpha: float = 0.5
    max_batches: int | None = None  # per epoch; for smoke runs and benchmarks
    compile: bool = False  # torch.compile the training step (model + objective)
    # "every" epoch, or only the weights whose test number is reported ("selected": the last
    # epoch, and best.pt once training ends); the reported numbers are the same either way
    eval_test: str = "every"
    # checkpoint.pt once this many minutes passed since the last one, part-way through an epoch
    # too (0: after every epoch), and always after the last; an interrupted run resumes from it
    # exactly, so it loses at most this much work
    checkpoint_minutes: float = 10.0
    # csv: metrics.csv beside metrics.jsonl, rewritten each epoch; tensorboard: scalars under
    # <run>/tensorboard; none: metrics.jsonl only
    log: str = "csv"

    @property
    def resolved_lambda_rate(self) -> float:
        return self.lambda_rate if self.lambda_rate is not None else 1.0 / max(self.epochs, 1)
