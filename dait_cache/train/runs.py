"""Run directories: naming, the refusal to clobber, and finding finished teachers."""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import replace
from pathlib import Path

import torch

from ..cache.manifest import field_differences
from ..cache.reader import Cache
from ..config import LOG_CHOICES, TrainConfig, arch_slug, prefixed_path
from ..errors import CacheError, DaitError, ModelError
from ..io import sha256_file
from ..models import Backbone, check_arch, create_backbone
from ..seeding import check_seed
from ..vlm import resolve_device
from . import checkpoint as ckpt
from . import tensorboard


def check_settings(cfg: TrainConfig) -> None:
    """Settings that cannot train: refuse them up front instead of failing later as a NaN loss."""
    check_arch(cfg.arch)
    check_seed(cfg.seed)
    resolve_device(cfg.device)  # --device cuda without a GPU: before the workspace gains a folder
    if cfg.log not in LOG_CHOICES:
        raise DaitError(f"--log must be one of {', '.join(LOG_CHOICES)}, not {cfg.log!r}")
    if cfg.log == "tensorboard":
        tensorboard.check_available()
    if cfg.eval_test not in ("every", "selected"):
        raise DaitError(f"--eval-test must be every or selected, not {cfg.eval_test!r}")
    check_numbers(cfg)


def check_numbers(cfg: TrainConfig) -> None:
    """Numbers that cannot train (NaN, a learning rate of 0, ...): one line naming the flag."""
    checks = [
        ("--lr", cfg.lr, cfg.lr > 0, "above 0"),
        ("--temperature", cfg.temperature, cfg.temperature > 0, "above 0"),
        ("--weight-decay", cfg.weight_decay, cfg.weight_decay >= 0, "of 0 or more"),
        ("--lr-gamma", cfg.lr_gamma, cfg.lr_gamma > 0, "above 0"),
        ("--checkpoint-minutes", cfg.checkpoint_minutes, cfg.checkpoint_minutes >= 0, "of 0 or more"),
        ("--lambda-bias", cfg.lambda_bias, True, ""),
        ("--lambda-rate", cfg.resolved_lambda_rate, True, ""),
    ]
    for flag, value, ok, need in checks:
        if not (math.isfinite(value) and ok):
            raise DaitError(f"{flag} {value} cannot train: give a finite number {need}".rstrip())


def check_run_name(name: str) -> str:
    """A run name is one folder name: it cannot point outside the workspace."""
    if name and (name in (".", "..") or "/" in name or "\\" in name or Path(name).is_absolute()):
        raise DaitError(
            f"--name {name!r} must be a plain folder name (no '/', '..' or absolute path); "
            "runs always live under <workdir>/<dataset>/"
        )
    return name


# Settings that change a run's numbers: a resumed run must keep them (only --epochs may grow).
RUN_SETTINGS = (
    "arch",
    "method",
    "batch_size",
    "lr",
    "weight_decay",
    "lr_step",
    "lr_gamma",
    "temperature",
    "lambda_rate",
    "lambda_bias",
    "pretrained",
    "weights",
    "seed",
    "val_fraction",
    "train_fraction",
    "teacher",
    "kd_alpha",
)


def resume_differences(saved: dict, cfg: TrainConfig, epochs_done: int, record: dict | None = None) -> list[str]:
    """The settings a ``--resume`` would change (only ``epochs`` may grow); with the new run's
    ``record``, also the teacher's weights."""
    diffs = [
        f"{k}: {saved.get(k)!r} -> {getattr(cfg, k)!r}"
        for k in RUN_SETTINGS
        if k in saved and saved.get(k) != getattr(cfg, k)
    ]
    before, now = saved.get("teacher_fingerprint"), (record or {}).get("teacher_fingerprint")
    if before and now and before != now:
        diffs.append(
            f"teacher {Path(record['teacher_run']).name}: its {ckpt.BEST} changed since this run began "
            f"(sha256 {before[:12]} -> {now[:12]}; trained further or replaced)"
        )
    if cfg.epochs < epochs_done:
        diffs.append(f"epochs: {cfg.epochs} is fewer than the {epochs_done} already done")
    return diffs


