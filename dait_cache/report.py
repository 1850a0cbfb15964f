"""Runs -> the paper's tables (Table 1 layout, Table 2 deltas, Table 3 fraction groups) and exports.

Every number comes from a run's ``summary.json`` (or, for the VLM row, from the cache itself).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .cache.reader import open_cache
from .config import arch_slug, prefixed_path
from .errors import CacheError, DaitError
from .locks import abandoned
from .train import checkpoint as ckpt
from .train.runs import RUN_SETTINGS, run_config, seed_tag

METHOD_ORDER = ("none", "kd", "rkd", "rise", "borlan", "vl2lite", "dait-l", "dait-f")
METRICS = {"last": "test_top1_last", "best-val": "test_top1_best_val"}
FORMATS = ("table", "markdown", "csv", "json")


@dataclass
class RunRecord:
    """One row of ``--format json``; values are the run's summary.json."""

    dataset: str
    role: str  # vlm | teacher | student
    arch: str
    method: str
    train_fraction: float
    status: str
    epochs_done: int
    epochs: int
    test_top1_last: float | None
    test_top1_best_val: float | None
    run_dir: str
    resumed: int = 0
    tag: str = ""
    n_train: int | None = None
    n_val: int | None = None
    seed: int | None = None
    val_top1_best: float | None = None  # what chooses among runs where test must not (a deployment)
    settings: dict = field(default_factory=dict)  # config.json's SEED_FREE settings: seeds of one cell share them


def _tag(run_dir: Path, arch: str, method: str, fraction: float, seed: int | None) -> str:
    """What the run's folder name adds to ``<arch>-<method>`` beyond the fraction and the seed it
    already records (runs that differ only in seed share a row and are averaged)."""
    prefix = f"{arch_slug(arch)}-{method}"
    tag = run_dir.name[len(prefix) :] if run_dir.name.startswith(prefix) else run_dir.name
    for known in (seed_tag(seed or 0), f"-frac{fraction:g}"):
        if known and tag.endswith(known):
            tag = tag[: -len(known)]
    return tag.lstrip("-")


# What must agree between the runs of one cell, which differ only in seed (the teacher differs
# with the seed: each seed's student learns from its own seed's teacher).
SEED_FREE = tuple(k for k in RUN_SETTINGS if k not in ("seed", "teacher")) + ("epochs",)


def mixed_settings(runs: list[RunRecord]) -> list[str]:
    """The SEED_FREE settings in which ``runs`` (the seeds of one cell) differ."""
    return [k for k in SEED_FREE if len({json.dumps(r.settings.get(k)) for r in runs}) > 1]


def _status(run_dir: Path, status: str) -> str:
    # a run killed without a chance to record it (SIGKILL, out of memory) still reads "running"
    return "killed" if status == "running" and abandoned(run_dir) else status


def _record(run_dir: Path, role: str, dataset: str) -> RunRecord | None:
    s = ckpt.read_summary(run_dir)
    if s is None:
        return None
    try:
        config = run_config(run_dir)
    except DaitError:  # a damaged config.json: the summary's numbers still stand
        config = {}
    # a damaged summary keeps no settings: the run's config.json still names them
    known = config if s.get("status") == "damaged" else s
    arch, method, frac = known.get("arch", "?"), known.get("method", "?"), float(known.get("train_fraction", 1.0))
    seed = known.get("seed")
    return RunRecord(
        dataset=dataset,
        role=role,
        arch=arch,
        method=method,
        train_fraction=frac,
        status=_status(run_dir, s.get("status", "unknown")),
        epochs_done=int(s.get("epochs_done", 0)),
        epochs=int(s.get("epochs", 0)),
        test_top1_last=s.get("test_top1_last"),
        test_top1_best_val=s.get("test_top1_best_val"),
        val_top1_best=s.get("val_top1_best"),
        run_dir=str(run_dir),
        resumed=int(s.get("resumed", 0)),
        tag=_tag(run_dir, arch, method, frac, seed),
        n_train=s.get("n_train"),
        n_val=s.get("n_val"),
        seed=seed,
        settings={k: config[k] for k in SEED_FREE if k in config},
    )


