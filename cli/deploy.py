"""``dait-cache predict`` and ``dait-cache export``: a finished student on new photos, and as a file."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from dait_cache.errors import DaitError

from .errors import user_errors
from .options import CONTEXT
from .render import RichProgress, console, human_bytes, out

run_option = click.option(
    "--run",
    default=None,
    help="Run folder or run name (e.g. mobilenetv2-dait-f) in the workspace "
    "[default: the finished student with the best test top-1 of --checkpoint].",
)
checkpoint_option = click.option(
    "--checkpoint",
    type=click.Choice(["best", "last"]),
    default="best",
    help="best = the validation-selected weights; last = the final epoch's.",
)
METRIC_OF = {"best": "test_top1_best_val", "last": "test_top1_last"}


def load_run(workdir: Path, run: str | None, checkpoint: str):
    """The run named (or the best student), announced on stderr."""
    from dait_cache.deploy import find_run, load_run_model

    run_dir = find_run(workdir, run, METRIC_OF[checkpoint])
    try:
        rm = load_run_model(run_dir, checkpoint)
    except DaitError as exc:
        if run:  # the user's own choice: the line says it all
            raise
        # the workspace's pick, which the user did not name: say why it was taken, and the way out
        raise click.ClickException(
            f"{exc}; {run_dir.name} is the workspace's best student by test top-1 of its {checkpoint} "
            "checkpoint: name another run with --run"
        ) from None
    top1 = rm.summary.get(METRIC_OF[checkpoint])
    score = f"test top-1 {top1:.2f}%" if top1 is not None else "no test top-1"
    console.print(f"{'using' if run else 'best student:'} {run_dir} ({rm.checkpoint} checkpoint, {score})")
    return rm


class _Output:
    """Prediction rows on stdout as they come: JSON lines and CSV rows batch by batch (a stop
    keeps what was written, in whole lines), the table once at the end."""

    def __init__(self, fmt: str, top_k: int):
        self.fmt, self.top_k, self.kept = fmt, top_k, []
        if fmt == "csv":
            self._csv([["path"] + [f"{what}_{r}" for r in range(1, top_k + 1) for what in ("class", "prob")]])

    def _csv(self, rows: list[list[str]]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        click.echo(buf.getvalue(), nl=False)

    def add(self, predictions) -> None:
        if self.fmt == "json" and predictions:
            click.echo("\n".join(p.as_json() for p in predictions))
        elif self.fmt == "csv" and predictions:
            self._csv([[p.path] + [v for t in p.top_k for v in (t["class"], f"{t['prob']:.6f}")] for p in predictions])
        elif self.fmt == "table":
            self.kept += predictions

    def close(self) -> None:
        if not self.kept:
            return
        # a row per guess, a section per image: a column per rank ran off the terminal at --top-k 10
        table = Table()
        table.add_column("image", overflow="fold")
        table.add_column("rank", justify="right")
        table.add_column("class", overflow="fold")
        table.add_column("prob", justify="right")
        for p in self.kept:
            for rank, t in enumerate(p.top_k, 1):
                shown = escape(p.path) if rank == 1 else ""
                table.add_row(
                    shown,
                    str(rank),
                    escape(t["class"]),
                    f"{t['prob']:.3f}",
                    end_section=self.top_k > 1 and rank == len(p.top_k),
                )
        out.print(table)


@click.command("predict", context_settings=CONTEXT, short_help="Classify image files with a run or an exported model.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@run_option
@click.option(
    "--model",
    "model_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="An exported .onnx (run with onnxruntime), .pt2 (torch.export) or TorchScript .pt instead of a run.",
)
@click.option("--top-k", type=click.IntRange(1), default=5, help="Classes shown per image.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    help="table on a terminal; json = one JSON line per image; csv = one row per image.",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    help="Where a run's network runs (an exported model runs on the CPU: --model with --device cuda is refused).",
)
@click.option("--batch-size", type=click.IntRange(1), default=64, help="Images per forward pass.")
@click.option(
    "--workers", type=click.IntRange(0), default=None, help="Decode workers [default: one per core, at most 4]."
)
@checkpoint_option
@click.pass_context
@user_errors
def predict_command(
    ctx: click.Context, paths, run, model_file, top_k, fmt, device, batch_size, workers, checkpoint
) -> None:
    """Classify image files (and the images under folders) with a finished run or an exported model."""
    from dait_cache.deploy import find_images, iter_predictions, load_exported, torch_logits
    from dait_cache.dist import default_workers
    from dait_cache.vlm import resolve_device

    if run and model_file:
        raise click.UsageError("pass --run or --model, not both")
    if model_file and device == "cuda":  # not silently on the CPU
        raise click.UsageError(
            "--device cuda: an exported model runs on the CPU (onnxruntime's CPU provider, torch.export "
            "and TorchScript on the CPU); to classify on a GPU, pass --run NAME"
        )
    files = find_images(paths)
    if model_file:
        logits_of, prep, names, sidecar = load_exported(model_file)
        console.print(f"using {model_file} ({sidecar.get('format')}, run {sidecar.get('run')})")
    else:
        rm = load_run(ctx.obj["workdir"], run, checkpoint)
        logits_of, prep, names = torch_logits(rm.classifier, resolve_device(device)), rm.preprocessing, rm.class_names
    several = len(files) > batch_size  # one batch: no bar, no worker processes to start
    workers = (default_workers() if workers is None else workers) if several else 0
    output, done, failed = _Output(fmt, min(top_k, len(names))), 0, 0
    with RichProgress("images") if several else contextlib.nullcontext() as progress:
        for predictions, bad in iter_predictions(logits_of, prep, names, files, top_k, batch_size, workers):
            output.add(predictions)
            for path, why in bad:
                console.print(f"[red]skipped[/] {escape(path)}: {escape(why)}")
            done, failed = done + len(predictions) + len(bad), failed + len(bad)
            if progress:
                progress("images", done, len(files))
    output.close()
    if failed:
        raise click.ClickException(f"{failed} of {len(files)} images could not be read (listed above)")


@click.command(
    "export", context_settings=CONTEXT, short_help="Export a finished run as ONNX, torch.export or TorchScript."
)
@run_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "pt2", "torchscript"]),
    required=True,
    help="onnx (runs with onnxruntime), pt2 (torch.export.load; TorchScript's successor) or "
    "torchscript (torch.jit.load; deprecated by torch 2.14).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Model file [default: <run>/export/<run-name>.onnx, .pt2 or .pt]; the sidecar <output>.json goes beside it.",
)
@click.option("--opset", type=int, default=18, help="ONNX opset: 18 or newer, what torch's exporter writes.")
@checkpoint_option
@click.pass_context
@user_errors
def export_command(ctx: click.Context, run, fmt, output, opset, checkpoint) -> None:
    """Write a finished run as ONNX, a torch.export program or TorchScript taking uint8 RGB images,
    with a JSON sidecar."""
    from dait_cache.deploy.export import ENGINES, export_run

    rm = load_run(ctx.obj["workdir"], run, checkpoint)
    with console.status(f"exporting {rm.name} to {fmt}"):
        result = export_run(rm, fmt, output, opset)
    r = result.record
    out.print(f"wrote {result.path} ({human_bytes(result.size_bytes)}) and {result.sidecar}")
    out.print(
        f"input uint8 (N, 3, {r['image_size']}, {r['image_size']}) RGB; {r['num_classes']} classes; "
        f"{r['parameters']:,} parameters; {r['gflops']:.4f} GFLOPs per image"
    )
    engine = ENGINES[fmt]
    out.print(
        f"latency on this CPU, batch 1, median of 50: {engine} {result.latency_ms:.2f} ms, "
        f"PyTorch eager {result.eager_latency_ms:.2f} ms"
    )
