"""The report's table on its own (report.build_table and its cells), from RunRecords written out
here: what a cell says for unfinished seeds, NaN numbers, titles, deltas and best marks."""

from __future__ import annotations

import math

import pytest

from dait_cache import report as rep


def rec(method="none", value=50.0, seed=0, status="finished", fraction=1.0, n_train=100, n_val=10, **kw):
    return rep.RunRecord(
        "cub", "student", "resnet18", method, fraction, status, kw.pop("epochs_done", 10), 10, value, value,
        f"/runs/{method}-{fraction}-{seed}", seed=seed, n_train=n_train, n_val=n_val, **kw,
    )  # fmt: skip


def only_cell(table):
    (place,) = table.cells
    return table.cells[place]


def test_a_cell_waits_for_every_seed_and_says_how_many_finished():
    runs = [rec(value=50.0, seed=0), rec(value=30.0, seed=1, status="running", epochs_done=2), rec(value=62.0, seed=2)]
    assert only_cell(rep.build_table(runs)) == (None, "56.00 ± 8.49 (2/3 seeds finished)")
    done = [rec(value=50.0, seed=0), rec(value=62.0, seed=2)]
    assert only_cell(rep.build_table(done)) == (56.0, f"56.00 ± {math.sqrt(72):.2f} (n=2)")


def test_a_nan_number_shows_as_a_dash():
    assert only_cell(rep.build_table([rec(value=float("nan"))]))[1] == "-"
    assert only_cell(rep.build_table([rec(value=None, status="running", epochs_done=0)])) == (None, "- (running 0/10)")


def test_column_titles_name_fraction_sizes_and_a_missing_validation_split():
    runs = [rec(fraction=0.3, n_train=27, seed=0), rec(fraction=0.3, n_train=30, seed=1, n_val=0), rec(n_val=None)]
    table = rep.build_table(runs)
    assert [rep.column_title(c, table) for c in table.columns] == [
        "cub n_train=100",
        "cub (30%) n_train=27/30, no val split",
    ]
    assert rep.column_title(("cub", 0.3)) == "cub (30%)"


def test_deltas_are_against_the_baseline_row_of_the_same_arch_and_column():
    runs = [rec("none", 50.0), rec("kd", 52.5), rec("dait-f", 47.25), rec("kd", 10.0, fraction=0.3)]
    table = rep.build_table(runs, baseline="none")
    col, small = ("cub", 1.0), ("cub", 0.3)
    rows = {row[1]: row for row in table.rows}
    assert rep.cell(table, rows["none"], col) == ("50.00", False)
    assert rep.cell(table, rows["kd"], col) == ("52.50 (+2.50)", True)
    assert rep.cell(table, rows["dait-f"], col) == ("47.25 (-2.75)", False)
    assert rep.cell(table, rows["kd"], small) == ("10.00", True)  # no baseline run in that column: no delta
    assert rep.cell(table, rows["none"], small) == ("", False)


def test_every_best_student_is_marked_on_a_tie():
    table = rep.build_table([rec("none", 50.0), rec("kd", 50.0), rec("rkd", 49.0)])
    assert sorted(row[1] for row, _ in table.best) == ["kd", "none"]


def test_an_unknown_metric_is_refused():
    with pytest.raises(rep.DaitError, match=r"unknown metric 'top5'; valid: last, best-val"):
        rep.build_table([rec()], "top5")


def test_a_damaged_config_leaves_the_summarys_numbers_and_the_vlm_row_names_its_folder(tiny_cache_workspace, tmp_path):
    import shutil

    from dait_cache.train import checkpoint as ckpt

    ws = tmp_path / "ws"
    shutil.copytree(tiny_cache_workspace / "cub" / "cache", ws / "cub" / "cache")
    run = ws / "cub" / "students" / "resnet18-none"
    run.mkdir(parents=True)
    ckpt.write_summary(run, {"status": "finished", "arch": "resnet18", "method": "none", "test_top1_last": 41.5})
    (run / "config.json").write_text("{damaged")
    vlm, student = rep.collect_runs(ws)
    assert (student.test_top1_last, student.settings, student.status) == (41.5, {}, "finished")
    assert (vlm.role, vlm.arch) == ("vlm", "vlm")  # local-dir:<...>/vlm shows as the folder's name