def collect_runs(workdir: Path, datasets: list[str] | None = None) -> list[RunRecord]:
    """Every run of the workspace (and one VLM zero-shot row per cache), sorted for display."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise DaitError(f"workspace {workdir} not found; run `dait-cache encode` first")
    records = []
    for ds_dir in sorted(p for p in workdir.iterdir() if p.is_dir()):
        if datasets and ds_dir.name not in datasets:
            continue
        try:
            cache = open_cache(ds_dir / "cache")
            zs = cache.zero_shot_top1()
            vlm = cache.manifest["vlm"]["name"]
            vlm = local.name if (local := prefixed_path(vlm, "local-dir")) else vlm
            records.append(
                RunRecord(ds_dir.name, "vlm", vlm, "zero-shot", 1.0, "finished", 0, 0, zs, zs, str(ds_dir / "cache"))
            )
        except CacheError:
            pass
        for role, sub in (("teacher", "teacher"), ("student", "students")):
            parent = ds_dir / sub
            if parent.is_dir():
                records += [r for d in sorted(parent.iterdir()) if d.is_dir() and (r := _record(d, role, ds_dir.name))]
    if datasets:
        missing = set(datasets) - {r.dataset for r in records}
        if missing:
            present = sorted({r.dataset for r in collect_runs(workdir)})
            raise DaitError(
                f"no runs for dataset(s) {', '.join(sorted(missing))} in {workdir}; "
                f"its datasets: {', '.join(present) or 'none'}"
            )
    return records


def damaged_notes(records: list[RunRecord]) -> list[str]:
    """One line per run whose summary.json is damaged: the tables leave its numbers out."""
    return [
        f"{r.run_dir}: its summary.json is damaged, so its numbers are left out; "
        "continue the run with --resume to rewrite it from the checkpoint"
        for r in records
        if r.status == "damaged"
    ]


@dataclass
class Table:
    """A Table-1 style grid: ``cells[(row, column)] = (value or None, text)``."""

    columns: list[tuple[str, float]]  # (dataset, train_fraction)
    rows: list[tuple[str, str, str]]  # (group, label, role)
    cells: dict = field(default_factory=dict)
    best: set = field(default_factory=set)  # (row, column) holding the best student value
    deltas: dict = field(default_factory=dict)  # (row, column) -> delta vs baseline
    metric: str = "last"
    baseline: str | None = None
    n_train: dict = field(default_factory=dict)  # column -> sorted training-set sizes of its runs
    no_val: set = field(default_factory=set)  # columns whose runs had no validation split
    samples: dict = field(default_factory=dict)  # (row, column) -> [(seed, value)] behind the cell


def _cell_text(r: RunRecord, value: float | None) -> str:
    num = "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"
    if r.status != "finished":
        return f"{num} ({r.status} {r.epochs_done}/{r.epochs})"
    return f"{num} (resumed)" if r.resumed else num


def row_key(r: RunRecord) -> tuple[str, str, str]:
    """(group, label, role) of a run's table row."""
    label = r.method + (f" [{r.tag}]" if r.tag else "")
    if r.role == "vlm":
        return ("VLM", f"{r.arch} zero-shot", "vlm")
    if r.role == "teacher":
        return ("teacher", f"{r.arch} {label}", "teacher")
    return (r.arch, label, "student")


def row_order(key: tuple[str, str, str]) -> tuple:
    """Sort key of a row: VLM, teachers, then students in the paper's method order."""
    group, label, role = key
    role_rank = {"vlm": 0, "teacher": 1, "student": 2}[role]
    method = label.split(" [")[0]
    return (role_rank, group, METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), label)


def seed_stats(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (ddof 1; 0 for one value), n) over a cell's seeds."""
    if not values:
        return math.nan, math.nan, 0
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, len(arr)


def _group_cell(runs: list[RunRecord], key: str) -> tuple[float | None, str, list]:
    """(mean or None while a seed is unfinished, text, per-seed (seed, value)) of one cell."""
    if len(runs) == 1:
        r = runs[0]
        value = getattr(r, key)
        return (value if r.status == "finished" else None), _cell_text(r, value), [(r.seed, value)]
    runs = sorted(runs, key=lambda r: (r.seed is None, r.seed or 0, r.run_dir))
    finished = [r for r in runs if r.status == "finished" and getattr(r, key) is not None]
    samples = [(r.seed, getattr(r, key)) for r in finished]
    mean, std, n = seed_stats([v for _, v in samples])
    text = "-" if not n else f"{mean:.2f} ± {std:.2f}"
    if mixed := mixed_settings(runs):
        return None, f"{text} (mixed settings: {', '.join(mixed)})", samples  # not one experiment's spread
    if n < len(runs):
        return None, f"{text} ({n}/{len(runs)} seeds finished)", samples
    return mean, f"{text} (n={n})", samples


