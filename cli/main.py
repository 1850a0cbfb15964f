"""``dait-cache``: parse options, build a config, call the library, render with rich."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click
from rich.logging import RichHandler
from rich.table import Table

from dait_cache import __version__
from dait_cache.config import EncodeConfig
from dait_cache.errors import DaitError

from . import signals
from .deploy import export_command, predict_command
from .errors import user_errors
from .options import CONTEXT, compile_option, config_option, device_option, process_group, workdir_option
from .render import RichProgress, console, human_bytes, out, rich_table, seed_lines
from .report import report_command
from .study import study_command
from .train import train_student, train_teacher


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="dait-cache")
@workdir_option(group=True)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def cli(ctx: click.Context, workdir: Path, verbose: bool) -> None:
    """DAIT distillation with a cached VLM: encode once, train teachers and students many times."""
    # Other libraries (open_clip logs through the root logger) speak only for warnings.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
        force=True,
    )
    logging.getLogger("dait_cache").setLevel(logging.DEBUG if verbose else logging.INFO)
    ctx.obj = {"workdir": workdir}


data_root_option = click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    default="./data",
    envvar="DAIT_DATA",
    help="Folder holding the datasets (env DAIT_DATA).",
)


@cli.command(context_settings=CONTEXT, short_help="List the datasets in place under --data-root.")
@data_root_option
@user_errors
def datasets(data_root: Path) -> None:
    """List the datasets and whether each is in place under --data-root."""
    from dait_cache.data import DATASETS, DOWNLOADS, load_dataset

    table = Table(title=f"datasets under {data_root}")
    for col in ("name", "status", "train", "test", "classes", "how to get it"):
        table.add_column(col)
    for name in DATASETS:
        get = {"synthetic": "generated"}.get(name, "by hand: data/README.md")
        if name in DOWNLOADS:
            get = f"encode --download ({DOWNLOADS[name].approx_gb:g} GB)"
        try:
            train = load_dataset(name, data_root, "train")
            test = load_dataset(name, data_root, "test")
        except DaitError as exc:
            table.add_row(name, "[red]missing[/]", "", "", "", get)
            console.print(f"[dim]{exc}[/]")
            continue
        table.add_row(name, "[green]ok[/]", str(len(train)), str(len(test)), str(train.num_classes), get)
    out.print(table)


@cli.command(context_settings=CONTEXT, short_help="Run the VLM once over replayable views; write the cache.")
@click.option(
    "--dataset", default="synthetic", help="aircraft | cub | dogs | cars | nabirds | folder:<path> | synthetic"
)
@data_root_option
@click.option(
    "--download",
    is_flag=True,
    help="Fetch the dataset's official archives if its folder is absent (aircraft about 2.6 GB; cub 1.2 GB "
    "and dogs 0.8 GB, checked against their published digests; cars and nabirds cannot be fetched).",
)
@click.option(
    "--vlm",
    default=None,
    help="open_clip model: a name, hf-hub:org/repo or local-dir:/path "
    "[default: convnext_xxlarge; the bundled mini-VLM for synthetic]",
)
@click.option(
    "--pretrained", default=None, help="Weights tag or a local weights file [default: laion2b_s34b_b82k_augreg_soup]."
)
@click.option(
    "--views", type=click.IntRange(0), default=EncodeConfig.views, help="Augmented views K per training image."
)
@click.option(
    "--view-preset",
    type=click.Choice(["fgvc", "vl2lite"]),
    default=EncodeConfig.view_preset,
    help="Augmentation of the K views: fgvc (resized crop, rotation 15, jitter, flip) or "
    "vl2lite (VL2Lite's chain: two crops, rotation 60, blur, jitter, flip).",
)
@click.option(
    "--image-size",
    type=click.IntRange(8),
    default=None,
    help="View side [default: 224; 32 for synthetic, the mini-VLM's].",
)
@click.option(
    "--base-size", type=click.IntRange(8), default=None, help="Base image side [default: 256; 36 for synthetic]."
)
@click.option("--batch-size", type=click.IntRange(1), default=EncodeConfig.batch_size, help="VLM batch, in views.")
@click.option(
    "--workers",
    type=click.IntRange(0),
    default=EncodeConfig.workers,
    help="DataLoader decode/render workers [default: one per core, at most 4].",
)
@device_option
@click.option(
    "--seed",
    type=click.IntRange(0),
    default=EncodeConfig.seed,
    help="Seed of the view parameters (the cache's identity).",
)
@click.option("--shard-size", type=click.IntRange(1), default=EncodeConfig.shard_size, help="Samples per HDF5 shard.")
@click.option(
    "--prompts",
    type=click.Choice(["dataset", "ensemble"]),
    default=EncodeConfig.prompts,
    help="One dataset-specific prompt per class, or the prompt ensemble (rise and borlan need it).",
)
@click.option("--image-cache/--no-image-cache", default=EncodeConfig.image_cache, help="Store uint8 base images too.")
@click.option(
    "--on-bad-image",
    type=click.Choice(["fail", "skip"]),
    default=EncodeConfig.on_bad_image,
    help="A corrupt image stops encode, or is left out and listed in the manifest.",
)
@click.option("--crop-banner", is_flag=True, help="Cut FGVC-Aircraft's 20-px copyright banner.")
@click.option(
    "--exif-orientation/--no-exif-orientation",
    default=EncodeConfig.exif_orientation,
    help="Turn each photo upright by its EXIF orientation tag (as image viewers show it) before "
    "anything else sees it; training and predict follow the cache. Caches built before this "
    "option were not: --no-exif-orientation resumes them.",
)
@click.option("--overwrite", is_flag=True, help="Replace a cache built with other settings.")
@click.option(
    "--store-views",
    is_flag=True,
    help="Also keep every view's pixels (views/<split>.u8; N x (K+1) x 3 x H x W bytes, its "
    "size shown before it is written) so training copies views instead of rendering "
    "them: for GPUs that train faster than the CPU cores render. Works on a finished cache.",
)
@compile_option
@config_option
@click.pass_context
@user_errors
def encode(ctx: click.Context, **opts) -> None:
    """Run the frozen VLM once over replayable views and write the HDF5 cache."""
    from dait_cache.encode import encode as run_encode

    # unset VLM and sizes stay None: encode() fills the dataset's defaults, as it does for Python callers
    cfg = EncodeConfig(workdir=str(ctx.obj["workdir"]), data_root=str(opts.pop("data_root")), **opts)
    with process_group(cfg.device) as dist, RichProgress(_encode_unit, show=dist.is_main) as progress:
        result = run_encode(cfg, progress=progress)
    if not dist.is_main:  # rank 0 speaks for the group
        return
    if result.up_to_date:
        out.print(f"cache {result.cache_dir} is complete and matches these settings; nothing to do")
    else:
        out.print(
            f"encoded {result.views_encoded} views in {result.seconds:.1f} s "
            f"({result.views_per_second:.1f} views/s) -> {result.cache_dir}"
        )
    if result.skipped:
        out.print(f"[yellow]{result.skipped} unreadable images skipped (listed in manifest.json)[/]")
    out.print(
        f"size on disk {human_bytes(result.size_bytes)}; VLM zero-shot top-1 on test: {result.zero_shot_top1:.2f}%"
    )


def _find_cache_dir(workdir: Path, dataset: str | None) -> Path:
    from dait_cache.workspace import resolve_dataset

    return workdir / resolve_dataset(workdir, dataset) / "cache"


@cli.command(context_settings=CONTEXT, short_help="Check a cache: checksums, shapes, fingerprints.")
@click.option("--dataset", default=None, help="Dataset in the workspace (optional if only one).")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too (unknown files, no config.json).")
@click.option("--deep", is_flag=True, help="Also re-hash every source image against what was encoded.")
@click.pass_context
@user_errors
def verify(ctx: click.Context, dataset: str | None, strict: bool, deep: bool) -> None:
    """Check a cache: checksums, shapes, dtypes, fingerprints, row coverage (exit 1 on problems)."""
    from dait_cache.cache import cache_warnings, verify_cache
    from dait_cache.cache.verify import verify_sources
    from dait_cache.locks import encoding_now

    cache_dir = _find_cache_dir(ctx.obj["workdir"], dataset)
    writer = encoding_now(cache_dir)
    if writer:  # its unfinished state is not damage: no "interrupted", no repair command
        raise click.ClickException(
            f"{cache_dir} is being written by encode ({writer}); verify it once that has finished"
        )
    problems, warnings = verify_cache(cache_dir), cache_warnings(cache_dir)
    changed = verify_sources(cache_dir) if deep and not problems else []
    for p in problems:
        out.print(f"[red]x[/] {p}")
    for w in warnings:
        out.print(f"[yellow]![/] {w}")
    if problems and not any("manifest.json" in p and "repair:" in p for p in problems):
        from dait_cache.cache.manifest import encode_command
        from dait_cache.cache.view_store import STORE_DIR, rebuild_command

        # a damaged view store is rendered again only with the flag, which the cache's last
        # encode command may not have carried (the store is kept without it)
        store = any(p.startswith(f"{STORE_DIR}/") for p in problems)
        command = rebuild_command(cache_dir) if store else encode_command(cache_dir)
        out.print(f"repair: {command} re-encodes what is damaged and keeps what checks out")
    for c in changed:
        out.print(f"[red]x[/] {c}")
    if problems or changed or (strict and warnings):
        raise click.exceptions.Exit(1)
    out.print(
        f"[green]ok[/] {cache_dir}"
        + (f" ({len(warnings)} warning{'s' if len(warnings) > 1 else ''})" if warnings else "")
    )


def _encode_unit(key: str) -> tuple[str, float]:
    """encode's bars: the splits count views, the view stores images, a dataset download MB."""
    if key.startswith("download "):
        return ("MB", 1.0)
    return ("images", 1.0) if key.startswith("view store") else ("views", 1.0)


