"""The studies' figures (PNG): student accuracy per intermediate teacher with the teachers' linear
CKA against the VLM (Figs. 4-6), and the lambda grid as a heat map with the strategies (Fig. 7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..figures import METRIC_CHECKPOINT, METRIC_WORDS, WEIGHT_WORDS, _save, new_figure


def teacher_bars(rows: list[dict], cka: dict[str, float]) -> dict[str, list]:
    """What :func:`plot_teacher_study` draws, per teacher row: its label (the trained architecture
    beside the paper's name where they differ), the teacher's and the student's (mean, std) (nan, 0
    where none finished; a nan mean for seeds of mixed settings), and the teacher's CKA (nan where
    it was not measured)."""

    def bar(cell) -> tuple[float, float]:
        return (cell.value, cell.std) if cell else (np.nan, 0.0)

    return {
        "names": [
            r["teacher"] + (f"\n({r['teacher_arch']})" if r.get("teacher_arch", r["teacher"]) != r["teacher"] else "")
            for r in rows
        ],
        "teacher": [bar(r["teacher_top1"]) for r in rows],
        "student": [bar(r["student_top1"]) for r in rows],
        "cka": [cka.get(r["teacher_run"] or "", np.nan) for r in rows],
    }


def plot_teacher_study(rows: list[dict], cka: dict[str, float], path: Path, metric_key: str) -> Path:
    """Bars of the student's (and teacher's) top-1 per intermediate teacher; CKA bars beside.
    ``metric_key``: the report's (``test_top1_last`` or ``test_top1_best_val``)."""
    bars = teacher_bars(rows, cka)
    fig, (ax, ax_cka) = new_figure(1, 2, figsize=(12, 4))
    x = np.arange(len(rows))
    for offset, key, label in ((-0.2, "teacher", "intermediate teacher"), (0.2, "student", "student")):
        ax.bar(
            x + offset,
            [v for v, _ in bars[key]],
            0.4,
            label=label,
            yerr=[sd for _, sd in bars[key]],
            capsize=3,
        )
    ax.set(
        xticks=x,
        xticklabels=bars["names"],
        ylabel="test top-1 (%)",
        title=f"{rows[0]['dataset'] if rows else ''}: {rows[0]['student'] if rows else ''} "
        f"student per teacher\ntest top-1 at the {METRIC_WORDS[metric_key]}, mean ± std over seeds",
    )
    ax.legend(fontsize=8)
    ax_cka.bar(x, bars["cka"], color="tab:green")
    ax_cka.set(
        xticks=x,
        xticklabels=bars["names"],
        ylim=(0, 1),
        ylabel="linear CKA",
        title=f"teacher features vs VLM embeddings (test split)\nteachers' {WEIGHT_WORDS[METRIC_CHECKPOINT[metric_key]]}",
    )
    for a in (ax, ax_cka):
        a.tick_params(axis="x", rotation=20)
    return _save(fig, path)


def lambda_grid(rows: list[dict]) -> tuple[list[float], list[float], np.ndarray]:
    """What :func:`plot_lambda_study`'s heat map draws: the grid's k values (columns), b values
    (rows) and the mean top-1 at each (b, k), nan where no run finished or its seeds' settings differ."""
    grid = [r for r in rows if r["k"] >= 0]  # ce-first (k < 0) is no grid point: it has its own bar
    ks = sorted({r["k"] for r in grid})
    bs = sorted({r["b"] for r in grid})
    values = np.full((len(bs), len(ks)), np.nan)
    for r in grid:
        if r["top1"]:
            values[bs.index(r["b"]), ks.index(r["k"])] = r["top1"].value
    return ks, bs, values


def plot_lambda_study(rows: list[dict], path: Path, metric_key: str) -> Path:
    """Heat map of top-1 over (k, b), lambda = k/E * epoch + b; bars of the named strategies."""
    ks, bs, values = lambda_grid(rows)
    fig, (ax, ax_s) = new_figure(1, 2, figsize=(11, 4))
    finite = values[np.isfinite(values)]
    im = ax.imshow(
        values,
        cmap="viridis",
        origin="lower",
        vmin=finite.min() if finite.size else 0,
        vmax=finite.max() if finite.size else 1,
    )
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w", fontsize=9)
    ax.set(
        xticks=range(len(ks)),
        xticklabels=[f"{k:g}/E" for k in ks],
        yticks=range(len(bs)),
        yticklabels=[f"{b:g}" for b in bs],
        xlabel="k (CE weight growth per epoch)",
        ylabel="b (start)",
        title=f"{rows[0]['dataset'] if rows else ''}: test top-1 (%) at the {METRIC_WORDS[metric_key]}",
    )
    fig.colorbar(im, ax=ax)
    named = [r for r in rows if r["strategy"]]
    ax_s.bar(
        range(len(named)),
        [r["top1"].value if r["top1"] else np.nan for r in named],
        yerr=[r["top1"].std if r["top1"] else 0 for r in named],
        capsize=3,
        color="tab:orange",
    )
    ax_s.set(
        xticks=range(len(named)),
        xticklabels=[r["strategy"] for r in named],
        ylabel="test top-1 (%)",
        title=f"schedule strategies, {METRIC_WORDS[metric_key]}",
    )
    return _save(fig, path)
