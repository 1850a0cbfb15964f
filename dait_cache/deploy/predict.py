"""Classify image files with a finished run or an exported model: top-k classes and probabilities.

Images are decoded in DataLoader workers with the evaluation path's preprocessing; a file that
cannot be read is reported and skipped, never a reason to lose the other predictions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.folder import image_files
from ..data.workers import worker_options
from ..errors import BadImageError, DaitError, first_line
from ..progress import Progress
from .bundle import Preprocessing, sidecar_preprocessing

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
Logits = Callable[[torch.Tensor], np.ndarray]  # uint8 (N, 3, H, W) -> float logits (N, C)


@dataclass(frozen=True)
class Prediction:
    path: str
    top_k: list[dict]  # [{"class": name, "index": i, "prob": p}, ...], most probable first

    def as_json(self) -> str:
        return json.dumps({"path": self.path, "top_k": self.top_k})


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """The files named, and the image files under the folders named (sorted, recursively, without
    hidden names)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += image_files(p, IMAGE_SUFFIXES)  # dot-names (macOS's ._photo.jpg) left out
        elif p.is_file():
            found.append(p)
        else:
            why = "is not a file or folder" if p.exists() else "does not exist"  # /dev/null, a socket
            raise DaitError(f"{p} {why}; pass image files or folders of images")
    if not found:
        raise DaitError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {', '.join(map(str, paths))}")
    return found


class _Views(torch.utils.data.Dataset):
    def __init__(self, files: list[Path], prep: Preprocessing):
        self.files, self.prep = files, prep

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return i, self.prep.view(self.files[i]), None
        except BadImageError as exc:
            return i, None, exc.reason


def _collate(items):
    return items  # failures have no tensor; the caller stacks the good ones


def predict_files(
    logits_of: Logits,
    prep: Preprocessing,
    class_names: list[str],
    files: list[Path],
    progress: Progress | None = None,
    **options,
) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Every batch of :func:`iter_predictions` at once (``options``: its top_k, batch_size and
    workers), reporting ``progress`` in images: (predictions in file order, [(path, why it could
    not be read)])."""
    predictions: list[Prediction] = []
    failed: list[tuple[str, str]] = []
    for batch, bad in iter_predictions(logits_of, prep, class_names, files, **options):
        predictions += batch
        failed += bad
        if progress:
            progress("images", len(predictions) + len(failed), len(files))
    return predictions, failed


def iter_predictions(
    logits_of: Logits,
    prep: Preprocessing,
    class_names: list[str],
    files: list[Path],
    top_k: int = 5,
    batch_size: int = 64,
    workers: int = 0,
) -> Iterator[tuple[list[Prediction], list[tuple[str, str]]]]:
    """Batch by batch, in file order: (its predictions, [(path, why it could not be read)]), so
    that a caller can write each batch's rows as they come (a long folder, then a stop, keeps them)."""
    if top_k < 1 or batch_size < 1:
        raise DaitError("--top-k and --batch-size must be 1 or more")
    k = min(top_k, len(class_names))
    loader = torch.utils.data.DataLoader(
        _Views(files, prep),
        batch_size=batch_size,
        collate_fn=_collate,
        **worker_options(workers),
    )
    for items in loader:
        predictions: list[Prediction] = []
        good = [(i, view) for i, view, _ in items if view is not None]
        failed = [(str(files[i]), why) for i, view, why in items if view is None]
        if good:
            logits = torch.as_tensor(logits_of(torch.stack([v for _, v in good])), dtype=torch.float64)
            probs = logits.softmax(1)
            top_p, top_i = probs.topk(k, dim=1)
            for (i, _), ps, idx in zip(good, top_p.tolist(), top_i.tolist()):
                predictions.append(
                    Prediction(
                        str(files[i]), [{"class": class_names[c], "index": c, "prob": p} for c, p in zip(idx, ps)]
                    )
                )
        yield predictions, failed


def torch_logits(classifier: torch.nn.Module, device: torch.device) -> Logits:
    """Logits from a :class:`~dait_cache.deploy.bundle.PixelClassifier` (float32, as evaluation on a CPU)."""
    classifier = classifier.to(device).eval()

    @torch.no_grad()
    def run(pixels: torch.Tensor) -> np.ndarray:
        return classifier(pixels.to(device)).float().cpu().numpy()

    return run


def read_sidecar(model_path: Path) -> dict:
    """The sidecar of an exported model; one line naming ``dait-cache export`` when it is missing or damaged."""
    path = sidecar_path(model_path)
    model = Path(model_path).with_suffix("")
    if Path(model_path).suffix == ".json" and model.is_file():
        raise DaitError(f"{model_path} is the sidecar of {model}: pass the model file itself to --model")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DaitError(
            f"{path} not found: `dait-cache export` writes it beside the model, with the class "
            "names and preprocessing; keep the two files together"
        ) from None
    except ValueError as exc:
        raise DaitError(f"{path} is not valid JSON ({exc}); export the run again") from None


def sidecar_path(model_path: Path) -> Path:
    return Path(model_path).with_name(Path(model_path).name + ".json")


def onnx_logits(model_path: Path) -> Logits:
    """Logits from an exported ONNX file through onnxruntime (no timm, no run folder)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DaitError("onnxruntime is not installed: pip install 'dait-cache[export]'") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are about graph rewrites, not results
    try:
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a file that is not a model
        first = (str(exc).splitlines() or [""])[0][:200]
        raise DaitError(
            f"{model_path} is not a readable ONNX model ({type(exc).__name__}: {first}); "
            "export it again with `dait-cache export --format onnx`"
        ) from None
    name = session.get_inputs()[0].name
    return lambda pixels: session.run(None, {name: pixels.numpy()})[0]


def load_exported(model_path: str | Path) -> tuple[Logits, Preprocessing, list[str], dict]:
    """(logits function, preprocessing, class names, sidecar) of an exported ONNX, torch.export
    or TorchScript file."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise DaitError(f"model file {model_path} not found; pass a file written by `dait-cache export`")
    sidecar = read_sidecar(model_path)
    names = sidecar.get("class_names")
    if not isinstance(names, list) or not names:
        raise DaitError(f"{sidecar_path(model_path)} lists no class names; export the run again")
    from .export import FORMATS, exported_logits

    fmt = sidecar.get("format")
    logits = exported_logits(fmt if fmt in FORMATS else "onnx", model_path)
    prep = sidecar_preprocessing(sidecar)
    _check_matches(model_path, logits, prep.image_size, len(names))
    return logits, prep, names, sidecar


def _check_matches(model_path: Path, logits: Logits, image_size: int, num_classes: int) -> None:
    """The sidecar must describe this model (its input size, its classes): a sidecar of another
    export failed at the first batch, in onnxruntime's words or as an IndexError."""
    fix = f"keep the sidecar that `dait-cache export` wrote beside {model_path.name} (or export the run again)"
    try:
        out = logits(torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8))
    except Exception as exc:  # onnxruntime, torch.export and TorchScript raise their own types for a wrong input
        raise DaitError(
            f"{model_path} does not take the {image_size}x{image_size} input its sidecar "
            f"{sidecar_path(model_path).name} names ({first_line(exc, 160)}); {fix}"
        ) from None
    if tuple(out.shape) != (1, num_classes):
        raise DaitError(
            f"{model_path} gives {tuple(out.shape)[-1]} class scores but its sidecar "
            f"{sidecar_path(model_path).name} names {num_classes} classes; {fix}"
        )
