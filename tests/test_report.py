"""dait-cache report on run directories fabricated here (numbers known in advance)."""

import csv
import io
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from dait_cache import report as rep
from dait_cache.errors import DaitError
from dait_cache.locks import run_lock


def fake_run(
    ws: Path,
    dataset: str,
    role: str,
    arch: str,
    method: str,
    last: float,
    best: float,
    fraction: float = 1.0,
    status: str = "finished",
    done: int = 10,
    epochs: int = 10,
    resumed: int = 0,
    name: str = "",
) -> Path:
    sub = "teacher" if role == "teacher" else "students"
    tag = "" if fraction >= 1 else f"-frac{fraction:g}"
    run = ws / dataset / sub / (name or f"{arch}-{method}{tag}")
    run.mkdir(parents=True)
    summary = {
        "status": status,
        "epochs": epochs,
        "epochs_done": done,
        "resumed": resumed,
        "dataset": dataset,
        "role": role,
        "arch": arch,
        "method": method,
        "train_fraction": fraction,
        "test_top1_last": last,
        "test_top1_best_val": best,
        "val_top1_best": None if best is None else best - 1.0,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.json").write_text(json.dumps({"arch": arch, "method": method}))
    if status == "running":  # a run in progress holds its lock (this process stands in for it)
        run_lock(run).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    rows = [
        {
            "epoch": e,
            "loss": 2.0 / (e + 1),
            "ce": 1.5 / (e + 1),
            "lambda": e / epochs,
            "lr": 1e-4,
            "train_top1": 10.0 * e,
            "val_top1": 9.0 * e,
            "test_top1": 8.0 * e,
            "seconds": 1.0,
            "images_per_s": 5.0,
        }
        for e in range(done)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


@pytest.fixture
def ws(tmp_path):
    w = tmp_path / "ws"
    fake_run(w, "aircraft", "teacher", "regnety_016", "dait", 80.0, 81.0)
    for method, last, best in (
        ("dait-f", 70.0, 71.5),
        ("none", 60.0, 61.0),
        ("vl2lite", 65.0, 64.0),
        ("kd", 62.0, 63.0),
        ("dait-l", 70.0, 69.0),
    ):
        fake_run(w, "aircraft", "student", "resnet18", method, last, best)
    fake_run(w, "aircraft", "student", "mobilenetv2", "none", 55.0, 56.0)
    fake_run(w, "aircraft", "student", "mobilenetv2", "dait-f", 58.0, 57.0, status="running", done=4)
    fake_run(w, "cub", "student", "resnet18", "none", 50.0, 50.5)
    fake_run(w, "cub", "student", "resnet18", "dait-f", 54.0, 55.0, resumed=1)
    fake_run(w, "aircraft", "student", "resnet18", "none", 40.0, 41.0, fraction=0.3)
    fake_run(w, "aircraft", "student", "resnet18", "dait-f", 45.0, 44.0, fraction=0.3)
    return w


def test_table_numbers_order_best_and_deltas(ws):
    records = rep.collect_runs(ws)
    t = rep.build_table(records, "last", baseline="none")
    assert t.columns == [("aircraft", 1.0), ("aircraft", 0.3), ("cub", 1.0)]
    labels = [(group, label) for group, label, _ in t.rows]
    assert labels[0] == ("teacher", "regnety_016 dait")
    assert labels[1:] == [
        ("mobilenetv2", "none"),
        ("mobilenetv2", "dait-f"),
        ("resnet18", "none"),
        ("resnet18", "kd"),
        ("resnet18", "vl2lite"),
        ("resnet18", "dait-l"),
        ("resnet18", "dait-f"),
    ]
    r18 = {r[1]: r for r in t.rows if r[0] == "resnet18"}
    full, frac, cub = t.columns
    assert rep.cell(t, r18["dait-f"], full) == ("70.00 (+10.00)", True)
    assert rep.cell(t, r18["dait-l"], full) == ("70.00 (+10.00)", True)  # ties are both best
    assert rep.cell(t, r18["kd"], full) == ("62.00 (+2.00)", False)
    assert rep.cell(t, r18["none"], full) == ("60.00", False)
    assert rep.cell(t, r18["dait-f"], frac) == ("45.00 (+5.00)", True)
    assert rep.cell(t, r18["dait-f"], cub) == ("54.00 (resumed) (+4.00)", True)
    assert rep.cell(t, r18["kd"], cub) == ("", False)
    mb = [r for r in t.rows if r[0] == "mobilenetv2"]
    assert rep.cell(t, mb[1], full) == ("58.00 (running 4/10)", False)  # unfinished: shown, never best
    assert rep.cell(t, mb[0], full) == ("55.00", True)


def test_seeds_share_a_cell_only_when_every_other_setting_agrees(tmp_path):
    def seed_run(seed: int, **config):
        run = fake_run(tmp_path, "cub", "student", "resnet18", "none", 50.0 + seed, 51.0, name=f"resnet18-none-s{seed}")
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "seed": seed}))
        settings = {"arch": "resnet18", "method": "none", "lr": 1e-4, "epochs": 10, "seed": seed, **config}
        (run / "config.json").write_text(json.dumps({**settings, "teacher": None, "workers": seed}))

    seed_run(1)
    seed_run(2)
    cell = rep.build_table(rep.collect_runs(tmp_path)).cells[(("resnet18", "none", "student"), ("cub", 1.0))]
    assert cell == (51.5, f"51.50 ± {np.std([51.0, 52.0], ddof=1):.2f} (n=2)")  # workers do not count
    seed_run(3, lr=3e-3, epochs=20)
    cell = rep.build_table(rep.collect_runs(tmp_path)).cells[(("resnet18", "none", "student"), ("cub", 1.0))]
    assert cell == (None, "52.00 ± 1.00 (mixed settings: lr, epochs)")  # not one experiment's spread