def _demo_unit(key: str) -> tuple[str, float]:
    """The demo's bars: encode's (views, images), then each run's bar epochs."""
    return _encode_unit(key) if key.startswith("view store") or key in ("train", "test") else ("epochs", 1.0)


@cli.command(context_settings=CONTEXT, short_help="The whole pipeline in miniature (CPU, no network).")
@click.pass_context
@user_errors
@click.option(
    "--jobs",
    type=click.IntRange(1),
    default=None,
    help="Runs trained at once, one thread each (the numbers do not depend on it) [default: one per core, at most 8].",
)
def demo(ctx: click.Context, jobs: int | None) -> None:
    """The embedded default: the whole pipeline on the synthetic world with the bundled mini-VLM."""
    from dait_cache.demo import DemoConfig, demo_table, deploy_demo, ordering_claims, run_demo
    from dait_cache.dist import usable_cores
    from dait_cache.minivlm import card
    from dait_cache.provenance import device_name, torch_version

    t0 = time.perf_counter()
    cfg = DemoConfig(workdir=str(ctx.obj["workdir"]))
    info = card()
    console.print(
        f"mini-VLM: {info['parameters']:,} parameters, zero-shot top-1 on the synthetic test "
        f"split {info['zero_shot_top1_synthetic_test']:.1f}% (chance {info['chance_top1']:.1f}%); "
        f"{len(cfg.plan())} runs: {len(cfg.seeds)} seeds x (teacher + {len(cfg.methods)} methods)"
    )
    with RichProgress(_demo_unit) as progress:
        records, _ = run_demo(cfg, step=lambda msg: console.print(f"[bold]{msg}[/]"), progress=progress, jobs=jobs)
    for metric in ("best-val", "last"):
        table = demo_table(records, metric)
        out.print(rich_table(table))
        out.print(seed_lines(table))
        for claim in ordering_claims(table):
            out.print(claim)
    out.print(
        f"measured on {device_name('cpu')}, {usable_cores()} cores, torch {torch_version()}: another CPU "
        "rounds differently and prints other per-seed numbers (README, 'The demo')"
    )
    with console.status("exporting the best student to ONNX"):
        deployed = deploy_demo(cfg)
    ex = deployed.export
    out.print(
        f"exported {ex.record['run']} to {ex.path} ({human_bytes(ex.size_bytes)}); batch-1 latency on "
        f"this CPU: onnxruntime {ex.latency_ms:.2f} ms, PyTorch eager {ex.eager_latency_ms:.2f} ms"
    )
    for (path, truth), p in zip(deployed.images, deployed.predictions):
        guesses = ", ".join(f"{t['class']} {t['prob']:.2f}" for t in p.top_k)
        out.print(f"  {Path(path).name} (a {truth}): {guesses}")
    out.print(
        f"demo finished in {time.perf_counter() - t0:.0f} s; workspace {ctx.obj['workdir']}. "
        f"Next: dait-cache --workdir {ctx.obj['workdir']} report --plots {Path(ctx.obj['workdir']) / 'plots'}; "
        f"dait-cache predict IMAGE --model {ex.path}"
    )


cli.add_command(train_teacher)
cli.add_command(train_student)
cli.add_command(predict_command)
cli.add_command(export_command)
cli.add_command(report_command)
cli.add_command(study_command)
for _command in cli.commands.values():  # --workdir after the command name too (datasets has no workspace)
    if _command.name != "datasets":
        workdir_option(group=False)(_command)


def main() -> None:
    signals.install()
    cli(prog_name="dait-cache")


if __name__ == "__main__":
    main()
