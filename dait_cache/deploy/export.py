"""Export a finished run as a file that runs without this package: ONNX (onnxruntime), a
torch.export program (``.pt2``, ``torch.export.load``) or TorchScript. The graph takes uint8 RGB
images (N, 3, H, W) at the view size, normalisation included, with a dynamic batch; a JSON
sidecar beside it holds class names, preprocessing and provenance.
"""

from __future__ import annotations

import io
import logging
import statistics
import time
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import DaitError, first_line
from ..io import atomic_write_json, commit, prepare_output, temp_path
from .bundle import RunModel, preprocessing_record
from .predict import Logits, onnx_logits, sidecar_path, torch_logits

FORMATS = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt"}
ENGINES = {"onnx": "onnxruntime", "pt2": "torch.export", "torchscript": "TorchScript"}
DEFAULT_OPSET = 18
MIN_OPSET = 18  # torch's exporter (dynamo) writes no older opset: it converts down only with a warning
INPUT_NAME, OUTPUT_NAME = "pixels", "logits"


@dataclass(frozen=True)
class ExportResult:
    path: Path
    sidecar: Path
    size_bytes: int
    latency_ms: float  # exported model, batch 1, median
    eager_latency_ms: float  # the same network in PyTorch eager mode
    record: dict


def example_batch(rm: RunModel, n: int = 2) -> torch.Tensor:
    """A fixed uint8 batch at the view size (seeded: the same export twice traces the same input)."""
    size = rm.preprocessing.image_size
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def gflops(model: torch.nn.Module, image_size: int) -> float:
    """GFLOPs of one image at ``image_size`` (torch's FLOP counter: a multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8))
    return counter.get_total_flops() / 1e9


def written_opset(path: Path) -> int:
    """The default-domain opset an ONNX file declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _export_onnx(rm: RunModel, tmp: Path, opset: int) -> None:
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's exporter needs it; say so before torch does)
    except ImportError:
        raise DaitError("ONNX export needs onnx and onnxscript: pip install 'dait-cache[export]'") from None
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise DaitError(
            f"--opset {opset}: torch's ONNX exporter writes opsets {MIN_OPSET} to {newest} with the installed "
            f"onnx; pass one of those (default {DEFAULT_OPSET})"
        )
    batch = torch.export.Dim("batch", min=1)
    quiet = logging.getLogger("onnxscript")  # a failed conversion logs tracebacks; the error below says it
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on its own internals, not on the model
            program = torch.onnx.export(
                rm.classifier,
                (example_batch(rm),),
                None,
                dynamo=True,
                verbose=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"pixels": {0: batch}},
                opset_version=opset,
            )
            program.save(str(tmp), external_data=False)
    except Exception as exc:  # the exporter's own failures come as many types; name it in one line
        raise DaitError(
            f"torch's ONNX exporter failed at --opset {opset} ({first_line(exc, 160)}); the default --opset {DEFAULT_OPSET} "
            "is the tested one"
        ) from None
    finally:
        quiet.setLevel(level)
    written = written_opset(tmp)
    if written != opset:  # a conversion the exporter could not do leaves its own opset, with a warning only
        raise DaitError(
            f"--opset {opset}: torch's ONNX exporter wrote opset {written} instead; pass --opset {written}, "
            "or convert the file with onnx.version_converter"
        )