def test_a_folder_tag_makes_its_own_row_whose_seeds_are_listed_in_seed_order(tmp_path):
    """What a run folder's name adds beyond arch, method, fraction and seed is a row of its own
    (`dait-f [t-vgg13]`); its seeds are listed by number (seed 10 after seed 2, which its folder
    name sorts before), and the JSON carries each run's seed and split sizes."""
    for seed, value in ((0, 60.0), (2, 64.0), (10, 71.0)):
        name = "resnet18-dait-f-t-vgg13" + (f"-s{seed}" if seed else "")
        run = fake_run(tmp_path, "cub", "student", "resnet18", "dait-f", value, value, name=name)
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "seed": seed, "n_train": 300, "n_val": 0}))
    fake_run(tmp_path, "cub", "student", "resnet18", "dait-f", 50.0, 50.0)
    records = rep.collect_runs(tmp_path)
    t = rep.build_table(records)
    col = ("cub", 1.0)
    tagged = ("resnet18", "dait-f [t-vgg13]", "student")
    assert t.rows == [("resnet18", "dait-f", "student"), tagged]
    assert t.samples[(tagged, col)] == [(0, 60.0), (2, 64.0), (10, 71.0)]
    assert t.cells[(tagged, col)] == (65.0, f"65.00 ± {np.std([60.0, 64.0, 71.0], ddof=1):.2f} (n=3)")
    assert t.n_train[col] == [300] and col in t.no_val  # --val-fraction 0
    assert rep.column_title(col, t) == "cub n_train=300, no val split"
    runs = {Path(r["run_dir"]).name: r for r in rep.records_from_json(rep.to_json(records))}
    assert [(r["seed"], r["n_train"], r["n_val"]) for r in runs.values()] == [
        (None, None, None),
        (0, 300, 0),
        (10, 300, 0),
        (2, 300, 0),
    ]


