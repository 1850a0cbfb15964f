"""``dait-cache report``: Table-1 style tables (or a study's), exports and figures of the workspace."""

from __future__ import annotations

from pathlib import Path

import click

from .errors import user_errors
from .options import CONTEXT
from .render import console, echo_or_write, rich_table, show_or_write
from .study import study_report


@click.command("report", context_settings=CONTEXT, short_help="Tables, exports and figures from the workspace.")
@click.option("--dataset", "datasets", multiple=True, help="Only these datasets (repeatable).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "markdown", "csv", "json"]),
    default="table",
    help="table on a terminal; markdown (the README's layout); csv / json: one record per run.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file instead of the terminal.",
)
@click.option(
    "--plots",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write PNG figures into this folder.",
)
@click.option(
    "--metric",
    type=click.Choice(["last", "best-val"]),
    default="last",
    help="Last-epoch test top-1, or test top-1 at the best validation epoch.",
)
@click.option(
    "--baseline",
    type=click.Choice(["none", "vl2lite"]),
    default=None,
    help="Add each method's delta over this baseline (Table 2).",
)
@click.option("--run", default=None, help="Run for the t-SNE / class-relation figures [default: a dait-f student].")
@click.option(
    "--study",
    type=click.Choice(["table1", "table2", "table3", "teachers", "lambda"]),
    default=None,
    help="A study's layout: Tables 1-3 (table2 with deltas vs vl2lite), or the teacher / lambda "
    "study's table and figures.",
)
@click.pass_context
@user_errors
def report_command(ctx: click.Context, datasets, fmt, output, plots, metric, baseline, run, study) -> None:
    """Tables (Table 1 layout, deltas, fraction groups), exports and figures from the workspace."""
    from dait_cache import report as rep
    from dait_cache.config import dataset_slug
    from dait_cache.io import prepare_output

    records = rep.collect_runs(ctx.obj["workdir"], [dataset_slug(d) for d in datasets] or None)
    if not records:
        raise click.ClickException(f"no runs in {ctx.obj['workdir']}; train something first")
    if run:  # checked before any table or figure is made
        from dait_cache.figures import choose_run

        if not plots:
            raise click.UsageError("--run chooses the run of the t-SNE / class-relation figures: add --plots DIR")
        choose_run([r for r in records if r.role != "vlm" and r.status == "finished"], run)
    if output:  # before any table or figure, after the checks that make nothing
        prepare_output(output)
    if plots:
        prepare_output(plots, "--plots", folder=True)
    for note in rep.damaged_notes(records):
        console.print(note)
    if study in ("teachers", "lambda"):
        return study_report(study, records, metric, plots, rep.METRICS[metric], fmt, output)
    if study == "table2" and baseline is None:
        baseline = "vl2lite"
    table = rep.build_table(records, metric, baseline)
    if baseline and not table.deltas:  # the title would promise deltas that no cell has
        console.print(f"no student of method {baseline} beside other students in a column: no deltas to show")
    if fmt == "table":
        show_or_write(rich_table(table), output)
    else:
        text = {
            "markdown": lambda: rep.to_markdown(table),
            "csv": lambda: rep.to_csv(records),
            "json": lambda: rep.to_json(records),
        }[fmt]()
        echo_or_write(text, output)
    if output:
        console.print(f"wrote {output}")
    if plots:
        from dait_cache.figures import figure_plan, make_figures

        plan = figure_plan(records, run)
        for note in plan["damaged"]:
            console.print(f"left out of the figures: {note}")
        written = make_figures(ctx.obj["workdir"], records, plots, rep.METRICS[metric], rep.METHOD_ORDER, plan)
        console.print(f"wrote {len(written)} figures to {plots}")
