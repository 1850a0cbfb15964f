"""``dait-cache``: parse options, build a config, call the library, render with rich."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from dait_cache import __version__
from dait_cache.errors import DaitError

console = Console(stderr=True)
out = Console()

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


def user_errors(fn):
    """Turn library errors into one-line click errors (exit 1), never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DaitError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="dait-cache")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              default="./dait-work", envvar="DAIT_WORKDIR",
              help="Workspace holding caches and runs (env DAIT_WORKDIR).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def cli(ctx: click.Context, workdir: Path, verbose: bool) -> None:
    """DAIT distillation with a cached VLM: encode once, train teachers and students many times."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)], force=True)
    ctx.obj = {"workdir": workdir}


data_root_option = click.option(
    "--data-root", type=click.Path(file_okay=False, path_type=Path), default="./data",
    envvar="DAIT_DATA", help="Folder holding the datasets (env DAIT_DATA).")


@cli.command(context_settings=CONTEXT)
@data_root_option
@user_errors
def datasets(data_root: Path) -> None:
    """List the datasets and whether each is in place under --data-root."""
    from dait_cache.data import DATASETS, load_dataset

    table = Table(title=f"datasets under {data_root}")
    for col in ("name", "status", "train", "test", "classes"):
        table.add_column(col)
    for name in DATASETS:
        try:
            train = load_dataset(name, data_root, "train")
            test = load_dataset(name, data_root, "test")
        except DaitError as exc:
            table.add_row(name, "[red]missing[/]", "", "", "")
            console.print(f"[dim]{exc}[/]")
            continue
        table.add_row(name, "[green]ok[/]", str(len(train)), str(len(test)),
                      str(train.num_classes))
    out.print(table)


def main() -> None:
    cli(prog_name="dait-cache")


if __name__ == "__main__":
    main()