def test_validation_curves_are_the_mean_and_std_over_seeds(tmp_path):
    from dait_cache.figures import seed_curves

    curves = {("dait-f", 0): [10.0, 20.0, 30.0], ("dait-f", 1): [14.0, 22.0, 33.0, 40.0], ("none", 0): [5.0, 6.0]}
    for (method, seed), val in curves.items():
        run = fake_run(
            tmp_path,
            "cub",
            "student",
            "resnet18",
            method,
            1.0,
            1.0,
            name=f"resnet18-{method}" + (f"-s{seed}" if seed else ""),
        )
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "seed": seed}))
        (run / "metrics.jsonl").write_text(
            "".join(json.dumps({"epoch": e, "val_top1": v}) + "\n" for e, v in enumerate(val))
        )
    other = fake_run(tmp_path, "dogs", "student", "resnet18", "none", 1.0, 1.0)  # another dataset's curve
    (other / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "val_top1": 99.0}) + "\n")
    got = seed_curves(rep.collect_runs(tmp_path), "cub", "resnet18")
    assert list(got) == ["none", "dait-f"]  # the report's method order
    epochs, mean, std, n = got["dait-f"]
    both = np.array([[10.0, 20.0, 30.0], [14.0, 22.0, 33.0]])  # the epochs both seeds reached
    assert n == 2 and epochs.tolist() == [1, 2, 3]
    assert np.allclose(mean, both.mean(axis=0)) and np.allclose(std, both.std(axis=0, ddof=1))
    epochs, mean, std, n = got["none"]
    assert (n, epochs.tolist(), mean.tolist(), std.tolist()) == (1, [1, 2], [5.0, 6.0], [0.0, 0.0])
    # drawn: a band of one std where there are several seeds, and a title that says so
    from dait_cache.figures import plot_val_curves

    fig = plot_val_curves(rep.collect_runs(tmp_path), tmp_path / "v.png", "cub", "resnet18")
    assert_real_png(fig)
    assert (
        "cub: resnet18 validation top-1 (%) per epoch, by method\nmean over seeds, band: ± 1 std"
        in (Image.open(fig).info["Description"])
    )
    one = plot_val_curves(rep.collect_runs(tmp_path), tmp_path / "one.png", "dogs", "resnet18")
    assert "band" not in Image.open(one).info["Description"]  # one seed: no band to explain


def test_a_folder_without_a_summary_is_no_run_and_a_missing_workspace_is_named(tmp_path):
    from dait_cache.figures import plot_accuracy_by_method, plot_curves

    fake_run(tmp_path, "cub", "student", "resnet18", "none", 40.0, 41.0)
    (tmp_path / "cub" / "students" / "resnet18-kd").mkdir()  # begun, not yet recorded
    assert [Path(r.run_dir).name for r in rep.collect_runs(tmp_path)] == ["resnet18-none"]
    with pytest.raises(DaitError, match=rf"^workspace {tmp_path / 'nope'} not found; run `dait-cache encode` first$"):
        rep.collect_runs(tmp_path / "nope")
    # what the figures' plan leaves out, the figure functions refuse in one line when called directly
    with pytest.raises(DaitError, match="resnet18-kd has no metrics yet$"):
        plot_curves(tmp_path / "cub" / "students" / "resnet18-kd", tmp_path / "c.png")
    teachers = [r for r in rep.collect_runs(tmp_path) if r.role == "teacher"]
    with pytest.raises(DaitError, match="^no finished student runs to plot$"):
        plot_accuracy_by_method(teachers, tmp_path / "a.png", "test_top1_last", rep.METHOD_ORDER)


def test_best_val_metric_changes_the_winner(ws):
    t = rep.build_table(rep.collect_runs(ws), "best-val", baseline="vl2lite")
    r18 = {r[1]: r for r in t.rows if r[0] == "resnet18"}
    full = ("aircraft", 1.0)
    assert rep.cell(t, r18["dait-f"], full) == ("71.50 (+7.50)", True)
    assert rep.cell(t, r18["dait-l"], full) == ("69.00 (+5.00)", False)
    assert rep.cell(t, r18["none"], full) == ("61.00 (-3.00)", False)


