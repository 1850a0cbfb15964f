"""``dait-cache study PLAN``: the paper's studies as one resumable command."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from dait_cache.config import TrainConfig

from .errors import user_errors
from .options import CONTEXT
from .render import RichProgress, console, echo_or_write, out, show_or_write
from .train import train_teacher


def _list(value: str | None, kind=str):
    if value is None:
        return None
    try:
        return tuple(kind(v.strip()) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of {kind.__name__}s") from None


def _arch_map(value: str | None) -> dict[str, str]:
    pairs = {}
    for item in _list(value) or ():
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not PAPER_ARCH=ARCH (e.g. regnety_016=test_resnet)")
        paper, arch = item.split("=", 1)
        pairs[paper.strip()] = arch.strip()
    return pairs


# the train commands' help, written once there
TRAIN_HELP = {p.name: p.help for p in train_teacher.params}


# Train options a study passes to every run; unset ones keep the train commands' defaults.
def _opt(flag: str, kind):
    """A train option for every run of the study; its help names TrainConfig's default (unset: kept)."""
    field = flag.lstrip("-").split("/")[0].replace("-", "_")
    default = getattr(TrainConfig, field)
    return click.option(flag, type=kind, default=None, help=f"Every run: {TRAIN_HELP[field]} [default: {default}]")


PASS_THROUGH = [
    _opt("--epochs", click.IntRange(1)),
    _opt("--batch-size", click.IntRange(2)),
    _opt("--lr", float),
    _opt("--weight-decay", float),
    _opt("--lr-step", click.IntRange(1)),
    _opt("--lr-gamma", float),
    _opt("--temperature", float),
    click.option(
        "--pretrained/--no-pretrained",
        default=None,
        help=f"Every run: {TRAIN_HELP['pretrained']} "
        f"[default: {'pretrained' if TrainConfig.pretrained else 'no-pretrained'}]",
    ),
    _opt("--device", click.Choice(["auto", "cpu", "cuda"])),
    _opt("--workers", click.IntRange(0)),
    _opt("--val-fraction", click.FloatRange(0, 1, max_open=True)),
    _opt("--eval-test", click.Choice(["every", "selected"])),
    _opt("--checkpoint-minutes", float),
]


def pass_through(fn):
    for opt in reversed(PASS_THROUGH):
        fn = opt(fn)
    return fn


