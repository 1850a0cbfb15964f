"""A study's own layouts (study/results.py) from RunRecords written out here: which runs make a
teacher-study row or a lambda-study point, and what a cell says."""

from __future__ import annotations

import json
import math

import pytest

from dait_cache.report import RunRecord
from dait_cache.study.results import Cell, lambda_study, teacher_study


def rec(role, arch, tag, value, seed=0, dataset="cub", status="finished", method=None):
    method = method or ("dait" if role == "teacher" else "dait-f")
    return RunRecord(dataset, role, arch, method, 1.0, status, 10, 10, value, value,
                     f"/nowhere/{dataset}-{role}-{arch}-{tag}-{seed}", tag=tag, seed=seed)  # fmt: skip


def test_a_cell_shows_its_spread_only_over_several_seeds():
    assert Cell(50.0, 0.0, 1).text() == "50.00"
    assert Cell(42.0, 2.83, 2).text() == "42.00 ± 2.83 (n=2)"
    mixed = Cell(42.0, 2.83, 2, mixed=("lr",))
    assert mixed.text() == "42.00 ± 2.83 (n=2) (mixed settings: lr)" and math.isnan(mixed.value)


def test_a_teacher_study_row_takes_finished_seeds_and_the_untagged_teacher_of_its_dataset():
    records = [
        rec("student", "resnet18", "t-vgg13", 40.0, seed=0),
        rec("student", "resnet18", "t-vgg13", 44.0, seed=1),
        rec("student", "resnet18", "t-vgg13", 10.0, seed=2, status="running"),
        rec("teacher", "vgg13", "", 60.0),
        rec("teacher", "vgg13", "other", 10.0),  # trained under another --name: not the study's
        rec("teacher", "vgg13", "", 90.0, dataset="dogs"),  # another dataset's
        rec("teacher", "vgg13", "", 20.0, method="none"),
    ]
    (row,) = teacher_study(records, "test_top1_last")
    assert (row["dataset"], row["teacher"], row["teacher_arch"], row["student"]) == (
        "cub",
        "vgg13",
        "vgg13",
        "resnet18",
    )
    assert row["teacher_top1"] == Cell(60.0, 0.0, 1) and row["teacher_run"] == records[3].run_dir
    s = row["student_top1"]
    assert (s.mean, s.n) == (42.0, 2) and s.std == pytest.approx(math.sqrt(8))


def test_lambda_points_are_students_per_arch_and_strategies_are_named():
    records = [
        rec("student", "resnet18", "lam-k1-b0", 50.0),
        rec("student", "resnet18", "lam-k1-b0", 54.0, seed=1),
        rec("student", "mobilenetv2", "lam-k1-b0", 30.0),
        rec("teacher", "regnety_016", "lam-k1-b0", 99.0),  # a teacher so named is no lambda point
        rec("student", "resnet18", "lam-k0.5-b0.25", 45.0),
        rec("student", "resnet18", "t-vgg13", 99.0),
        rec("student", "resnet18", "lam-ce-first", 20.0),  # a strategy run names itself
        rec("student", "resnet18", "lam-k-0.5-b1", 25.0),  # a falling lambda of a grid extended by hand
    ]
    points = lambda_study(records, "test_top1_last")
    got = [(p["student"], p["k"], p["b"], p["strategy"], p["top1"].mean, p["top1"].n) for p in points]
    assert got == [
        ("mobilenetv2", 1.0, 0.0, "distill-first", 30.0, 1),
        ("resnet18", -1.0, 1.0, "ce-first", 20.0, 1),
        ("resnet18", -0.5, 1.0, "", 25.0, 1),
        ("resnet18", 0.5, 0.25, "", 45.0, 1),
        ("resnet18", 1.0, 0.0, "distill-first", 52.0, 2),
    ]


def test_a_cell_of_seeds_trained_otherwise_says_so_and_draws_nothing():
    records = [rec("student", "resnet18", "lam-k1-b0", v, seed=s) for s, v in ((0, 50.0), (1, 54.0))]
    records[1].settings = {"lr": 0.01}
    (point,) = lambda_study(records, "test_top1_last")
    assert point["top1"].mixed == ("lr",) and math.isnan(point["top1"].value)


def test_a_teacher_study_row_finds_its_teacher_by_the_architecture_it_was_trained_as(tmp_path):
    """A miniature maps the paper's vgg13 to another network (--arch-map vgg13=test_nfnet): the row
    keeps the paper's name and takes the teacher that the students' config.json points to."""
    teacher_dir, student_dir = tmp_path / "teacher" / "test_nfnet-dait", tmp_path / "students" / "s"
    for folder, config in ((teacher_dir, {"arch": "test_nfnet"}), (student_dir, {"teacher_run": str(teacher_dir)})):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(config))
    student = rec("student", "resnet18", "t-vgg13", 40.0)
    student.run_dir = str(student_dir)
    records = [student, rec("teacher", "test_nfnet", "", 61.0), rec("teacher", "vgg13", "", 10.0)]
    (row,) = teacher_study(records, "test_top1_last")
    assert (row["teacher"], row["teacher_arch"], row["teacher_top1"].mean) == ("vgg13", "test_nfnet", 61.0)
