"""Figures for the report (matplotlib Agg, PNG): curves, accuracy by method, t-SNE and class
relations of a run's test features (the paper's Fig. 3), linear CKA teacher vs VLM (Fig. 6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .cache.reader import Cache, PixelSource, open_cache
from .config import arch_slug
from .data.views import normalize_pixels
from .errors import DaitError
from .report import row_key, row_order, seed_stats
from .train import checkpoint as ckpt
from .train.data import make_loader
from .train.runs import load_run_backbone


def new_figure(nrows: int = 1, ncols: int = 1, figsize=(6, 4), **kw):
    """(figure, axes) on matplotlib's Agg canvas, without pyplot: no global backend switch and
    no figure registry left behind in the caller's process."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


# what the report's metric keys mean, in words a reader of a figure knows
METRIC_WORDS = {"test_top1_last": "last epoch", "test_top1_best_val": "best-on-validation epoch"}
# the weights a feature figure of that metric shows: the same epoch's (checkpoint.pt holds the last)
METRIC_CHECKPOINT = {"test_top1_last": "last", "test_top1_best_val": "best"}
WEIGHT_WORDS = {"last": "last-epoch weights", "best": "best-on-validation weights"}


def _save(fig, path: Path) -> Path:
    """Write the PNG (temp name, then rename); its titles also go into the PNG's Description, so a
    file names what it shows wherever it is copied."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    titles = [t for t in (fig.get_suptitle(), *(ax.get_title() for ax in fig.axes)) if t]
    fig.savefig(tmp, dpi=110, bbox_inches="tight", metadata={"Description": " | ".join(titles)})
    tmp.replace(path)
    return path


def plot_curves(run_dir: Path, path: Path) -> Path:
    """Loss terms, lambda and train/val/test top-1 per epoch of one run."""
    rows = ckpt.read_metrics(run_dir)
    if not rows:
        raise DaitError(f"{run_dir} has no metrics yet")
    fig, (ax_loss, ax_lam, ax_acc) = new_figure(1, 3, figsize=(14, 3.8))
    epochs = [r["epoch"] + 1 for r in rows]
    for key in ckpt.loss_terms(rows[0]):
        ax_loss.plot(epochs, [r.get(key) for r in rows], marker="o", ms=3, label=key)
    ax_loss.set(title="loss terms", xlabel="epoch")
    ax_loss.legend(fontsize=8)
    ax_lam.plot(epochs, [r["lambda"] for r in rows], color="k", marker="o", ms=3, label="lambda")
    ax_lam.set(title="lambda (CE weight) and learning rate", xlabel="epoch", ylim=(-0.05, 1.05), ylabel="lambda")
    ax_lr = ax_lam.twinx()
    ax_lr.plot(epochs, [r.get("lr", np.nan) for r in rows], color="tab:red", ls="--", label="lr")
    ax_lr.set_ylabel("learning rate", color="tab:red")
    for key in ("train_top1", "val_top1", "test_top1"):
        values = [np.nan if r.get(key) is None else r[key] for r in rows]  # test: only where reported
        ax_acc.plot(epochs, values, marker="o", ms=3, label=key.replace("_top1", ""))
    summary = ckpt.read_summary(run_dir) or {}
    if summary.get("best_epoch", -1) >= 0:
        ax_acc.axvline(summary["best_epoch"] + 1, color="grey", ls=":", label="best on validation")
    ax_acc.set(title="top-1 (%)", xlabel="epoch")
    ax_acc.legend(fontsize=8)
    fig.suptitle(f"{Path(run_dir).parent.parent.name} / {Path(run_dir).parent.name} / {Path(run_dir).name}", y=1.03)
    fig.subplots_adjust(wspace=0.4)  # room for the learning-rate axis between two panels
    return _save(fig, path)


def seed_curves(records: list, dataset: str, arch: str) -> dict[str, tuple]:
    """Per method (and tag) of one student arch on one dataset: (epochs, mean, std, n) of the
    validation top-1 over its seeds, on the epochs every seed has reached (std 0 for one seed)."""
    groups: dict[tuple, list] = {}  # the report's row (arch, method [tag], role) -> each seed's curve
    for r in records:
        if r.role == "student" and r.dataset == dataset and r.arch == arch:
            rows = ckpt.read_metrics(Path(r.run_dir))
            if rows:
                groups.setdefault(row_key(r), []).append([m["val_top1"] for m in rows])
    curves = {}
    for row in sorted(groups, key=row_order):  # the report's method order
        runs = groups[row]
        values = np.array([v[: min(map(len, runs))] for v in runs], dtype=np.float64)
        std = values.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(values.shape[1])
        curves[row[1]] = (np.arange(1, values.shape[1] + 1), values.mean(axis=0), std, len(runs))
    return curves


def plot_val_curves(records: list, path: Path, dataset: str, arch: str) -> Path:
    """Validation top-1 per epoch of every method of one student arch on one dataset: the mean
    over seeds, with a band of one standard deviation where there are several."""
    curves = seed_curves(records, dataset, arch)
    fig, ax = new_figure(figsize=(7, 4))
    for label, (epochs, mean, std, n) in curves.items():
        (line,) = ax.plot(epochs, mean, label=label + (f" (n={n})" if n > 1 else ""))
        if n > 1:
            ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.15, linewidth=0)
    seeds = max((n for *_, n in curves.values()), default=1)
    title = f"{dataset}: {arch} validation top-1 (%) per epoch, by method"
    if seeds > 1:
        title += "\nmean over seeds, band: ± 1 std"
    ax.set(title=title, xlabel="epoch", ylabel="val top-1 (%)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def method_mean(records: list, arch: str, method: str, metric_key: str) -> tuple[float, float, int]:
    """(mean, std, n) of the report's metric over the runs of one arch and method (seeds, tags).
    Never a maximum: picking the best of several runs by test accuracy selects on test."""
    values = [getattr(r, metric_key) for r in records if r.arch == arch and r.method == method]
    return seed_stats(values) if values else (0.0, 0.0, 0)


def accuracy_bars(records: list, metric_key: str, method_order: tuple) -> list[dict]:
    """What :func:`plot_accuracy_by_method` draws, per dataset column: its methods in order and,
    per student arch, the (mean, std, n) of each method over the column's finished runs."""
    students = [
        r for r in records if r.role == "student" and r.status == "finished" and getattr(r, metric_key) is not None
    ]
    columns = sorted({(r.dataset, r.train_fraction) for r in students}, key=lambda c: (c[0], -c[1]))
    panels = []
    for col in columns:
        here = [r for r in students if (r.dataset, r.train_fraction) == col]
        methods = [m for m in method_order if any(r.method == m for r in here)]
        methods += sorted({r.method for r in here} - set(methods))
        bars = {
            arch: [method_mean(here, arch, m, metric_key) for m in methods] for arch in sorted({r.arch for r in here})
        }
        panels.append({"column": col, "methods": methods, "bars": bars})
    return panels