@click.command("study", context_settings=CONTEXT, short_help="Run one of the paper's studies, resumably.")
@click.argument("plan", type=click.Choice(["table1", "table2", "table3", "teachers", "lambda"]))
@click.option(
    "--dataset",
    "datasets",
    multiple=True,
    help="Encoded dataset (repeatable) [default: every dataset encoded in the workspace].",
)
@click.option("--seeds", default="0", help="Comma-separated seeds; every run is repeated per seed (-s<seed>).")
@click.option("--students", default=None, help="Only these students (comma-separated).")
@click.option("--methods", default=None, help="Only these methods (comma-separated).")
@click.option("--teachers", default=None, help="Only these intermediate teachers (comma-separated).")
@click.option("--fractions", default=None, help="Only these training fractions (comma-separated).")
@click.option(
    "--arch-map",
    default=None,
    help="Replace the paper's architectures, e.g. regnety_016=test_resnet,resnet18=test_resnet (a miniature on a CPU).",
)
@click.option("--dry-run", is_flag=True, help="Print the plan (runs, dependencies, states) and the commands.")
@click.option("--jobs", type=click.IntRange(1), default=1, help="Runs at once, one process each.")
@click.option("--devices", default=None, help="GPU ids (e.g. 0,1): each run process gets one.")
@pass_through
@click.pass_context
@user_errors
def study_command(
    ctx: click.Context,
    plan,
    datasets,
    seeds,
    students,
    methods,
    teachers,
    fractions,
    arch_map,
    dry_run,
    jobs,
    devices,
    **train,
) -> None:
    """The paper's studies (Tables 1-3, teacher study, lambda study) as one resumable command."""
    from dait_cache.dist import usable_cores
    from dait_cache.study.plans import StudyFilters, build_plan
    from dait_cache.study.runner import CANNOT, CONFLICT, NOT_DONE, execute
    from dait_cache.workspace import resolve_dataset, workspace_datasets

    workdir = ctx.obj["workdir"]
    if datasets:  # each must be encoded
        slugs = tuple(resolve_dataset(workdir, d) for d in datasets)
    else:  # every encoded one; in an empty workspace resolve_dataset says to encode first
        slugs = tuple(workspace_datasets(workdir)) or (resolve_dataset(workdir, None),)
    base = replace(TrainConfig(workdir=str(workdir)), **{k: v for k, v in train.items() if v is not None})
    filters = StudyFilters(_list(students), _list(methods), _list(teachers), _list(fractions, float))
    runs = build_plan(plan, slugs, _list(seeds, int) or (0,), filters, base, _arch_map(arch_map))
    if not runs:
        raise click.ClickException(f"the filters leave no run of plan {plan}")
    gpus = _list(devices)
    # a plan is often printed where it will not run (a cluster's login node): its GPUs count later
    _check_gpus(gpus, here=not dry_run)
    if dry_run:
        _print_plan(plan, runs, workdir)
        return
    cores = usable_cores()
    with RichProgress("epochs") as progress:
        states = execute(
            runs,
            workdir,
            jobs,
            list(gpus) if gpus else None,
            threads=max(1, cores // jobs),
            say=lambda msg: console.print(escape(msg)),
            show=progress,
        )
    _print_states(plan, runs, states)
    bad = [k for k, s in states.items() if s.startswith(NOT_DONE)]
    conflicts = [k for k in bad if states[k].startswith(CONFLICT)]
    cannot = [k for k in bad if states[k].startswith(CANNOT)]
    if bad:
        raise click.ClickException(
            f"{len(bad)} of {len(runs)} runs did not finish (see the table); rerun the "
            "same command to retry them: finished runs are kept"
            + ("; a folder holding other settings is used only once it is moved away" if conflicts else "")
            + ("; a run the cache cannot train waits for the re-encode its state names" if cannot else "")
        )
    out.print(f"all {len(runs)} runs finished; see `dait-cache report`")


def _check_gpus(gpus: tuple[str, ...], here: bool = True) -> None:
    """``--devices`` names GPU ids; with ``here``, GPUs this machine has."""
    if not gpus:
        return
    if not_ids := [g for g in gpus if not g.isdigit()]:
        raise click.BadParameter(f"{', '.join(not_ids)} is not a GPU id (0, 1, ...)", param_hint="--devices")
    if not here:
        return
    import torch

    have = torch.cuda.device_count()
    bad = [g for g in gpus if int(g) >= have]
    if bad:
        raise click.ClickException(
            f"--devices names GPU {', '.join(bad)}, but this machine has {have} GPU(s) (ids 0-{have - 1})"
            if have
            else f"--devices names GPU {', '.join(bad)}, but no CUDA GPU is visible"
        )


def _print_plan(plan: str, runs: list, workdir: Path) -> None:
    """``--dry-run``: the plan as a table, then each run's exact command."""
    from dait_cache.study.runner import run_state

    table = Table(title=f"study {plan}: {len(runs)} runs")
    for col in ("run", "depends on", "state"):
        table.add_column(col, overflow="fold")
    for r in runs:
        table.add_row(escape(r.key), escape(r.depends or "-"), run_state(workdir, r))
    out.print(table)
    for r in runs:
        click.echo(r.command(str(workdir)))


def _print_states(plan: str, runs: list, states: dict[str, str]) -> None:
    table = Table(title=f"study {plan}")
    table.add_column("run", overflow="fold")
    table.add_column("state", overflow="fold")
    for r in runs:
        table.add_row(escape(r.key), escape(states[r.key]))
    out.print(table)


def study_report(
    plan: str,
    records: list,
    metric: str,
    plots: Path | None,
    metric_key: str,
    fmt: str = "table",
    output: Path | None = None,
) -> None:
    """``report --study teachers|lambda``: the study's own table in ``fmt`` (to ``output`` when
    given), and its figures with --plots."""
    from dait_cache.report import markdown_table

    title, headers, texts, rows = _study_rows(plan, records, metric, metric_key)
    if not rows:
        raise click.ClickException(f"no runs of study {plan} in the workspace; run `dait-cache study {plan}` first")
    if fmt == "table":
        table = Table(title=title)
        for col in headers:
            table.add_column(col, overflow="fold")
        for row in texts:
            table.add_row(*row)
        show_or_write(table, output)
    else:
        text = {
            "markdown": lambda: markdown_table(title, headers, texts),
            "csv": lambda: _study_csv(rows),
            "json": lambda: (
                json.dumps({"study": plan, "metric": metric, "rows": [_cells_as_dicts(r) for r in rows]}, indent=2)
                + "\n"
            ),
        }[fmt]()
        echo_or_write(text, output)
    if output:
        console.print(f"wrote {output}")
    if plots:
        from dait_cache.study.figures import plot_lambda_study, plot_teacher_study

        written = []
        for dataset in sorted({r["dataset"] for r in rows}):
            mine = [r for r in rows if r["dataset"] == dataset]
            if plan == "teachers":
                written.append(
                    plot_teacher_study(mine, _cka(mine, metric_key), plots / f"{dataset}-teacher-study.png", metric_key)
                )
            else:
                written.append(plot_lambda_study(mine, plots / f"{dataset}-lambda-study.png", metric_key))
        console.print(f"wrote {', '.join(map(str, written))}")


def _study_rows(plan: str, records: list, metric: str, metric_key: str) -> tuple[str, list, list, list]:
    """(title, column headers, each row's cell texts, the rows as data) of a study's table."""
    from dait_cache.study.results import lambda_study, teacher_study

    def cell(c) -> str:
        return c.text() if c else "-"

    if plan == "teachers":
        rows = teacher_study(records, metric_key)
        headers = ["dataset", "intermediate teacher", "teacher top-1", "student", "student top-1"]
        texts = [
            [
                r["dataset"],
                r["teacher"] + (f" ({r['teacher_arch']})" if r["teacher_arch"] != r["teacher"] else ""),
                cell(r["teacher_top1"]),
                r["student"],
                cell(r["student_top1"]),
            ]
            for r in rows
        ]
        return f"teacher study: test top-1 (%), metric: {metric}", headers, texts, rows
    rows = lambda_study(records, metric_key)
    headers = ["dataset", "student", "k", "b", "strategy", "top-1"]
    texts = [[r["dataset"], r["student"], f"{r['k']:g}/E", f"{r['b']:g}", r["strategy"], cell(r["top1"])] for r in rows]
    return f"lambda study (lambda = k/E * epoch + b): test top-1 (%), metric: {metric}", headers, texts, rows


def _cells_as_dicts(row: dict) -> dict:
    """A study row for JSON: each cell as its mean, sample std, number of seeds and mixed settings."""
    from dait_cache.study.results import Cell

    return {
        k: ({"mean": v.mean, "std": v.std, "n": v.n, "mixed": list(v.mixed)} if isinstance(v, Cell) else v)
        for k, v in row.items()
    }


def _study_csv(rows: list[dict]) -> str:
    """Study rows as CSV: a cell's mean under its own name, then ``<name>_std`` and ``<name>_n``."""
    import csv
    import io

    flat = []
    for row in rows:
        record = {}
        for k, v in _cells_as_dicts(row).items():
            if isinstance(v, dict) or v is None and k.endswith("top1"):
                v = v or {}
                record.update({k: v.get("mean", ""), f"{k}_std": v.get("std", ""), f"{k}_n": v.get("n", "")})
            else:
                record[k] = v
        flat.append(record)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, list(dict.fromkeys(k for r in flat for k in r)), lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return buf.getvalue()


def _cka(rows: list[dict], metric_key: str) -> dict[str, float]:
    """Linear CKA of each teacher's test features (the weights of the metric's epoch) against the
    cached VLM test embeddings (read once per cache)."""
    from dait_cache.cache import open_cache
    from dait_cache.figures import METRIC_CHECKPOINT, teacher_vlm_cka

    by_cache: dict[Path, dict[Path, str]] = {}  # cache -> {teacher run: its name in the rows}
    for r in rows:
        if r["teacher_run"]:
            run = Path(r["teacher_run"])
            by_cache.setdefault(run.parent.parent / "cache", {})[run] = r["teacher_run"]
    values = {}
    for cache_dir, runs in by_cache.items():
        for run, v in teacher_vlm_cka(list(runs), open_cache(cache_dir), METRIC_CHECKPOINT[metric_key]).items():
            values[runs[run]] = v
    return values
