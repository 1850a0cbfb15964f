"""The CLI's rendering on its own (cli/render.py): sizes, plain progress lines for logs, the run
summary, epoch lines and the report's rich table, checked against text written out here."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
from rich.console import Console
from test_table import rec

from cli import render
from dait_cache import report as rep


@pytest.mark.parametrize(
    "n, said",
    [(0, "0.0 B"), (1023, "1023.0 B"), (1024, "1.0 KB"), (1536, "1.5 KB"), (3 * 1024**2, "3.0 MB"),
     (5 * 1024**3, "5.0 GB"), (2048 * 1024**3, "2048.0 GB")],
)  # fmt: skip
def test_sizes_are_in_binary_units_up_to_gigabytes(n, said):
    assert render.human_bytes(n) == said


@pytest.fixture
def log(monkeypatch) -> Console:
    """The CLI's consoles writing to a log (not a terminal), kept in memory."""
    console = Console(record=True, file=io.StringIO(), width=render._LOG_WIDTH, soft_wrap=True)
    monkeypatch.setattr(render, "console", console)
    monkeypatch.setattr(render, "out", console)
    return console


def test_a_log_gets_one_line_per_finished_bar_and_per_run(log):
    progress = render.RichProgress("views")
    assert progress.bar is None and progress.plain
    with progress:
        for key, done, total in [
            ("encode train", 1, 3),  # not finished: no line
            ("encode train", 3, 3),
            ("encode train", 3, 3),  # the same count again: not twice
            ("runs", 1, 4),  # the runs counter says each run as it starts
            ("runs", 1, 4),
            ("runs", 2, 4),
            ("epoch 1", 5, 5),  # a training bar ends in an epoch line of its own
        ]:
            progress(key, done, total)
    assert log.export_text().splitlines() == ["encode train: 3/3", "runs: 1/4", "runs: 2/4"]


def test_a_rank_that_does_not_show_prints_nothing(log):
    with render.RichProgress("views", show=False) as progress:
        progress("encode train", 3, 3)
    assert log.export_text() == ""


SUMMARY = {"status": "finished", "epochs_done": 4, "epochs": 4, "test_top1_last": 50.0, "best_epoch": 2,
           "n_train": 30, "n_val": 3, "n_test": 12, "capped": False, "n_train_requested": 30}  # fmt: skip


@pytest.mark.parametrize(
    "change, line",
    [
        ({}, "images: 30 train, 3 val, 12 test"),
        ({"n_val": 0}, "images: 30 train, 0 val, 12 test; no val split: best-val is the last epoch"),
        (
            {"capped": True, "n_train_requested": 33},
            "images: 30 train (all the validation split left), 3 val, 12 test",
        ),
        (
            {"capped": True, "n_train_requested": 40},  # a fraction asking for more than the split left
            "images: 30 train, 3 val, 12 test (the fraction asked for 40; the validation split left fewer)",
        ),
    ],
)
def test_the_summary_says_how_many_images_and_when_there_is_no_val_split(log, change, line):
    render.render_summary("runs/x", {**SUMMARY, **change})
    text = log.export_text()
    assert text.splitlines()[-1] == line
    row = [c.strip() for c in text.splitlines()[4].strip("│").split("│")]
    assert row == ["finished", "4/4", "50.00", "-", "3"]  # no best-val score; best epoch 3 counted from 1


def test_an_epoch_line_shows_the_float_terms_without_timing_or_the_learning_rate(log):
    row = {"epoch": 2, "loss": 0.123456, "top1": 50.0, "lr": 0.01, "seconds": 1.54, "eval_seconds": 0.2,
           "images_per_s": 119.6, "steps": 7}  # fmt: skip
    render.epoch_line(row)
    assert log.export_text() == "epoch 3: loss 0.1235  top1 50  (1.5 s, 120 img/s)\n"


def test_the_rich_table_names_each_arch_once_marks_the_best_and_lists_every_seed():
    mobile = lambda *a, **kw: replace(rec(*a, **kw), arch="mobilenetv2")  # noqa: E731
    runs = [
        rec("none", 50.0),
        rec("dait-f", 61.0, seed=0),
        rec("dait-f", 63.0, seed=1),
        mobile("none", 40.0),
        mobile("dait-f", 38.5),
    ]
    table = rep.build_table(runs, baseline="none")
    rt = render.rich_table(table)
    assert rt.title == "test top-1 (%), metric: last, deltas vs none"
    arch, method, cells = (list(c.cells) for c in rt.columns)
    assert (arch, method) == (["mobilenetv2", "", "resnet18", ""], ["none", "dait-f", "none", "dait-f"])
    assert cells == ["[bold green]40.00[/]", "38.50 (-1.50)", "50.00", "[bold green]62.00 ± 1.41 (n=2) (+12.00)[/]"]
    assert render.seed_lines(table) == "per seed, last:\n  resnet18 dait-f: 61.00 / 63.00 (seeds 0, 1)"
    assert render.seed_lines(rep.build_table(runs[:1])) == ""  # one seed: nothing to list