def plot_accuracy_by_method(records: list, path: Path, metric_key: str, method_order: tuple) -> Path:
    """Grouped bars: methods on x, one bar per student arch, one panel per dataset column."""
    panels = accuracy_bars(records, metric_key, method_order)
    if not panels:
        raise DaitError("no finished student runs to plot")
    fig, axes = new_figure(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        col, methods, bars = panel["column"], panel["methods"], panel["bars"]
        width = 0.8 / max(len(bars), 1)
        for i, (arch, stats) in enumerate(bars.items()):
            ax.bar(
                np.arange(len(methods)) + i * width,
                [m for m, _, _ in stats],
                width,
                label=arch,
                yerr=[sd for _, sd, n in stats],
                capsize=2,
            )
        ax.set_xticks(np.arange(len(methods)) + width * (len(bars) - 1) / 2, methods, rotation=30)
        ax.set(
            title=f"{col[0]}{'' if col[1] >= 1 else f' ({col[1]:.0%} train)'}: test top-1 at the "
            f"{METRIC_WORDS[metric_key]}\nbars: mean over seeds, whiskers: std",
            ylabel="test top-1 (%)",
        )
        ax.legend(fontsize=8)
    return _save(fig, path)


@torch.no_grad()
def extract_features(
    run_dir: Path, cache: Cache, split: str = "test", batch_size: int = 64, workers: int = 0, checkpoint: str = "best"
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features of the clean view of every row of ``split`` under the run's ``checkpoint``
    weights (``best`` or ``last``), and the labels."""
    model = load_run_backbone(run_dir, cache.num_classes, head=False, checkpoint=checkpoint)
    loader = make_loader([PixelSource(cache, split)], workers, False)
    rows = np.arange(len(cache.labels(split)))
    loader.batch_sampler.set_plan(0, rows, np.zeros(len(rows), dtype=np.int64), batch_size)
    feats = []
    for pixels, _ in loader:
        fmap = model.forward_features(normalize_pixels(pixels, model.mean, model.std))
        feats.append(model.forward_head(fmap, pre_logits=True).float().numpy())
    return np.concatenate(feats), cache.labels(split)


def class_relation_matrix(feats: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Cosine similarity between the normalised class-mean features (C, C)."""
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True).clip(min=1e-12)
    means = np.stack(
        [f[labels == c].mean(0) if (labels == c).any() else np.zeros(f.shape[1]) for c in range(num_classes)]
    )
    means /= np.linalg.norm(means, axis=1, keepdims=True).clip(min=1e-12)
    return means @ means.T


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) between two representations of the same n inputs."""
    x = x.astype(np.float64) - x.mean(0)
    y = y.astype(np.float64) - y.mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def plot_tsne_and_relations(
    run_dir: Path, cache: Cache, path_tsne: Path, path_rel: Path, seed: int = 0, checkpoint: str = "best"
) -> tuple[Path, Path]:
    """Write a run's t-SNE of test features and its class-relation matrix (cosine of class means)
    under its ``checkpoint`` weights; return both paths."""
    from sklearn.manifold import TSNE

    feats, labels = extract_features(run_dir, cache, checkpoint=checkpoint)
    whose = f"{Path(run_dir).name}, {WEIGHT_WORDS[checkpoint]}"
    perplexity = float(max(2, min(30, (len(feats) - 1) // 3)))
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(feats)
    names, dataset = cache.class_names, Path(run_dir).parent.parent.name
    fig, ax = new_figure(figsize=(7.5, 6))
    if len(names) <= 30:  # a discrete colour (and marker) per class, named in a legend
        import matplotlib

        colours = matplotlib.colormaps["tab10"].colors
        for c, name in enumerate(names):
            mask = labels == c
            ax.scatter(emb[mask, 0], emb[mask, 1], s=10, color=colours[c % 10], marker="os^"[c // 10 % 3], label=name)
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, markerscale=1.5)
    else:
        sc = ax.scatter(emb[:, 0], emb[:, 1], c=labels, cmap="turbo", s=8)
        fig.colorbar(sc, ax=ax, label="class index")
    ax.set(title=f"{dataset}: t-SNE of test features\n{whose}", xticks=[], yticks=[])
    _save(fig, path_tsne)
    rel = class_relation_matrix(feats, labels, cache.num_classes)
    fig, ax = new_figure(figsize=(7, 6))
    off = rel[~np.eye(len(rel), dtype=bool)] if len(rel) > 1 else rel.ravel()
    im = ax.imshow(rel, cmap="viridis", vmin=float(np.nanmin(off)), vmax=float(np.nanmax(off)))  # the data's range
    ax.set(title=f"{dataset}: class relations (cosine of class means)\n{whose}")
    if len(names) <= 30:
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.set_yticks(range(len(names)), names, fontsize=6)
    else:
        ax.set(xlabel="class index", ylabel="class index")
    fig.colorbar(im, ax=ax, label="cosine (diagonal = 1 off the scale)")
    return path_tsne, _save(fig, path_rel)


def teacher_vlm_cka(teacher_runs: list[Path], cache: Cache, checkpoint: str = "best") -> dict[Path, float]:
    """Linear CKA between each teacher's test features (``checkpoint`` weights) and the cached
    VLM test embeddings of the clean view (read once for all of them)."""
    vlm = cache.img_emb("test")[:, 0].astype(np.float32)
    return {Path(r): linear_cka(extract_features(r, cache, checkpoint=checkpoint)[0], vlm) for r in teacher_runs}


def plot_cka(teacher_runs: list[Path], cache: Cache, path: Path, checkpoint: str = "best") -> tuple[Path, dict]:
    """Linear CKA between each teacher's test features and the cached VLM test embeddings."""
    values = {r.name: v for r, v in teacher_vlm_cka(teacher_runs, cache, checkpoint).items()}
    fig, ax = new_figure(figsize=(max(4, 1.5 * len(values)), 4))
    ax.bar(np.arange(len(values)), list(values.values()), color="tab:purple")
    ax.set_xticks(np.arange(len(values)), list(values), rotation=20)
    dataset = Path(cache.dir).parent.name  # the workspace's dataset folder
    ax.set(
        title=f"{dataset}: linear CKA, teacher vs VLM (test, clean view)\nteachers' {WEIGHT_WORDS[checkpoint]}",
        ylabel="CKA",
        ylim=(0, 1),
    )
    return _save(fig, path), values


