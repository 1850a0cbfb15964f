"""A study's results in its own layout: the teacher study (student accuracy per intermediate
teacher, Figs. 4-5, with linear CKA against the VLM, Fig. 6) and the lambda study (a (k, b) grid,
Fig. 7a, and the schedule strategies, Fig. 7b). Tables 1-3 use the report's Table-1 layout."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..report import RunRecord, mixed_settings, seed_stats
from ..train.runs import run_config
from .plans import STRATEGIES

TEACHER_TAG = re.compile(r"^t-(?P<teacher>.+)$")
LAMBDA_TAG = re.compile(r"^lam-k(?P<k>-?[0-9.e+-]+)-b(?P<b>-?[0-9.e+-]+)$")


@dataclass(frozen=True)
class Cell:
    """Mean, sample std and count over the finished seeds of one study point."""

    mean: float
    std: float
    n: int
    mixed: tuple[str, ...] = ()  # settings its seeds differ in besides the seed: not one experiment

    @property
    def value(self) -> float:
        """What a figure draws: the mean, or nothing for seeds of mixed settings."""
        return float("nan") if self.mixed else self.mean

    def text(self) -> str:
        text = f"{self.mean:.2f} ± {self.std:.2f} (n={self.n})" if self.n > 1 else f"{self.mean:.2f}"
        return text + (f" (mixed settings: {', '.join(self.mixed)})" if self.mixed else "")


def _cell(records: list[RunRecord], metric_key: str) -> Cell | None:
    finished = [r for r in records if r.status == "finished" and getattr(r, metric_key) is not None]
    if not finished:
        return None
    return Cell(*seed_stats([getattr(r, metric_key) for r in finished]), mixed=tuple(mixed_settings(finished)))


def teacher_study(records: list[RunRecord], metric_key: str) -> list[dict]:
    """Per (dataset, intermediate teacher): the teacher's and its DAIT-F student's accuracy."""
    rows = []
    keys = sorted(
        {(r.dataset, m["teacher"]) for r in records if r.role == "student" and (m := TEACHER_TAG.match(r.tag))}
    )
    for dataset, teacher in keys:
        students = [r for r in records if r.role == "student" and r.dataset == dataset and r.tag == f"t-{teacher}"]
        arch = _teacher_arch(students, teacher)
        teachers = [
            r
            for r in records
            if r.role == "teacher" and r.dataset == dataset and r.method == "dait" and r.arch == arch and not r.tag
        ]
        rows.append(
            {
                "dataset": dataset,
                "teacher": teacher,
                "teacher_arch": arch,
                "teacher_run": teachers[0].run_dir if teachers else None,
                "teacher_top1": _cell(teachers, metric_key),
                "student": students[0].arch,
                "student_top1": _cell(students, metric_key),
            }
        )
    return rows


def _teacher_arch(students: list[RunRecord], teacher: str) -> str:
    """The teacher's architecture as trained (a miniature may map the paper's name to another)."""
    for s in students:
        if run := run_config(Path(s.run_dir)).get("teacher_run"):
            return run_config(Path(run)).get("arch", teacher)
    return teacher


def lambda_study(records: list[RunRecord], metric_key: str) -> list[dict]:
    """Per (dataset, k, b) of lambda = k/E * epoch + b: the student's accuracy; named strategies
    (distill-first, ce-first) are the grid points they equal."""
    named = {kb: name for name, kb in STRATEGIES.items()}
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        if r.role != "student":
            continue
        if (m := LAMBDA_TAG.match(r.tag)) is not None:
            point = (float(m["k"]), float(m["b"]))
        elif r.tag.startswith("lam-") and r.tag[4:] in STRATEGIES:
            point = STRATEGIES[r.tag[4:]]
        else:
            continue
        groups.setdefault((r.dataset, r.arch, *point), []).append(r)
    return [
        {"dataset": d, "student": a, "k": k, "b": b, "strategy": named.get((k, b), ""), "top1": _cell(runs, metric_key)}
        for (d, a, k, b), runs in sorted(groups.items())
    ]
