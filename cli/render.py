"""Rich rendering for the CLI: progress bars, run summaries, report tables."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .signals import raise_pending

# In a log (a pipe, a file, CI) a long line stays one line: a path, or the command that continues
# a run, broken at rich's 80 columns for non-terminals could not be copied back; a table keeps its
# natural width, so its cells (run names) stay whole too (whatever COLUMNS says: CI runners and
# pytest-xdist set it to 80). A terminal wraps at its own width.
_LOG_WIDTH = 1000  # wider than any table the commands print


def _console(stream: TextIO, **kw) -> Console:
    plain = not stream.isatty()
    return Console(soft_wrap=plain, width=_LOG_WIDTH if plain else None, **kw)


console = _console(sys.stderr, stderr=True)
out = _console(sys.stdout)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


class RichProgress:
    """Adapts the library's (key, done, total) callbacks to one rich progress bar per key. On a
    non-terminal (CI, a pipe) there are no bars: a finished key gets one plain line, and the
    ``runs`` counter one line per run.

    ``unit``: what one step of every bar is ("views"), or a function of the bar's key giving the
    unit and how many of it one step is (``("images", batch_size)`` for a training bar, whose
    steps are batches). The ``runs`` counter shows no rate."""

    def __init__(self, unit: str | Callable[[str], tuple[str, float]], show: bool = True):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.unit_of = unit if callable(unit) else (lambda key: (unit, 1.0))
        self.plain = not console.is_terminal
        self.show = show  # off: under torchrun a rank other than 0, which only takes its stops
        self.bar = (
            None
            if self.plain or not show
            else Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console,
            )
        )
        self.tasks: dict[str, int] = {}
        self.said: dict[str, int] = {}

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc) if self.bar is not None else None

    def __call__(self, key: str, done: int, total: int) -> None:
        raise_pending()
        if not self.show:
            return
        if self.plain:
            # per-batch keys of training end in an epoch line of their own (epoch_line)
            if (done >= total or key == "runs") and self.said.get(key) != done and not key.startswith("epoch "):
                self.said[key] = done
                console.print(f"{key}: {done}/{total}", soft_wrap=True, markup=False)
            return
        if key not in self.tasks:
            self.tasks[key] = self.bar.add_task(key, total=total, rate="")
        task = self.bar.tasks[self.tasks[key]]
        unit, scale = self.unit_of(key)
        rate = f"{task.speed * scale:.3g} {unit}/s" if task.speed and key != "runs" else ""
        self.bar.update(self.tasks[key], completed=done, total=total, rate=rate)


def render_summary(run_dir: Path, summary: dict) -> None:
    table = Table(title=str(run_dir))
    for col in ("status", "epochs", "test top-1 (last)", "test top-1 (best val)", "best epoch"):
        table.add_column(col)
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    table.add_row(
        summary["status"],
        f"{summary['epochs_done']}/{summary['epochs']}",
        fmt(summary.get("test_top1_last")),
        fmt(summary.get("test_top1_best_val")),
        str(summary["best_epoch"] + 1) if summary.get("best_epoch", -1) >= 0 else "-",  # as the epoch lines count
    )
    out.print(table)
    if summary.get("teacher_run"):  # chosen by the library when --teacher was not given
        out.print(f"teacher: {summary['teacher_run']}")
    if "n_train" in summary:
        every = summary.get("capped") and summary["n_train_requested"] == summary["n_train"] + summary["n_val"]
        train = f"{summary['n_train']} train" + (" (all the validation split left)" if every else "")
        line = f"images: {train}, {summary['n_val']} val, {summary['n_test']} test"
        if summary.get("capped") and not every:  # a fraction below 1 that asked for more than val left
            line += f" (the fraction asked for {summary['n_train_requested']}; the validation split left fewer)"
        if summary["n_val"] == 0:
            line += "; no val split: best-val is the last epoch"
        out.print(line)


def epoch_line(row: dict) -> None:
    skip = {"epoch", "seconds", "eval_seconds", "images_per_s", "lr"}
    terms = "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in skip and isinstance(v, float))
    console.print(f"epoch {row['epoch'] + 1}: {terms}  ({row['seconds']:.1f} s, {row['images_per_s']:.0f} img/s)")


def show_or_write(rendered, output: Path | None) -> None:
    """A rich renderable on the terminal, or its text (160 columns, no colour) written to ``output``."""
    if output is None:
        out.print(rendered)
        return
    import os

    from dait_cache.io import atomic_write_bytes

    with open(os.devnull, "w") as sink:  # recorded, not shown
        buf = Console(record=True, width=160, file=sink)
        buf.print(rendered)
    atomic_write_bytes(output, buf.export_text().encode())


def echo_or_write(text: str, output: Path | None) -> None:
    """Text (Markdown, CSV, JSON) on stdout, or written to ``output``."""
    if output is None:
        import click

        click.echo(text, nl=False)  # flushed: rows before the stderr lines that follow them
        return
    from dait_cache.io import atomic_write_bytes

    atomic_write_bytes(output, text.encode())


def rich_table(table) -> Table:
    from dait_cache.report import cell, column_title

    title = f"test top-1 (%), metric: {table.metric}" + (f", deltas vs {table.baseline}" if table.baseline else "")
    rt = Table(title=title)
    rt.add_column("arch")
    rt.add_column("method")
    for col in table.columns:
        rt.add_column(column_title(col, table), justify="right")
    previous = None
    for row in table.rows:
        texts = []
        for col in table.columns:
            text, best = cell(table, row, col)
            texts.append(f"[bold green]{escape(text)}[/]" if best else escape(text))
        rt.add_row(escape(row[0]) if row[0] != previous else "", escape(row[1]), *texts)
        previous = row[0]
    return rt


def seed_lines(table) -> str:
    """The per-seed values behind each averaged cell: 'arch method: v0 / v1 / v2 (seeds 0, 1, 2)'."""
    lines = []
    for row, col in ((r, c) for r in table.rows for c in table.columns):
        samples = table.samples.get((row, col), [])
        if len(samples) > 1:
            values = " / ".join(f"{v:.2f}" for _, v in samples)
            seeds = ", ".join(str(s) for s, _ in samples)
            lines.append(f"  {row[0]} {row[1]}: {values} (seeds {seeds})")
    return "per seed, " + table.metric + ":\n" + "\n".join(lines) if lines else ""