def figure_plan(records: list, run: str | None = None) -> dict:
    """Which figures the runs allow: ``curves`` (every trained run with metrics, finished or not),
    ``accuracy`` (whether a student finished), ``val_curves`` ((dataset, student arch) pairs),
    ``features`` (the finished run of the t-SNE and class relations, see :func:`choose_run`) and
    ``cka`` (per dataset, its finished teachers); ``damaged`` says which runs' metrics cannot be
    read, whose curves are left out."""
    trained, damaged = [], []
    for r in records:
        try:
            if r.role != "vlm" and ckpt.read_metrics(Path(r.run_dir)):
                trained.append(r)
        except DaitError as exc:  # one damaged run costs its own curves, not every figure
            damaged.append(str(exc))
    finished = [r for r in records if r.role != "vlm" and r.status == "finished"]
    cka: dict[str, list[Path]] = {}
    for r in finished:
        if r.role == "teacher":
            cka.setdefault(r.dataset, []).append(Path(r.run_dir))
    return {
        "curves": trained,
        "accuracy": any(r.role == "student" for r in finished),
        "val_curves": sorted({(r.dataset, r.arch) for r in trained if r.role == "student"}),
        "features": choose_run(finished, run),
        "cka": dict(sorted(cka.items())),
        "damaged": damaged,
    }