def resolved_settings(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` as its run records it: a vl2lite student without --lambda-rate takes VL2Lite's own
    schedule, 1/(8 x epochs); a ``local-dir:`` architecture names its folder by absolute path
    (the run is rebuilt from it later, from any working directory)."""
    local = prefixed_path(cfg.arch, "local-dir")
    if local is not None:
        cfg = replace(cfg, arch=f"local-dir:{local.resolve()}")
    if cfg.role == "student" and cfg.method == "vl2lite" and cfg.lambda_rate is None:
        return replace(cfg, lambda_rate=1.0 / (8 * cfg.epochs))
    return cfg


def setting_differences(run_dir: Path, cfg: TrainConfig, finished: bool) -> list[str]:
    """How the run already in ``run_dir`` differs from ``cfg`` in what changes its numbers (a
    finished run also in its epochs; the teacher by the run folder it resolved to; an unfinished
    one also in its teacher's weights, which its resume would refuse); [] when it matches. A run
    whose config.json cannot be read matches nothing."""
    try:
        saved = run_config(run_dir, required=True)
    except DaitError:
        return ["config.json: missing or damaged"]
    cfg = resolved_settings(cfg)
    used = saved.get("teacher_run")
    now = None if finished else teacher_now(run_dir, used)
    # --teacher may have been a path, or absent (the newest matching teacher): compare what it chose
    diffs = resume_differences({k: v for k, v in saved.items() if k != "teacher"}, cfg, 0, now)
    if finished and saved.get("epochs") != cfg.epochs:
        diffs.append(f"epochs: {saved.get('epochs')!r} -> {cfg.epochs!r}")
    if used and cfg.teacher and Path(used).name != Path(cfg.teacher).name:
        diffs.append(f"teacher: {Path(used).name} -> {Path(cfg.teacher).name}")
    return diffs


def teacher_record(teacher_dir: Path | None) -> dict:
    """What a student's config.json records of its teacher: the run folder and the sha256 of its
    ``best.pt`` (a resume is refused when it changed); None for both without a teacher."""
    if teacher_dir is None:
        return {"teacher_run": None, "teacher_fingerprint": None}
    return {"teacher_run": str(teacher_dir), "teacher_fingerprint": sha256_file(Path(teacher_dir) / ckpt.BEST)}


def teacher_now(run_dir: Path, used: str | None) -> dict | None:
    """The teacher a resume of the student in ``run_dir`` would take (the folder it recorded,
    ``used``, by name in this workspace) as the run records it; None if there is none."""
    teacher = Path(run_dir).parent.parent / "teacher" / Path(used).name if used else None
    if teacher is None or not (teacher / ckpt.BEST).is_file():
        return None
    return teacher_record(teacher)


def resumed_teacher(run_dir: Path) -> str | None:
    """The teacher run a student run began with (its folder name), None if it recorded none."""
    used = run_config(run_dir).get("teacher_run")
    return Path(used).name if used else None


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """A fresh run must not overwrite an earlier one; ``--resume`` needs a checkpoint."""
    has_ckpt = (run_dir / ckpt.CHECKPOINT).is_file()
    if resume and not has_ckpt:
        raise DaitError(f"nothing to resume in {run_dir} (no {ckpt.CHECKPOINT}); drop --resume")
    if not resume and has_ckpt:
        raise DaitError(f"run {run_dir} already exists; pass --resume to continue it or --name to start another")


def fraction_tag(train_fraction: float) -> str:
    return "" if train_fraction >= 1 else f"-frac{train_fraction:g}"


def seed_tag(seed: int) -> str:
    """Seed 0 keeps the plain name; other seeds get ``-s<seed>`` so repeats never collide."""
    return "" if seed == 0 else f"-s{seed}"


def run_name(cfg: TrainConfig) -> str:
    """The folder name of a run, the one rule for teachers, students, the demo and the report:
    ``<arch>-<method>[-frac<f>][-s<seed>]``, or with ``--name`` the name itself (teachers) or
    ``<arch>-<method>-<name>`` (students)."""
    name = check_run_name(cfg.name)
    if name:
        return name if cfg.role == "teacher" else f"{arch_slug(cfg.arch)}-{cfg.method}-{name}"
    return f"{arch_slug(cfg.arch)}-{cfg.method}{fraction_tag(cfg.train_fraction)}{seed_tag(cfg.seed)}"


def finished_runs(parent: Path) -> list[Path]:
    """Run folders under ``parent`` whose summary says finished, newest first."""
    if not parent.is_dir():
        return []
    runs = [
        d
        for d in parent.iterdir()
        if (ckpt.read_summary(d) or {}).get("status") == "finished" and (d / ckpt.BEST).is_file()
    ]
    return sorted(runs, key=lambda d: (d / ckpt.SUMMARY).stat().st_mtime_ns, reverse=True)


# A student may only learn from a teacher trained on the same rows: same cache and these fields.
SAME_ROWS = ("seed", "val_fraction", "train_fraction")


def row_differences(teacher_config: dict, cfg: TrainConfig) -> list[str]:
    """The fields that make a teacher's training rows differ from the student's."""
    return [
        f"{k}: teacher {teacher_config.get(k)!r}, student {getattr(cfg, k)!r}"
        for k in SAME_ROWS
        if teacher_config.get(k) != getattr(cfg, k)
    ]


def matching_teacher_command(cfg: TrainConfig, dataset: str) -> str:
    """The command that trains a teacher on this student's rows, in its workspace and dataset."""
    return shlex.join(
        ["dait-cache", "--workdir", str(cfg.workdir), "train-teacher", "--dataset", dataset]
        + ["--train-fraction", f"{cfg.train_fraction:g}", "--val-fraction", f"{cfg.val_fraction:g}"]
        + ["--seed", str(cfg.seed)]
    )


def run_config(run_dir: Path, required: bool = False) -> dict:
    """A run's ``config.json`` ({} when there is none, unless ``required``); a damaged one is one
    line naming it, never a traceback."""
    path = Path(run_dir) / "config.json"
    if not required and not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).split(":")[0]
        raise DaitError(
            f"{path} is missing or damaged ({why}): {Path(run_dir)} is not a usable dait-cache run; "
            "train it again, or move it out of the workspace"
        ) from None
    return config


def pick_teacher(dataset_dir: Path, name: str | None, cfg: TrainConfig, cache: Cache) -> Path:
    """The teacher a student learns from: the run named ``name`` if it was trained on the same
    rows (refused otherwise), else the newest finished teacher trained on the same rows.
    Teachers of another dataset or cache are refused later, by :func:`check_same_cache`."""
    if name:
        path = teacher_run_dir(dataset_dir, name)
        config = run_config(path)
        if config.get("cache_fingerprint") == cache.fingerprint and (diffs := row_differences(config, cfg)):
            raise DaitError(
                f"teacher {path.name} was trained on other rows than this student "
                f"({'; '.join(diffs)}); train a matching teacher: `{matching_teacher_command(cfg, dataset_dir.name)}`"
            )
        return path
    finished = finished_runs(dataset_dir / "teacher")
    runs = [
        d
        for d in finished
        if (config := run_config(d, required=True)).get("cache_fingerprint") == cache.fingerprint
        and not row_differences(config, cfg)
    ]
    if not runs:
        have = ", ".join(d.name for d in finished) or "none"
        raise DaitError(
            f"no finished teacher under {dataset_dir / 'teacher'} trained on the same rows as "
            f"this student (train_fraction {cfg.train_fraction:g}, val_fraction "
            f"{cfg.val_fraction:g}, seed {cfg.seed}; finished: {have}); run "
            f"`{matching_teacher_command(cfg, dataset_dir.name)}` first or name one with --teacher"
        )
    return runs[0]


def teacher_run_dir(dataset_dir: Path, name: str | None) -> Path:
    """The teacher run named ``name`` (a folder name or a path), else the newest finished one."""
    parent = dataset_dir / "teacher"
    if name:
        path = Path(name) if Path(name).is_dir() else parent / name
        if not (path / ckpt.BEST).is_file():
            have = ", ".join(d.name for d in finished_runs(parent)) or "none"
            raise DaitError(f"teacher run {name!r} not found or unfinished (finished teachers: {have})")
        role = run_config(path, required=True).get("role")
        if role != "teacher":
            raise DaitError(
                f"{path} is {f'a {role}' if role else 'an unknown'} run, not a teacher; name a run made by "
                "`dait-cache train-teacher` (under <dataset>/teacher/)"
            )
        return path
    runs = finished_runs(parent)
    if not runs:
        raise DaitError(
            f"no finished teacher under {parent}; run `dait-cache train-teacher` first or name one with --teacher"
        )
    return runs[0]


def run_record(cfg: TrainConfig, cache: Cache, dataset: str, **extra) -> tuple[dict, dict]:
    """(what config.json carries beside the config: the cache it read, and more; what summary.json
    carries about the run's identity)."""
    record = {
        "dataset_dir": dataset,
        "cache_fingerprint": cache.fingerprint,
        "cache_fingerprint_fields": cache.manifest["fingerprint_fields"],
        "lambda_rate_resolved": cfg.resolved_lambda_rate,
        **extra,
    }
    summary = {
        "dataset": dataset,
        "role": cfg.role,
        "arch": cfg.arch,
        "method": cfg.method,
        "train_fraction": cfg.train_fraction,
        "seed": cfg.seed,
        "cache_fingerprint": cache.fingerprint,
        **{k: v for k, v in extra.items() if k in ("teacher_run", "teacher_fingerprint")},
    }
    return record, summary


def check_same_cache(config: dict, cache: Cache, what: str) -> None:
    """Refuse ``cache`` when the run described by ``config`` was trained on another one."""
    if config.get("cache_fingerprint") == cache.fingerprint:
        return
    diffs = field_differences(config.get("cache_fingerprint_fields", {}), cache.manifest["fingerprint_fields"])
    raise CacheError(
        f"{what} was trained on cache {config.get('cache_fingerprint')}, not on "
        f"{cache.dir} ({cache.fingerprint}): {'; '.join(diffs[:4]) or 'unknown fields'}; "
        "re-encode with the run's settings or start a new run"
    )


CHECKPOINTS = {"best": ckpt.BEST, "last": ckpt.CHECKPOINT}  # validation-selected / last epoch


def load_run_backbone(run_dir: Path, num_classes: int, head: bool = True, checkpoint: str = "best") -> Backbone:
    """A run's backbone with the weights of ``checkpoint`` (``best``: validation-selected, or
    ``last``). ``head=False`` loads the network only, which is all pooled features need and works
    whatever head the method used; with the head, a rise run gets its text-initialised cosine head."""
    if checkpoint not in CHECKPOINTS:
        raise DaitError(f"unknown checkpoint {checkpoint!r}; valid: {', '.join(CHECKPOINTS)}")
    run_dir = Path(run_dir)
    config = run_config(run_dir, required=True)
    try:
        model = create_backbone(config["arch"], num_classes, pretrained=False)
    except ModelError as exc:  # a local-dir: folder moved since, a hub name offline, an older timm
        raise ModelError(f"run {run_dir} cannot be rebuilt here: {exc}") from None
    path = run_dir / CHECKPOINTS[checkpoint]
    state = ckpt.load(path)["step"]
    # Checkpoints of earlier versions also held the classifier inside the net: drop that copy.
    stale = f"model.net.{model.classifier_name}."
    state = {k: v for k, v in state.items() if not k.startswith(stale)}
    prefix = "model." if head else "model.net."
    target = model if head else model.net
    if head and "model.classifier.proj.weight" in state:  # rise's head; its weights come from the state
        from .objectives import TextHead

        model.classifier = TextHead(model.num_features, torch.zeros_like(state["model.classifier.weight"]))
    ckpt.load_into(
        target, {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, path, f"{config['arch']}"
    )
    return model.eval()