def test_json_csv_markdown_carry_the_summary_numbers(ws):
    records = rep.collect_runs(ws)
    runs = rep.records_from_json(rep.to_json(records))
    assert len(runs) == 12
    for r in runs:
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        shared = set(r) & set(summary)  # the fixture's summaries lack seed, n_train and n_val
        assert len(shared) == 11 and "test_top1_best_val" in shared, shared
        for key in shared:
            assert r[key] == summary[key], key
    rows = list(csv.DictReader(io.StringIO(rep.to_csv(records))))
    assert [float(r["test_top1_last"]) for r in rows] == [r["test_top1_last"] for r in runs]
    md = rep.to_markdown(rep.build_table(records))
    assert "| resnet18 | dait-f | **70.00** | **45.00** | **54.00 (resumed)** |" in md
    assert "58.00 (running 4/10)" in md


def test_cli_formats_and_output_file(ws, tmp_path):
    r = CliRunner().invoke(cli, ["--workdir", str(ws), "report", "--format", "json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)["runs"]) == 12
    out = tmp_path / "t.md"
    r = CliRunner().invoke(
        cli, ["--workdir", str(ws), "report", "--format", "markdown", "--output", str(out), "--dataset", "cub"]
    )
    assert r.exit_code == 0 and "| resnet18 | dait-f | **54.00 (resumed)** |" in out.read_text()
    assert "aircraft" not in out.read_text()
    r = CliRunner().invoke(cli, ["--workdir", str(ws), "report", "--baseline", "none"])
    assert r.exit_code == 0 and "deltas vs none" in r.output and "no deltas to show" not in r.output
    # a baseline without runs: the title alone promised deltas
    r = CliRunner().invoke(cli, ["--workdir", str(ws), "report", "--baseline", "vl2lite", "--dataset", "cub"])
    assert r.exit_code == 0 and "no student of method vl2lite beside other students" in " ".join(r.output.split())
    r = CliRunner().invoke(
        cli, ["--workdir", str(ws), "report", "--baseline", "none", "--output", str(tmp_path / "t.txt")]
    )
    text = (tmp_path / "t.txt").read_text()
    assert r.exit_code == 0 and "70.00 (+10.00)" in text and "58.00 (running 4/10)" in text
    # Table 2: deltas vs vl2lite unless another baseline is named
    for extra, baseline, dait_f in (
        ([], "vl2lite", "70.00 (+5.00)"),
        (["--baseline", "none"], "none", "70.00 (+10.00)"),
    ):
        r = CliRunner().invoke(cli, ["--workdir", str(ws), "report", "--study", "table2", *extra])
        assert r.exit_code == 0 and f"deltas vs {baseline}" in r.output and dait_f in r.output, r.output
    r = CliRunner().invoke(cli, ["--workdir", str(ws), "report", "--dataset", "dogs"])
    assert r.exit_code == 1 and "no runs for dataset(s) dogs" in r.output
    assert f"in {ws}; its datasets: aircraft, cub" in " ".join(r.output.split())
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(cli, ["--workdir", str(tmp_path / "empty"), "report"])
    assert r.exit_code == 1 and r.output == f"Error: no runs in {tmp_path / 'empty'}; train something first\n"
    (tmp_path / "afile").write_text("")  # tracebacks from mkdir before, after the table was shown
    for flag, where in (("--output", "afile/x.md"), ("--plots", "afile/figs")):
        r = CliRunner().invoke(cli, ["--workdir", str(ws), "report", flag, str(tmp_path / where)])
        assert r.exit_code == 1 and r.output == (
            f"Error: cannot write {tmp_path / where} ({tmp_path / 'afile'} is a file, not a folder); "
            f"give {flag} a place you can write\n"
        )


def assert_real_png(path: Path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    arr = np.asarray(Image.open(path).convert("RGB")).astype(float)
    assert arr.shape[0] > 100 and arr.shape[1] > 100
    assert arr.std() > 5 and len(np.unique(arr.reshape(-1, 3), axis=0)) > 20  # not blank


def test_curves_and_accuracy_figures_from_fabricated_runs(ws, tmp_path):
    from dait_cache.figures import plot_accuracy_by_method, plot_curves

    p = plot_curves(ws / "aircraft/students/resnet18-dait-f", tmp_path / "c.png")
    assert_real_png(p)
    for key, words in (("test_top1_last", "last epoch"), ("test_top1_best_val", "best-on-validation epoch")):
        p = plot_accuracy_by_method(rep.collect_runs(ws), tmp_path / "a.png", key, rep.METHOD_ORDER)
        assert_real_png(p)
        assert f"test top-1 at the {words}" in Image.open(p).info["Description"]  # the metric, in words


def test_the_figures_drawn_follow_the_runs(ws):
    from dait_cache.figures import figure_plan

    fake_run(ws, "cub", "teacher", "regnety_016", "dait", 70.0, 71.0)
    fake_run(ws, "cub", "teacher", "resnet34", "dait", 75.0, 74.0, status="interrupted", done=3)
    fake_run(ws, "dogs", "student", "resnet18", "kd", 5.0, 5.0, status="interrupted", done=0)  # no epoch yet
    records = rep.collect_runs(ws)
    plan = figure_plan(records)
    # curves: every run with an epoch, finished or not; the validation curves of each student arch
    assert sorted(Path(r.run_dir).relative_to(ws).as_posix() for r in plan["curves"]) == sorted(
        Path(r.run_dir).relative_to(ws).as_posix() for r in records if "dogs" not in r.run_dir
    )
    assert "cub/teacher/resnet34-dait" in {Path(r.run_dir).relative_to(ws).as_posix() for r in plan["curves"]}
    assert plan["val_curves"] == [("aircraft", "mobilenetv2"), ("aircraft", "resnet18"), ("cub", "resnet18")]
    assert plan["accuracy"] is True and plan["damaged"] == []
    # the feature figures: a finished DAIT-F student; CKA: each dataset's finished teachers
    assert plan["features"] == ws / "aircraft" / "students" / "resnet18-dait-f"
    assert plan["cka"] == {
        "aircraft": [ws / "aircraft" / "teacher" / "regnety_016-dait"],
        "cub": [ws / "cub" / "teacher" / "regnety_016-dait"],
    }
    with pytest.raises(DaitError, match="^--run 'resnet34-dait' is not a finished run; finished: "):
        figure_plan(records, "resnet34-dait")  # interrupted: its curves only
    no_student_finished = [r for r in records if r.role == "teacher" or r.status != "finished"]
    plan = figure_plan(no_student_finished)
    assert plan["accuracy"] is False and plan["val_curves"] == [("aircraft", "mobilenetv2")]  # one in progress
    assert plan["features"] == ws / "aircraft" / "teacher" / "regnety_016-dait"  # no student: a teacher
    assert figure_plan([]) == {
        "curves": [],
        "accuracy": False,
        "val_curves": [],
        "features": None,
        "cka": {},
        "damaged": [],
    }
    # a run whose metrics cannot be read costs its own curves, named, not the other figures
    damaged = ws / "cub" / "students" / "resnet18-none" / "metrics.jsonl"
    damaged.write_bytes(damaged.read_bytes().replace(b"}", b"", 1))
    plan = figure_plan(records)
    assert plan["damaged"] == [
        f"{damaged} line 1 is damaged (not JSON); continue the run with --resume to rewrite it from the checkpoint"
    ]
    assert sorted(Path(r.run_dir).relative_to(ws).as_posix() for r in plan["curves"]) == sorted(
        Path(r.run_dir).relative_to(ws).as_posix()
        for r in records
        if "dogs" not in r.run_dir and r.run_dir != str(damaged.parent)
    )
    assert plan["val_curves"] == [("aircraft", "mobilenetv2"), ("aircraft", "resnet18"), ("cub", "resnet18")]


def test_the_feature_figures_show_the_named_run_else_a_dait_f_student_else_any(ws):
    from dait_cache.figures import choose_run

    finished = [r for r in rep.collect_runs(ws) if r.status == "finished"]
    cub_none = ws / "cub" / "students" / "resnet18-none"
    assert choose_run(finished, str(cub_none)) == cub_none  # a folder: that run, of two named alike
    assert choose_run(finished, "regnety_016-dait") == ws / "aircraft" / "teacher" / "regnety_016-dait"
    no_dait_f = [r for r in finished if r.method != "dait-f"]
    assert choose_run(no_dait_f, None) == ws / "aircraft" / "students" / "mobilenetv2-none"  # a student first
    with pytest.raises(DaitError) as e:
        choose_run(finished[:2], "mobilenetv2-dait-f")  # running, not finished
    names = ", ".join(Path(r.run_dir).name for r in finished[:2])
    assert str(e.value) == f"--run 'mobilenetv2-dait-f' is not a finished run; finished: {names}"
    with pytest.raises(DaitError, match="finished: none$"):
        choose_run([], "x")


def test_feature_figures_and_vlm_row_on_trained_runs(tiny_cache_workspace, tmp_path, monkeypatch):
    from dait_cache.config import TrainConfig
    from dait_cache.figures import class_relation_matrix, linear_cka
    from dait_cache.train import checkpoint as ckpt
    from dait_cache.train.student import train_student
    from dait_cache.train.teacher import train_teacher

    ws = tmp_path / "ws"  # only this test's runs: the report and its figures cover every run
    shutil.copytree(tiny_cache_workspace / "cub" / "cache", ws / "cub" / "cache")
    common = dict(
        workdir=str(ws),
        epochs=1,
        batch_size=8,
        pretrained=False,
        workers=0,
        device="cpu",
        val_fraction=0.25,
    )
    teacher, _ = train_teacher(TrainConfig(arch="resnet10t", name="fig-teacher", **common))
    student, _ = train_student(TrainConfig(arch="test_resnet", method="none", name="fig", **common))
    # the curves' loss panel: the objective's terms, not the row's timings or accuracies
    assert ckpt.loss_terms(ckpt.read_metrics(teacher)[0]) == ["loss", "ce", "sia", "ira"]
    assert ckpt.loss_terms(ckpt.read_metrics(student)[0]) == ["loss", "ce"]
    r = CliRunner().invoke(
        cli,
        [
            "--workdir",
            str(ws),
            "report",
            "--plots",
            str(tmp_path / "plots"),
            "--run",
            student.name,
            "--format",
            "json",
        ],
    )
    assert r.exit_code == 0, r.output
    runs = json.loads(r.output[: r.output.rindex("}") + 1])["runs"]
    vlm = [x for x in runs if x["role"] == "vlm"]
    assert len(vlm) == 1 and 0 <= vlm[0]["test_top1_last"] <= 100
    names = {p.name for p in (tmp_path / "plots").iterdir()}
    assert f"tsne-{student.name}.png" in names and f"class-relations-{student.name}.png" in names
    assert "cka-cub.png" in names and "accuracy-by-method.png" in names and "val-curves-cub-test_resnet.png" in names
    assert any(n.startswith("curves-cub-teacher-fig-teacher") for n in names)
    for name in names:
        assert_real_png(tmp_path / "plots" / name)
        assert "cub" in Image.open(tmp_path / "plots" / name).info["Description"], name  # its dataset
    # the numbers behind the figures
    x = np.random.default_rng(0).normal(size=(50, 8))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3 * x @ np.linalg.qr(np.random.default_rng(1).normal(size=(8, 8)))[0]) == pytest.approx(1.0)
    assert linear_cka(x, np.random.default_rng(2).normal(size=(50, 8))) < 0.5
    rel = class_relation_matrix(np.eye(3)[[0, 0, 1, 2]], np.array([0, 0, 1, 2]), 3)
    assert np.allclose(rel, np.eye(3))
    _feature_figures_follow_the_metric(ws, student, teacher, tmp_path, monkeypatch)


def _feature_figures_follow_the_metric(ws: Path, student: Path, teacher: Path, tmp_path: Path, monkeypatch) -> None:
    """`report --metric last` draws the feature figures (t-SNE, class relations, CKA) from the
    last epoch's weights (checkpoint.pt), `--metric best-val` from best.pt, and their titles say so."""
    import timm
    from encode_helpers import spy_on_figure_weights

    from dait_cache.cache import open_cache
    from dait_cache.figures import extract_features
    from dait_cache.train import checkpoint as ckpt

    # one epoch: make the last weights differ from the best ones, as a longer run's would
    for run in (student, teacher):
        state = ckpt.load(run / ckpt.CHECKPOINT)
        gen = torch.Generator().manual_seed(0)
        state["step"] = {
            k: v * (1 + 0.5 * torch.rand(v.shape, generator=gen)) if v.is_floating_point() else v
            for k, v in state["step"].items()
        }
        ckpt.save_atomic(state, run / ckpt.CHECKPOINT)
    cache = open_cache(ws / "cub" / "cache")
    last = extract_features(student, cache, checkpoint="last")[0]
    # the same features from the checkpoint's tensors and the cached pixels, without the library's model code
    net = timm.create_model("test_resnet", pretrained=False, num_classes=0).eval()
    prefix = "model.net."
    net.load_state_dict(
        {k[len(prefix) :]: v for k, v in ckpt.load(student / ckpt.CHECKPOINT)["step"].items() if k.startswith(prefix)}
    )
    pixels = torch.stack([cache.view_pixels("test", i, 0) for i in range(len(cache.labels("test")))]).float() / 255
    mean, std = (torch.tensor(net.pretrained_cfg[k])[:, None, None] for k in ("mean", "std"))  # timm's own
    x = (pixels - mean) / std
    with torch.no_grad():
        assert np.allclose(last, net(x).numpy(), atol=1e-5)
    assert not np.allclose(last, extract_features(student, cache, checkpoint="best")[0], atol=1e-3)
    loaded = spy_on_figure_weights(monkeypatch)
    for metric, weights, words in (
        ("last", "last", "last-epoch weights"),
        ("best-val", "best", "best-on-validation weights"),
    ):
        loaded.clear()
        plots = tmp_path / f"plots-{metric}"
        r = CliRunner().invoke(
            cli, ["--workdir", str(ws), "report", "--metric", metric, "--plots", str(plots), "--run", student.name]
        )
        assert r.exit_code == 0, r.output
        assert sorted(set(loaded)) == sorted({(student.name, weights), (teacher.name, weights)}), metric
        for name in (f"tsne-{student.name}.png", f"class-relations-{student.name}.png", "cka-cub.png"):
            assert words in Image.open(plots / name).info["Description"], (metric, name)
    (teacher / ckpt.METRICS).write_bytes(b"\xff\n")  # the teacher's curves cannot be drawn; the rest can
    r = CliRunner().invoke(cli, ["--workdir", str(ws), "report", "--plots", str(tmp_path / "plots-damaged")])
    assert r.exit_code == 0, r.output
    assert f"left out of the figures: {teacher / ckpt.METRICS} line 1 is damaged (not JSON)" in r.stderr
    drawn = sorted(p.name for p in (tmp_path / "plots-damaged").iterdir())
    assert drawn == sorted(n for n in os.listdir(tmp_path / "plots-last") if not n.startswith("curves-cub-teacher"))


def test_a_running_run_that_no_live_process_holds_is_shown_killed(tmp_path):
    run = fake_run(tmp_path, "cub", "student", "resnet18", "none", 40.0, 41.0, status="running", done=3)
    assert [r.status for r in rep.collect_runs(tmp_path)] == ["running"]
    run_lock(run).unlink()  # SIGKILLed: the lock's owner is gone (here the lock itself)
    (record,) = rep.collect_runs(tmp_path)
    assert record.status == "killed"
    t = rep.build_table([record], "last")
    assert rep.cell(t, t.rows[0], t.columns[0]) == ("40.00 (killed 3/10)", False)


def test_a_damaged_summary_keeps_its_runs_row_from_its_config_and_is_named(tmp_path):
    for seed, name in ((0, "resnet18-none-frac0.3"), (1, "resnet18-none-frac0.3-s1")):
        run = fake_run(tmp_path, "cub", "student", "resnet18", "none", 40.0 + seed, 41.0, fraction=0.3, name=name)
        config = {"arch": "resnet18", "method": "none", "train_fraction": 0.3, "seed": seed, "lr": 0.01}
        (run / "config.json").write_text(json.dumps(config))
        (run / "summary.json").write_text(json.dumps({**json.loads((run / "summary.json").read_text()), "seed": seed}))
    (run / "summary.json").write_text('{"status": "fin')  # seed 1's, cut short
    records = rep.collect_runs(tmp_path)
    assert [(r.arch, r.method, r.train_fraction, r.seed, r.status) for r in records] == [
        ("resnet18", "none", 0.3, 0, "finished"),
        ("resnet18", "none", 0.3, 1, "damaged"),
    ]
    t = rep.build_table(records, "last")  # one row, its damaged seed counted as unfinished
    assert [rep.cell(t, row, col) for row in t.rows for col in t.columns] == [
        ("40.00 ± 0.00 (1/2 seeds finished)", False)
    ]
    assert rep.damaged_notes(records) == [
        f"{run}: its summary.json is damaged, so its numbers are left out; continue the run with --resume to "
        "rewrite it from the checkpoint"
    ]
    r = CliRunner().invoke(cli, ["--workdir", str(tmp_path), "report", "--format", "csv"])
    assert r.exit_code == 0 and f"{run}: its summary.json is damaged" in r.stderr, r.output
    assert [(row["seed"], row["status"]) for row in csv.DictReader(io.StringIO(r.stdout))] == [
        ("0", "finished"),
        ("1", "damaged"),
    ]


def test_the_vlm_row_spans_its_datasets_fractions_and_a_vlm_alone_gets_a_column():
    """Zero-shot uses no training rows, so one VLM record fills every fraction's column of its
    dataset; a dataset only the VLM was run on still gets its (100 %) column."""

    def record(dataset, role, fraction, value, method="kd"):
        arch = {"vlm": "convnext_xxlarge", "teacher": "regnety_016"}.get(role, "resnet18")
        return rep.RunRecord(dataset, role, arch, method if role != "vlm" else "zero-shot", fraction,
                             "finished", 1, 1, value, value, f"/runs/{dataset}-{role}-{fraction}")  # fmt: skip

    records = [record("cub", "vlm", 1.0, 80.0), record("cub", "student", 1.0, 60.0),
               record("cub", "student", 0.3, 40.0), record("aircraft", "vlm", 1.0, 30.0)]  # fmt: skip
    table = rep.build_table(records)
    assert table.columns == [("aircraft", 1.0), ("cub", 1.0), ("cub", 0.3)]
    vlm = rep.row_key(records[0])  # one row, each dataset's own number
    assert [table.cells[(vlm, c)][0] for c in table.columns] == [30.0, 80.0, 80.0]


def test_linear_cka_and_class_relations_equal_their_textbook_forms():
    """CKA as HSIC of centred Gram matrices (Kornblith et al. 2019, eq. 2-4); class relations as
    cosines of normalised class means, a class without rows giving zeros."""
    from dait_cache.figures import class_relation_matrix, linear_cka

    rng = np.random.default_rng(5)
    x, y = rng.normal(2.0, 1.0, size=(40, 6)), rng.normal(-1.0, 3.0, size=(40, 3))
    y[:, 0] += x[:, 0]  # some shared structure: neither 0 nor 1
    h = np.eye(40) - 1 / 40
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    gram_x, gram_y = x @ x.T, y @ y.T
    want = hsic(gram_x, gram_y) / np.sqrt(hsic(gram_x, gram_x) * hsic(gram_y, gram_y))
    assert 0.05 < want < 0.95 and linear_cka(x, y) == pytest.approx(want, rel=1e-9)
    labels = np.array([0, 0, 1, 1, 1])
    feats = np.array([[3.0, 0, 0], [0, 4.0, 0], [1.0, 1.0, 0], [0, 0, 2.0], [0, 0, 5.0]])
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    m0, m1 = unit[:2].mean(0), unit[2:].mean(0)
    cos = m0 @ m1 / np.linalg.norm(m0) / np.linalg.norm(m1)
    got = class_relation_matrix(feats, labels, 3)
    assert got == pytest.approx(np.array([[1.0, cos, 0], [cos, 1.0, 0], [0, 0, 0]]), abs=1e-12)
