"""A finished run as a classifier of image files: its network and weights, its class names, and
the evaluation path's preprocessing (decode, base image, clean view 0, the model's normalisation).

Like open_clip's model + preprocess pair, the two travel together: :class:`RunModel` holds both,
and an export's JSON sidecar records the same :class:`Preprocessing` so that an ONNX file
predicts without this package's cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..cache.reader import Cache, open_cache
from ..data.base import decode_image
from ..data.views import clean_view_params, make_base, pixel_box, render_view
from ..errors import CacheError, DaitError
from ..train import checkpoint as ckpt
from ..train.runs import CHECKPOINTS, check_same_cache, load_run_backbone, run_config


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes the uint8 (3, image_size, image_size) view a model was evaluated on."""

    base_size: int
    image_size: int
    crop_bottom: int = 0  # pixel rows cut from the bottom after decoding (FGVC-Aircraft's banner)
    exif_orientation: bool = False  # then turned upright by the EXIF orientation tag

    @classmethod
    def of_cache(cls, cache: Cache) -> Preprocessing:
        views = cache.manifest["views"]
        return cls(int(views["base_size"]), int(views["image_size"]), **cache.decode_options())

    @property
    def clean_box(self) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the clean view on the base image, in pixels."""
        return pixel_box(clean_view_params(self.image_size / self.base_size), self.base_size)

    def view(self, path: str | Path) -> torch.Tensor:
        """The clean view of an image file: the pixels evaluation scores for a cached image."""
        base = make_base(decode_image(path, self.crop_bottom, self.exif_orientation), self.base_size)
        return render_view(base, clean_view_params(self.image_size / self.base_size), self.image_size)


class PixelClassifier(nn.Module):
    """uint8 RGB images (N, 3, H, W) at the view size -> logits. The normalisation is inside, as
    ``normalize_pixels`` computes it for evaluation, so a deployed model takes decoded pixels."""

    def __init__(self, backbone: nn.Module, mean, std):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(tuple(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(tuple(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float() / 255.0
        return self.backbone((x - self.mean) / self.std)


@dataclass
class RunModel:
    """A finished run ready to classify: model, preprocessing, class names and provenance."""

    run_dir: Path
    classifier: PixelClassifier
    preprocessing: Preprocessing
    class_names: list[str]
    config: dict
    summary: dict
    checkpoint: str
    fingerprint: str

    @property
    def name(self) -> str:
        return self.run_dir.name


def load_run_model(run_dir: str | Path, checkpoint: str = "best") -> RunModel:
    """Load a finished run (``best``: validation-selected weights, or ``last``) with the cache it
    was trained on, which must sit beside it (``<workdir>/<dataset>/cache``)."""
    run_dir = Path(run_dir)
    if checkpoint not in CHECKPOINTS:
        raise DaitError(f"unknown checkpoint {checkpoint!r}; valid: {', '.join(CHECKPOINTS)}")
    summary = ckpt.read_summary(run_dir)
    if summary is None or summary.get("status") != "finished":
        state = "no summary.json" if summary is None else f"status {summary.get('status')}"
        raise DaitError(
            f"run {run_dir} is not finished ({state}); finish it with the same train "
            "command and --resume, or choose a finished run"
        )
    config = run_config(run_dir, required=True)
    cache_dir = run_dir.parent.parent / "cache"
    try:
        cache = open_cache(cache_dir)
    except CacheError as exc:
        raise DaitError(
            f"run {run_dir.name} needs the cache of dataset {config.get('dataset_dir', '?')} "
            f"at {cache_dir}, which cannot be opened ({exc})"
        ) from None
    check_same_cache(config, cache, f"run {run_dir.name}")
    if checkpoint == "last":  # checkpoint.pt of a finished run holds its final epoch
        epoch = ckpt.load(run_dir / ckpt.CHECKPOINT).get("epoch")
        if epoch != summary["epochs"] - 1:
            raise DaitError(
                f"{run_dir / ckpt.CHECKPOINT} holds epoch {epoch + 1 if epoch is not None else '?'}, not the "
                f"last ({summary['epochs']}); use --checkpoint best"
            )
    backbone = load_run_backbone(run_dir, cache.num_classes, checkpoint=checkpoint)
    classifier = PixelClassifier(backbone, backbone.mean, backbone.std).eval()
    return RunModel(
        run_dir,
        classifier,
        Preprocessing.of_cache(cache),
        cache.class_names,
        config,
        summary,
        checkpoint,
        cache.fingerprint,
    )


def _finished_students(workdir: Path) -> list:
    from ..report import collect_runs

    return [r for r in collect_runs(workdir) if r.role == "student" and r.status == "finished"]


def best_student_per_dataset(records: list, metric: str) -> dict:
    """Dataset -> its finished student with the highest ``metric`` (the first of equals, in the
    records' order): a student of one dataset cannot classify another's photos."""
    best: dict = {}
    for r in records:
        if r.role != "student" or r.status != "finished" or getattr(r, metric) is None:
            continue
        if r.dataset not in best or getattr(r, metric) > getattr(best[r.dataset], metric):
            best[r.dataset] = r
    return best


def find_run(workdir: str | Path, run: str | None, metric: str = "test_top1_best_val") -> Path:
    """The run folder of ``run``: a path, or a run name looked up among the workspace's students
    and teachers. Without ``run``, the finished student with the highest ``metric``."""
    workdir = Path(workdir)
    if run and Path(run).is_dir():
        return Path(run)
    if run:
        hits = sorted(p for p in workdir.glob(f"*/*/{run}") if p.parent.name in ("students", "teacher") and p.is_dir())
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise DaitError(
                f"run name {run!r} is ambiguous in {workdir}: {', '.join(map(str, hits))}; pass the run folder instead"
            )
        have = ", ".join(sorted(Path(r.run_dir).name for r in _finished_students(workdir))) or "none"
        raise DaitError(f"no run {run!r} in workspace {workdir} (finished students: {have})")
    best = best_student_per_dataset(_finished_students(workdir), metric)
    if not best:
        raise DaitError(
            f"no finished student in workspace {workdir}; train one with "
            "`dait-cache train-student` or name a run with --run"
        )
    if len(best) > 1:
        each = "; ".join(f"{d}: {Path(r.run_dir).name}" for d, r in sorted(best.items()))
        raise DaitError(
            f"workspace {workdir} holds students of {len(best)} datasets (best of each: {each}); "
            "choose one with --run NAME or --run FOLDER"
        )
    return Path(next(iter(best.values())).run_dir)


def sidecar_preprocessing(sidecar: dict) -> Preprocessing:
    """The preprocessing an export's sidecar records."""
    try:
        return Preprocessing(
            int(sidecar["base_size"]),
            int(sidecar["image_size"]),
            int(sidecar.get("crop_bottom", 0)),
            bool(sidecar.get("exif_orientation", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DaitError(f"the model's sidecar lacks its preprocessing ({exc!r}); export the run again") from None


def preprocessing_record(prep: Preprocessing) -> dict:
    """How to make the model's input from a photo without this package (the sidecar's note)."""
    return {
        "clean_crop_box": list(prep.clean_box),
        "decode": "RGB; cut crop_bottom rows from the bottom, then, if exif_orientation, turn "
        "upright by the EXIF orientation tag (PIL.ImageOps.exif_transpose)",
        "resize": "PIL bicubic to base_size x base_size, RGB",
        "crop_then": "bilinear antialiased resize to image_size when the box is not image_size square",
    }