def _export_torchscript(rm: RunModel, tmp: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter(
            "ignore", FutureWarning
        )  # torch.jit is deprecated in favour of export, still what users load
        traced = torch.jit.trace(rm.classifier, example_batch(rm))
        traced.save(str(tmp))


@contextmanager
def _quiet(*loggers: str):
    """torch's exporters log, and print, a failure's trace and graph before raising; the one line
    raised instead says it. ``loggers`` are silenced, and what is printed to stdout/stderr dropped."""
    saved = [(log, log.level) for log in map(logging.getLogger, loggers)]
    for log, _ in saved:
        log.setLevel(logging.CRITICAL)
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            yield
    finally:
        for log, level in saved:
            log.setLevel(level)


def _export_pt2(rm: RunModel, tmp: Path) -> None:
    # TorchScript's successor (torch.jit is deprecated since torch 2.14): one graph, loadable with
    # torch alone, the batch dimension left free (from 1: latency is measured at batch 1)
    from torch.export import Dim, export, save

    try:
        with torch.no_grad(), _quiet("torch.fx.experimental.symbolic_shapes", "torch.export", "torch._export"):
            program = export(rm.classifier, (example_batch(rm),), dynamic_shapes=({0: Dim("batch", min=1)},))
    except Exception as exc:  # torch.export's failures come as many types (data-dependent branches, ...)
        raise DaitError(
            f"torch.export could not export {rm.config.get('arch')} ({first_line(exc, 160)}); "
            "export it with --format onnx or torchscript instead"
        ) from None
    buffer = io.BytesIO()  # saved to a path, torch warns unless it ends in .pt2, as the temp name does not
    save(program, buffer)
    tmp.write_bytes(buffer.getvalue())


def load_pt2(path: Path) -> torch.nn.Module:
    """Load an exported torch.export program (``.pt2``); one line if it is not one."""
    try:
        with _quiet("torch.export"):  # it logs the deserialiser's traceback before raising
            return torch.export.load(str(path)).module()
    except Exception as exc:  # a zip, JSON or graph error, by which part of the file is damaged
        raise DaitError(
            f"{path} is not a readable torch.export program ({first_line(exc, 160)}); "
            "export it again with `dait-cache export --format pt2`"
        ) from None


def exported_logits(fmt: str, path: Path) -> Logits:
    """Logits of an exported file of format ``fmt``, run on the CPU by its own engine."""
    if fmt == "onnx":
        return onnx_logits(path)
    if fmt == "torchscript":
        return torch_logits(load_torchscript(path), torch.device("cpu"))
    program = load_pt2(path)  # exported in eval mode: it has no train/eval switch (eval() raises)

    @torch.no_grad()
    def run(pixels: torch.Tensor) -> np.ndarray:
        return program(pixels).float().numpy()

    return run


def load_torchscript(path: Path) -> torch.nn.Module:
    """Load an exported TorchScript file on the CPU; one line if it is not one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, ValueError) as exc:
            raise DaitError(
                f"{path} is not a readable TorchScript model ({first_line(exc, 160)}); "
                "export it again with `dait-cache export --format torchscript`"
            ) from None


def latency_ms(logits_of: Logits, image_size: int, runs: int = 50, warmup: int = 5) -> float:
    """Median wall time of one batch-1 call, in milliseconds."""
    x = torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8)
    for _ in range(warmup):
        logits_of(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        logits_of(x)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def sidecar_record(rm: RunModel, fmt: str, path: Path, opset: int | None) -> dict:
    """The JSON sidecar written beside an exported model: input, classes, provenance, accuracy, cost."""
    s, c = rm.summary, rm.config
    return {
        "format": fmt,
        "file": path.name,
        "opset": opset if fmt == "onnx" else None,
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "layout": "NCHW, RGB, 0-255",
            "shape": ["batch", 3, rm.preprocessing.image_size, rm.preprocessing.image_size],
        },
        "output": {"name": OUTPUT_NAME, "meaning": "logits; softmax gives class probabilities"},
        "image_size": rm.preprocessing.image_size,
        "base_size": rm.preprocessing.base_size,
        "crop_bottom": rm.preprocessing.crop_bottom,
        "exif_orientation": rm.preprocessing.exif_orientation,
        "preprocessing": preprocessing_record(rm.preprocessing),
        "mean": list(rm.classifier.backbone.mean),
        "std": list(rm.classifier.backbone.std),
        "class_names": rm.class_names,
        "num_classes": len(rm.class_names),
        "arch": c.get("arch"),
        "method": c.get("method"),
        "role": c.get("role"),
        "dataset": c.get("dataset_dir"),
        "run": rm.name,
        "checkpoint": rm.checkpoint,
        "cache_fingerprint": rm.fingerprint,
        "seed": c.get("seed"),
        "train_fraction": c.get("train_fraction"),
        "test_top1_last": s.get("test_top1_last"),
        "test_top1_best_val": s.get("test_top1_best_val"),
        "best_epoch": s.get("best_epoch"),
        "parameters": sum(p.numel() for p in rm.classifier.backbone.parameters()),
        "gflops": round(gflops(rm.classifier, rm.preprocessing.image_size), 6),
        "exported_by": f"dait-cache {__version__}, torch {torch.__version__}",
    }


def export_run(
    rm: RunModel, fmt: str, output: Path | None = None, opset: int = DEFAULT_OPSET, latency_runs: int = 50
) -> ExportResult:
    """Write ``rm`` as ``fmt`` (``onnx``, ``pt2`` or ``torchscript``) to ``output`` (default
    ``<run>/export/<run-name>[-last]<suffix>``) with its sidecar, and time it against eager PyTorch."""
    if fmt not in FORMATS:
        raise DaitError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    # torch.export and TorchScript record the mode they find: batch statistics and dropout of a
    # model left in training mode would be baked into the file
    rm.classifier.eval()
    # the last epoch's weights are another model: their export must not replace the best one's
    last = "-last" if rm.checkpoint == "last" else ""
    path = Path(output) if output else rm.run_dir / "export" / f"{rm.name}{last}{FORMATS[fmt]}"
    tmp = temp_path(prepare_output(path))
    try:
        if fmt == "onnx":
            _export_onnx(rm, tmp, opset)
        else:
            (_export_pt2 if fmt == "pt2" else _export_torchscript)(rm, tmp)
        record = sidecar_record(rm, fmt, path, opset)
        # An earlier export's sidecar would describe the new file (its run, classes, accuracy) if
        # this one stopped between the two writes; without one, predict refuses the file instead.
        sidecar_path(path).unlink(missing_ok=True)
        commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_json(sidecar_path(path), record)
    exported = exported_logits(fmt, path)
    size = rm.preprocessing.image_size
    return ExportResult(
        path,
        sidecar_path(path),
        path.stat().st_size,
        latency_ms(exported, size, latency_runs),
        latency_ms(torch_logits(rm.classifier, torch.device("cpu")), size, latency_runs),
        record,
    )