def build_table(records: list[RunRecord], metric: str = "last", baseline: str | None = None) -> Table:
    """Arrange runs into Table 1; runs that differ only in seed share a cell (mean ± std); mark the
    best student per (arch, column); add deltas (of the means)."""
    if metric not in METRICS:
        raise DaitError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    key = METRICS[metric]
    trained = {(r.dataset, r.train_fraction) for r in records if r.role != "vlm"}
    bare = {(r.dataset, 1.0) for r in records if r.dataset not in {d for d, _ in trained}}
    columns = sorted(trained | bare, key=lambda c: (c[0], -c[1]))
    table = Table(columns=columns, rows=[], metric=metric, baseline=baseline)
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        row = row_key(r)
        cols = [c for c in columns if c[0] == r.dataset] if r.role == "vlm" else [(r.dataset, r.train_fraction)]
        for col in cols:
            groups.setdefault((row, col), []).append(r)
        if row not in table.rows:
            table.rows.append(row)
        if r.role != "vlm" and r.n_train is not None:
            col = (r.dataset, r.train_fraction)
            table.n_train[col] = sorted(set(table.n_train.get(col, [])) | {r.n_train})
            if r.n_val == 0:
                table.no_val.add(col)
    for place, runs in groups.items():
        value, text, samples = _group_cell(runs, key)
        table.cells[place] = (value, text)
        table.samples[place] = samples
    table.rows.sort(key=row_order)
    for group in {row[0] for row in table.rows if row[2] == "student"}:
        for col in columns:
            vals = [
                (table.cells[(row, col)][0], row)
                for row in table.rows
                if row[0] == group
                and row[2] == "student"
                and (row, col) in table.cells
                and table.cells[(row, col)][0] is not None
            ]
            if vals:
                top = max(v for v, _ in vals)
                table.best |= {(row, col) for v, row in vals if v == top}
            if baseline:
                base = next(
                    (
                        table.cells[(row, col)][0]
                        for row in table.rows
                        if row[0] == group and row[1] == baseline and (row, col) in table.cells
                    ),
                    None,
                )
                if base is not None:
                    for v, row in vals:
                        if row[1] != baseline:
                            table.deltas[(row, col)] = v - base
    return table


def column_title(col: tuple[str, float], table: Table | None = None) -> str:
    """Dataset and fraction, the training-set size of the column's runs, and "no val split"
    where best-val cannot select (it then equals the last epoch)."""
    title = col[0] if col[1] >= 1 else f"{col[0]} ({col[1]:.0%})"
    if table is not None and col in table.n_train:
        title += " n_train=" + "/".join(str(n) for n in table.n_train[col])
    if table is not None and col in table.no_val:
        title += ", no val split"
    return title


def cell(table: Table, row, col) -> tuple[str, bool]:
    """(text with delta, is best) of one cell; '' where the run does not exist."""
    if (row, col) not in table.cells:
        return "", False
    text = table.cells[(row, col)][1]
    if (row, col) in table.deltas:
        text += f" ({table.deltas[(row, col)]:+.2f})"
    return text, (row, col) in table.best


def markdown_table(title: str, head: list[str], rows: list[list[str]]) -> str:
    """A title line, a blank line and a Markdown table of ``rows`` under ``head``."""
    lines = [title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_markdown(table: Table) -> str:
    """The table as Markdown, bold marking the best per arch."""
    head = ["arch", "method"] + [column_title(c, table) for c in table.columns]
    title = (
        f"Test top-1 (%), metric: {table.metric}"
        + (f"; deltas vs {table.baseline}" if table.baseline else "")
        + "; **bold** = best per arch"
    )
    rows = []
    for row in table.rows:
        texts = []
        for col in table.columns:
            text, best = cell(table, row, col)
            texts.append(f"**{text}**" if best else text)
        rows.append([row[0], row[1]] + texts)
    return markdown_table(title, head, rows)


def to_json(records: list[RunRecord]) -> str:
    """The runs' summary numbers as JSON (one object per run)."""
    fields = (
        "dataset",
        "role",
        "arch",
        "method",
        "train_fraction",
        "seed",
        "status",
        "epochs_done",
        "epochs",
        "test_top1_last",
        "test_top1_best_val",
        "val_top1_best",
        "n_train",
        "n_val",
        "run_dir",
    )
    return json.dumps({"runs": [{k: asdict(r)[k] for k in fields} for r in records]}, indent=2) + "\n"


def to_csv(records: list[RunRecord]) -> str:
    """The runs' summary numbers as CSV, the columns of :func:`to_json`."""
    buf = io.StringIO()
    rows = json.loads(to_json(records))["runs"]
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["dataset"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def records_from_json(text: str) -> list[dict]:
    return json.loads(text)["runs"]