def make_figures(
    workdir: Path, records: list, plots_dir: Path, metric_key: str, method_order: tuple, plan: dict
) -> list[Path]:
    """Every figure of ``plan`` (:func:`figure_plan` of ``records``); returns the written paths.
    Feature figures show the weights of the epoch ``metric_key`` reports."""
    plots_dir = Path(plots_dir)
    weights = METRIC_CHECKPOINT[metric_key]
    written = []
    for r in plan["curves"]:
        written.append(
            plot_curves(Path(r.run_dir), plots_dir / f"curves-{r.dataset}-{r.role}-{Path(r.run_dir).name}.png")
        )
    if plan["accuracy"]:
        written.append(plot_accuracy_by_method(records, plots_dir / "accuracy-by-method.png", metric_key, method_order))
    for dataset, arch in plan["val_curves"]:
        written.append(
            plot_val_curves(plan["curves"], plots_dir / f"val-curves-{dataset}-{arch_slug(arch)}.png", dataset, arch)
        )
    chosen = plan["features"]
    if chosen is not None:
        cache = open_cache(Path(chosen).parent.parent / "cache")
        written += plot_tsne_and_relations(
            chosen,
            cache,
            plots_dir / f"tsne-{Path(chosen).name}.png",
            plots_dir / f"class-relations-{Path(chosen).name}.png",
            checkpoint=weights,
        )
    for dataset, teachers in plan["cka"].items():
        cache = open_cache(Path(workdir) / dataset / "cache")
        written.append(plot_cka(teachers, cache, plots_dir / f"cka-{dataset}.png", weights)[0])
    return written


def choose_run(finished: list, run: str | None) -> Path | None:
    """The run of the t-SNE / class-relation figures: ``run`` (a name or folder), else a dait-f student."""
    if run:
        path = Path(run) if Path(run).is_dir() else None
        matches = [Path(r.run_dir) for r in finished if Path(r.run_dir).name == run or Path(r.run_dir) == path]
        if not matches:
            raise DaitError(
                f"--run {run!r} is not a finished run; finished: "
                f"{', '.join(Path(r.run_dir).name for r in finished) or 'none'}"
            )
        return matches[0]
    students = [Path(r.run_dir) for r in finished if r.role == "student"]
    dait_f = [p for p in students if "-dait-f" in p.name]
    return (dait_f or students or [Path(r.run_dir) for r in finished] or [None])[0]
