"""predict and export: a finished student on image files, as ONNX, torch.export and TorchScript,
and bad inputs."""

import csv
import io
import json
import re
import shutil
import subprocess
import sys
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dait_cache.deploy.export as export_mod
from cli.main import cli
from dait_cache.cache import open_cache
from dait_cache.cache.reader import PixelSource
from dait_cache.config import TrainConfig
from dait_cache.deploy import find_run, load_run_model, predict_files, torch_logits
from dait_cache.deploy.bundle import Preprocessing, sidecar_preprocessing
from dait_cache.deploy.export import (
    FORMATS,
    example_batch,
    export_run,
    gflops,
    latency_ms,
    sidecar_record,
)
from dait_cache.errors import DaitError
from dait_cache.train.loop import model_input
from dait_cache.train.runs import load_run_backbone
from dait_cache.train.student import train_student

ROOT = Path(__file__).resolve().parents[1]
COMMON = dict(
    arch="test_resnet",
    epochs=3,
    batch_size=8,
    lr=3e-3,
    pretrained=False,
    workers=0,
    device="cpu",
    val_fraction=0.25,
    eval_test="every",
)


@pytest.fixture(scope="module")
def ws(tiny_cache_workspace, tmp_path_factory):
    """A workspace of its own (the cache copied) holding two finished students: none and rise."""
    ws = tmp_path_factory.mktemp("deploy") / "ws"
    shutil.copytree(tiny_cache_workspace / "cub" / "cache", ws / "cub" / "cache")
    for method in ("none", "rise"):
        _, summary = train_student(TrainConfig(workdir=str(ws), method=method, **COMMON))
        assert summary["status"] == "finished"
    return ws


def split_files(ws):
    cache = open_cache(ws / "cub" / "cache")
    dataset = cache.source_dataset("test")
    return cache, [Path(p) for p, _ in dataset.samples], cache.labels("test")


@pytest.mark.parametrize("run", ["test_resnet-none", "test_resnet-rise"])
@pytest.mark.parametrize("checkpoint", ["best", "last"])
def test_predict_on_the_test_files_is_the_evaluation(ws, run, checkpoint):
    cache, files, labels = split_files(ws)
    rm = load_run_model(ws / "cub" / "students" / run, checkpoint)
    assert not any(m.training for m in rm.classifier.modules())  # ready to classify, as a Python user calls it
    logits_of = torch_logits(rm.classifier, torch.device("cpu"))
    shown = []
    predictions, failed = predict_files(
        logits_of,
        rm.preprocessing,
        rm.class_names,
        files,
        top_k=1,
        batch_size=5,
        workers=2,
        progress=lambda *a: shown.append(a),
    )
    assert failed == [] and [p.path for p in predictions] == [str(f) for f in files]
    assert shown == [("images", min(n, len(files)), len(files)) for n in range(5, len(files) + 5, 5)]
    correct = sum(p.top_k[0]["index"] == y for p, y in zip(predictions, labels))
    metric = "test_top1_best_val" if checkpoint == "best" else "test_top1_last"
    assert 100.0 * correct / len(files) == rm.summary[metric]
    # the same logits as the evaluation path: cached test views, the engine's normalisation
    source = PixelSource(cache, "test")
    pixels = torch.stack([source.render(row, 0) for row in range(len(files))])
    model = load_run_backbone(rm.run_dir, cache.num_classes, checkpoint=checkpoint)
    with torch.no_grad():
        expected = model(model_input(pixels, model)).numpy()
    views = torch.stack([rm.preprocessing.view(f) for f in files])
    assert torch.equal(views, pixels)
    np.testing.assert_array_equal(logits_of(views), expected)


def test_progress_counts_the_files_that_could_not_be_read(ws, tmp_path):
    _, files, _ = split_files(ws)
    rm = load_run_model(ws / "cub" / "students" / "test_resnet-none")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a photo")
    shown = []
    predictions, failed = predict_files(
        torch_logits(rm.classifier, torch.device("cpu")),
        rm.preprocessing,
        rm.class_names,
        [files[0], broken, files[1], broken],
        batch_size=3,
        progress=lambda *a: shown.append(a),
    )
    assert [p.path for p in predictions] == [str(files[0]), str(files[1])] and [f for f, _ in failed] == [
        str(broken)
    ] * 2
    assert shown == [("images", 3, 4), ("images", 4, 4)]


def test_top_k_holds_softmax_probabilities_in_order(ws):
    _, files, _ = split_files(ws)
    rm = load_run_model(ws / "cub" / "students" / "test_resnet-none")
    (pred,), _ = predict_files(
        torch_logits(rm.classifier, torch.device("cpu")), rm.preprocessing, rm.class_names, files[:1], top_k=10
    )
    with torch.no_grad():
        probs = rm.classifier(rm.preprocessing.view(files[0])[None]).double().softmax(1)[0]
    assert [t["index"] for t in pred.top_k] == probs.argsort(descending=True).tolist()  # 4 classes: k capped
    assert [t["class"] for t in pred.top_k] == [rm.class_names[t["index"]] for t in pred.top_k]
    np.testing.assert_allclose([t["prob"] for t in pred.top_k], probs.sort(descending=True).values, rtol=1e-6)
    for bad in ({"top_k": 0}, {"batch_size": 0}):  # the command line's own ranges stop these earlier
        with pytest.raises(DaitError, match=r"^--top-k and --batch-size must be 1 or more$"):
            predict_files(
                torch_logits(rm.classifier, torch.device("cpu")), rm.preprocessing, rm.class_names, files, **bad
            )


def test_default_run_is_the_best_student_by_the_metric(ws, tmp_path):
    from dait_cache.train import checkpoint as ckpt

    shutil.copytree(ws / "cub" / "cache", tmp_path / "cub" / "cache")
    scores = {"a": (10.0, 90.0, 50.0), "b": (80.0, 20.0, 40.0), "c": (30.0, 30.0, 60.0)}
    for name, (best_val, last, val) in scores.items():
        run = tmp_path / "cub" / "students" / f"test_resnet-none-{name}"
        shutil.copytree(ws / "cub" / "students" / "test_resnet-none", run)
        summary = ckpt.read_summary(run)
        ckpt.write_summary(
            run, {**summary, "test_top1_best_val": best_val, "test_top1_last": last, "val_top1_best": val}
        )
    assert find_run(tmp_path, None, "test_top1_best_val").name == "test_resnet-none-b"
    assert find_run(tmp_path, None, "test_top1_last").name == "test_resnet-none-a"
    assert find_run(tmp_path, None, "val_top1_best").name == "test_resnet-none-c"  # the demo's choice
    # an unfinished run is no candidate, however high its numbers; of equals, the first in the records' order
    from dait_cache.deploy import best_student_per_dataset
    from dait_cache.report import collect_runs

    for name, status in (("d", "interrupted"), ("e", "finished")):
        run = tmp_path / "cub" / "students" / f"test_resnet-none-{name}"
        shutil.copytree(ws / "cub" / "students" / "test_resnet-none", run)
        ckpt.write_summary(
            run, {**ckpt.read_summary(run), "status": status, "test_top1_best_val": 99.0 if name == "d" else 80.0}
        )
    best = best_student_per_dataset(collect_runs(tmp_path), "test_top1_best_val")
    assert {d: Path(r.run_dir).name for d, r in best.items()} == {"cub": "test_resnet-none-b"}
    # a teacher's folder by its name; a name two datasets hold is for the user to choose
    shutil.copytree(ws / "cub" / "students" / "test_resnet-none", tmp_path / "cub" / "teacher" / "test_resnet-dait")
    assert find_run(tmp_path, "test_resnet-dait") == tmp_path / "cub" / "teacher" / "test_resnet-dait"
    shutil.copytree(ws / "cub" / "students" / "test_resnet-none", tmp_path / "dogs" / "students" / "test_resnet-none-a")
    with pytest.raises(DaitError, match=r"run name 'test_resnet-none-a' is ambiguous in .*pass the run folder instead"):
        find_run(tmp_path, "test_resnet-none-a")
    shutil.rmtree(tmp_path / "dogs" / "students" / "test_resnet-none-a")
    shutil.copytree(ws / "cub" / "students" / "test_resnet-none", tmp_path / "dogs" / "students" / "test_resnet-kd")
    with pytest.raises(DaitError, match=r"students of 2 datasets \(best of each: cub: test_resnet-none-b; dogs: "):
        find_run(tmp_path, None, "test_top1_best_val")  # which photos? the user says, with --run
    assert find_run(ws, "test_resnet-rise") == ws / "cub" / "students" / "test_resnet-rise"
    with pytest.raises(DaitError, match="no run 'nope'.*test_resnet-none"):
        find_run(ws, "nope")


@pytest.fixture(scope="module")
def exported(ws, tmp_path_factory):
    rm = load_run_model(ws / "cub" / "students" / "test_resnet-rise")
    out = tmp_path_factory.mktemp("export")
    return rm, {
        fmt: export_run(rm, fmt, out / f"student.{fmt}", latency_runs=3) for fmt in ("onnx", "pt2", "torchscript")
    }


def test_onnx_matches_pytorch_on_the_test_split_at_any_batch(ws, exported):
    import onnxruntime as ort

    rm, results = exported
    _, files, _ = split_files(ws)
    views = torch.stack([rm.preprocessing.view(f) for f in files])
    session = ort.InferenceSession(str(results["onnx"].path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    with torch.no_grad():
        reference = rm.classifier(views).numpy()
    for batch in (1, 5, len(files)):
        got = np.concatenate(
            [session.run(None, {"pixels": views[i : i + batch].numpy()})[0] for i in range(0, len(files), batch)]
        )
        assert np.abs(got - reference).max() <= 1e-3
        assert (got.argmax(1) == reference.argmax(1)).all()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # the format's own, known
def test_torchscript_matches_exactly(ws, exported):
    rm, results = exported
    _, files, _ = split_files(ws)
    views = torch.stack([rm.preprocessing.view(f) for f in files])
    loaded = torch.jit.load(str(results["torchscript"].path))
    with torch.no_grad():
        assert torch.equal(loaded(views), rm.classifier(views))
        assert torch.equal(loaded(views[:3]), rm.classifier(views[:3]))


def test_a_torch_export_program_matches_exactly_at_any_batch(ws, exported):
    rm, results = exported
    _, files, _ = split_files(ws)
    views = torch.stack([rm.preprocessing.view(f) for f in files])
    program = torch.export.load(str(results["pt2"].path))  # what a user runs: torch alone
    loaded = program.module()
    with torch.no_grad():
        for batch in (1, 3, len(files)):  # exported from a batch of 2
            assert torch.equal(loaded(views[:batch]), rm.classifier(views[:batch]))
    assert program.graph_signature.user_inputs and len(program.graph_signature.user_outputs) == 1


def test_predict_with_an_exported_file_gives_the_runs_rows(ws, exported):
    rm, results = exported
    _, files, _ = split_files(ws)
    args = ("predict", *map(str, files[:6]), "--format", "json", "--top-k", "2")
    from_run = _cli(ws, *args, "--run", str(rm.run_dir))
    assert from_run.exit_code == 0, from_run.output
    rows = [json.loads(line) for line in from_run.stdout.splitlines()]
    for fmt in ("pt2", "torchscript"):  # the same float32 CPU graph: the same top-k and probabilities
        r = _cli(ws, *args, "--model", str(results[fmt].path))
        assert r.exit_code == 0, r.output
        assert [json.loads(line) for line in r.stdout.splitlines()] == rows, fmt


def test_export_to_pt2_says_what_it_wrote_and_nothing_else(ws, tmp_path):
    out = tmp_path / "m.pt2"
    r = _cli(ws, "export", "--run", "test_resnet-none", "--format", "pt2", "--output", str(out))
    assert r.exit_code == 0, r.output
    lines = " ".join(r.output.split()).replace(f"{out} ", "OUT ").replace(f"{out}.json", "SIDE")
    # torch's exporter logs a warning for a file name not ending in .pt2 (as the temp name does not)
    assert re.fullmatch(
        r"using \S+ \(best checkpoint, test top-1 [\d.]+%\) wrote OUT \([\d.]+ [kM]B\) and SIDE input uint8 \(N, 3, 64, 64\) RGB; 4 classes; [\d,]+ parameters; "
        r"[\d.]+ GFLOPs per image latency on this CPU, batch 1, median of 50: torch.export [\d.]+ ms, "
        r"PyTorch eager [\d.]+ ms",
        lines,
    ), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2", "m.pt2.json"]


def test_the_last_epochs_export_does_not_replace_the_best_ones(ws, tmp_path):
    own = tmp_path / "ws"
    shutil.copytree(ws, own)
    run = own / "cub" / "students" / "test_resnet-none"
    for checkpoint in ("best", "last"):
        r = _cli(own, "export", "--run", run.name, "--format", "torchscript", "--checkpoint", checkpoint)
        assert r.exit_code == 0, r.output
    best, last = run / "export" / "test_resnet-none.pt", run / "export" / "test_resnet-none-last.pt"
    assert sorted(p.name for p in (run / "export").iterdir()) == sorted(
        [best.name, best.name + ".json", last.name, last.name + ".json"]
    )
    for path, checkpoint in ((best, "best"), (last, "last")):
        assert json.loads(path.with_name(path.name + ".json").read_text())["checkpoint"] == checkpoint
        weights = load_run_model(run, checkpoint).classifier.state_dict()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation: the file is TorchScript
            scripted = torch.jit.load(str(path)).state_dict()
        assert all(torch.equal(scripted[k], v) for k, v in weights.items())  # each file holds its own weights


class _BranchesOnItsInput(torch.nn.Module):
    """A network whose path depends on its input's values: torch.export cannot trace one graph."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x):
        pooled = x.mean((2, 3))
        return self.fc(pooled) if pooled.sum() > 0 else -self.fc(pooled)


def test_a_network_torch_export_cannot_trace_gets_one_line(exported, tmp_path, capfd):
    from dait_cache.deploy.bundle import PixelClassifier

    rm, _ = exported
    other = replace(rm, classifier=PixelClassifier(_BranchesOnItsInput(), (0.5,) * 3, (0.25,) * 3))
    with pytest.raises(DaitError) as err:
        export_run(other, "pt2", tmp_path / "m.pt2", latency_runs=1)
    said = str(err.value)
    assert said.startswith("torch.export could not export test_resnet (") and "\n" not in said, said
    assert said.endswith("export it with --format onnx or torchscript instead")
    assert not list(tmp_path.iterdir())  # no model file, no temp file, no sidecar
    assert capfd.readouterr().err == ""  # torch logged the traced graph before raising


@pytest.mark.parametrize("damage", ["text", "truncated"])
def test_a_damaged_torch_export_file_gets_one_line(ws, exported, tmp_path, damage):
    _, results = exported
    _, files, _ = split_files(ws)
    model = tmp_path / "m.pt2"
    data = results["pt2"].path.read_bytes()
    model.write_bytes(b"hello" if damage == "text" else data[: len(data) // 2])
    shutil.copy(results["pt2"].sidecar, tmp_path / "m.pt2.json")
    r = _cli(ws, "predict", str(files[0]), "--model", str(model))
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    line = " ".join(r.output.split())
    assert f"{model} is not a readable torch.export program (" in line, line
    assert line.endswith("export it again with `dait-cache export --format pt2`"), line


def test_the_sidecar_describes_the_model(ws, exported):
    rm, results = exported
    cache = open_cache(ws / "cub" / "cache")
    side = json.loads((results["onnx"].path.parent / "student.onnx.json").read_text())
    summary = json.loads((rm.run_dir / "summary.json").read_text())
    assert side["class_names"] == cache.class_names and side["num_classes"] == 4
    assert (side["image_size"], side["base_size"]) == (64, 72) and side["preprocessing"]["clean_crop_box"] == [
        4,
        4,
        64,
        64,
    ]
    assert (side["arch"], side["method"], side["dataset"], side["run"]) == (
        "test_resnet",
        "rise",
        "cub",
        "test_resnet-rise",
    )
    assert side["cache_fingerprint"] == cache.fingerprint and side["checkpoint"] == "best"
    assert side["test_top1_last"] == summary["test_top1_last"]
    assert side["test_top1_best_val"] == summary["test_top1_best_val"]
    assert side["mean"] == list(rm.classifier.backbone.mean) and side["std"] == list(rm.classifier.backbone.std)
    from dait_cache.train import checkpoint as ckpt

    state = ckpt.load(rm.run_dir / ckpt.BEST)["step"]
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert side["parameters"] == sum(
        v.numel() for k, v in state.items() if k.startswith("model.") and not k.endswith(buffers)
    )
    # a conv net's FLOPs grow with the pixel count: 4x the pixels, 4x the FLOPs (within the head's share)
    assert side["gflops"] > 0 and 3.5 < gflops(rm.classifier, 128) / side["gflops"] <= 4.0
    for fmt in ("pt2", "torchscript"):
        assert json.loads((results[fmt].path.parent / f"student.{fmt}.json").read_text())["format"] == fmt


def test_the_sidecar_records_the_runs_checkpoint_scores_and_preprocessing(exported, monkeypatch):
    rm, _ = exported
    scores = {"test_top1_last": 12.5, "test_top1_best_val": 25.0, "best_epoch": 1}
    other = replace(
        rm,
        summary={**rm.summary, **scores},
        config={**rm.config, "train_fraction": 0.3, "seed": 2},
        checkpoint="last",
        preprocessing=replace(rm.preprocessing, crop_bottom=20, exif_orientation=False),
    )
    # test_resnet normalises by 0.5 everywhere; a backbone of ImageNet's statistics records them
    imagenet = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    monkeypatch.setattr(rm.classifier.backbone, "mean", imagenet[0])
    monkeypatch.setattr(rm.classifier.backbone, "std", imagenet[1])
    for fmt, suffix in FORMATS.items():
        record = sidecar_record(other, fmt, Path(f"model{suffix}"), 19)
        assert record["opset"] == (19 if fmt == "onnx" else None) and record["file"] == f"model{suffix}"
        assert {k: record[k] for k in scores} == scores and record["checkpoint"] == "last"
        assert (record["train_fraction"], record["seed"]) == (0.3, 2)
        assert (tuple(record["mean"]), tuple(record["std"])) == imagenet
        assert (record["crop_bottom"], record["exif_orientation"]) == (20, False)
        assert sidecar_preprocessing(record) == other.preprocessing


def test_the_example_batch_is_the_same_every_time(exported):
    rm, _ = exported
    batch = example_batch(rm, 3)
    assert batch.shape == (3, 3, 64, 64) and batch.dtype == torch.uint8 and len(batch.unique()) > 200
    assert torch.equal(batch, example_batch(rm, 3))


def test_gflops_counts_two_per_multiply_add():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.fc = torch.nn.Linear(8, 5, bias=False)

        def forward(self, pixels):
            return self.fc(self.conv(pixels.float()).mean((2, 3)))

    # 16 x 16 outputs of 8 channels, each 3 x 3 x 3 multiply-adds; then 8 x 5 for the head
    assert gflops(Tiny(), 16) == pytest.approx((2 * 16 * 16 * 8 * 27 + 2 * 8 * 5) / 1e9, rel=1e-12)


def fake_clock(monkeypatch) -> list[float]:
    """The export module's clock, advanced only by the test."""
    now = [0.0]
    monkeypatch.setattr(export_mod, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    return now


def test_latency_is_the_median_of_timed_batch_one_calls_after_the_warmup(monkeypatch):
    now, seen = fake_clock(monkeypatch), []
    takes = iter([9.0, 9.0, 0.004, 0.001, 0.003, 0.010, 0.002])  # two warm-up calls, then five timed

    def logits_of(pixels):
        seen.append((tuple(pixels.shape), pixels.dtype))
        now[0] += next(takes)

    assert latency_ms(logits_of, 8, runs=5, warmup=2) == pytest.approx(3.0)
    assert seen == [((1, 3, 8, 8), torch.uint8)] * 7


def test_the_eager_latency_times_pytorch_and_the_other_the_exported_file(exported, tmp_path, monkeypatch):
    rm, _ = exported
    now = fake_clock(monkeypatch)

    def eager_call(module, args):  # only PyTorch's own forward passes here; the exported file runs alone
        now[0] += 0.0 if torch.jit.is_tracing() else 0.5

    hook = rm.classifier.register_forward_pre_hook(eager_call)
    try:
        result = export_run(rm, "torchscript", tmp_path / "m.pt", latency_runs=3)
    finally:
        hook.remove()
    assert (result.latency_ms, result.eager_latency_ms) == (0.0, 500.0)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_classifier_left_in_training_mode_is_exported_for_inference(exported, tmp_path, fmt):
    from dait_cache.deploy.export import exported_logits

    rm, _ = exported
    pixels = example_batch(rm, 4)
    expected = torch_logits(rm.classifier, torch.device("cpu"))(pixels)
    rm.classifier.train()  # batch statistics and dropout, as a Python user's model may be
    try:
        result = export_run(rm, fmt, tmp_path / f"m{FORMATS[fmt]}", latency_runs=1)
    finally:
        rm.classifier.eval()
    np.testing.assert_allclose(exported_logits(fmt, result.path)(pixels), expected, atol=1e-4)


def test_torch_logits_score_a_classifier_left_in_training_mode_as_evaluation_does(exported):
    import copy

    rm, _ = exported
    pixels = example_batch(rm, 4)
    with torch.no_grad():
        expected = rm.classifier.eval()(pixels).numpy()
        # batch statistics would score otherwise (a copy: a forward in training mode moves them)
        assert not np.allclose(copy.deepcopy(rm.classifier).train()(pixels).numpy(), expected, atol=1e-3)
    got = torch_logits(copy.deepcopy(rm.classifier).train(), torch.device("cpu"))(pixels)
    np.testing.assert_array_equal(got, expected)


@contextmanager
def marked_interrupted(run_dir: Path):
    """The finished run's summary says "interrupted" inside the block, and "finished" again after."""
    from dait_cache.train import checkpoint as ckpt

    summary = run_dir / "summary.json"
    saved = summary.read_bytes()
    ckpt.write_summary(run_dir, {**json.loads(saved), "status": "interrupted"})
    try:
        yield
    finally:
        summary.write_bytes(saved)


def _cli(ws, *args):
    return CliRunner().invoke(cli, ["--workdir", str(ws), *args])


def test_predict_cli_json_csv_and_a_bad_file(ws, tmp_path):
    _, files, _ = split_files(ws)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for f in files[:3]:
        shutil.copy(f, folder / "sub" / f.name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "._broken.jpg").write_bytes(b"\0\5Mac resource fork")  # hidden: neither read nor counted
    (folder / ".thumbs").mkdir()
    shutil.copy(files[0], folder / ".thumbs" / "t.jpg")
    (folder / "notes.txt").write_text("not an image, not listed")
    r = _cli(ws, "predict", str(folder), "--run", "test_resnet-none", "--format", "json", "--top-k", "2")
    assert r.exit_code == 1 and "Traceback" not in r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]  # stdout holds the rows only
    assert [Path(row["path"]).name for row in rows] == sorted(f.name for f in files[:3])
    assert all(len(row["top_k"]) == 2 and set(row["top_k"][0]) == {"class", "index", "prob"} for row in rows)
    assert "skipped" in r.output and "broken.jpg" in r.output and "1 of 4 images could not be read" in r.output
    r = _cli(ws, "predict", *map(str, files[:2]), "--run", "test_resnet-none", "--format", "csv", "--top-k", "1")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "path,class_1,prob_1" and len(lines) == 3
    r = _cli(ws, "predict", str(folder / "broken.jpg"), "--run", "test_resnet-none")  # nothing to show
    assert r.exit_code == 1 and r.stdout == "" and "1 of 1 images could not be read" in r.output


def test_predict_cli_rows_are_the_librarys_and_every_file_is_counted(ws, tmp_path):
    _, files, _ = split_files(ws)
    rm = load_run_model(ws / "cub" / "students" / "test_resnet-none")
    classes = len(rm.class_names)
    expected, _ = predict_files(
        torch_logits(rm.classifier, torch.device("cpu")), rm.preprocessing, rm.class_names, files[:3], top_k=classes
    )
    # csv: --top-k above the class count gives a column pair per class, probabilities to 6 places
    r = _cli(ws, "predict", *map(str, files[:3]), "--run", "test_resnet-none", "--format", "csv", "--top-k", "50")
    assert r.exit_code == 0, r.output
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0] == ["path"] + [f"{what}_{k}" for k in range(1, classes + 1) for what in ("class", "prob")]
    assert rows[1:] == [[p.path] + [v for t in p.top_k for v in (t["class"], f"{t['prob']:.6f}")] for p in expected]
    # a batch at a time, a broken file among them: the progress line counts all four (none before)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    args = ["predict", *map(str, files[:3]), str(broken), "--run", "test_resnet-none", "--top-k", "2"]
    r = _cli(ws, *args, "--batch-size", "1", "--workers", "0")
    assert r.exit_code == 1 and "images: 4/4" in r.output and "1 of 4 images could not be read" in r.output
    # the table: one section per image (a rule between two images' rows), as many rows as guesses
    assert sum(line.startswith("├") for line in r.stdout.splitlines()) == 2
    assert [m for line in r.stdout.splitlines() for m in re.findall(r"│ +(\d) │", line)] == ["1", "2"] * 3
    r = _cli(ws, "predict", str(files[0]), "--run", "test_resnet-none", "--model", str(tmp_path / "m.onnx"))
    assert r.exit_code == 2 and "pass --run or --model, not both" in r.output


def test_predict_writes_its_rows_as_it_goes_so_a_stop_keeps_them(ws, tmp_path):
    import os
    import signal
    import threading
    import time

    _, files, _ = split_files(ws)
    folder = tmp_path / "many"
    folder.mkdir()
    for k in range(40):
        os.link(files[k % len(files)], folder / f"{k:05d}{files[k % len(files)].suffix}")
    os.mkfifo(folder / "99999.jpg")  # the last file never arrives: reading it blocks, as a stalled network disk
    args = ["predict", str(folder), "--run", "test_resnet-none", "--format", "json", "--batch-size", "2"]
    p = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "--workdir", str(ws), *args, "--workers", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a suite started with Ctrl-C ignored (`nohup make test`, `(make test &)`) passes that on,
        # and a command honours it, as Python does: the stop would never arrive and the test hang
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while len(lines) < 40 and time.monotonic() < deadline:  # the 20 batches before the stalled file
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        p.wait(timeout=60)
        err = p.stderr.read()
        reader.join(timeout=10)
    finally:
        p.kill()
    assert p.returncode == 130 and "interrupted" in err, err
    rows = [json.loads(line) for line in lines]  # every line whole
    assert [Path(r["path"]).name for r in rows] == sorted(f.name for f in folder.iterdir())[:40]


def _table_rows(text: str) -> list[tuple[str, list[int], str, list[str]]]:
    """(image, ranks, classes without spaces, probs) per image section of a rich predict table."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) != 4:
            continue
        image, rank, name, prob = cells
        if image and rank == "1":
            rows.append(["", [], "", []])
        row = rows[-1]
        row[0] += image
        row[2] += name.replace(" ", "")
        if rank:
            row[1].append(int(rank))
            row[3].append(prob)
    return [tuple(r) for r in rows]


def test_the_predict_table_shows_every_guess_whole_for_any_top_k(ws):
    # a column per rank: at --top-k 4 on 80 columns the class names were cut to "…"
    _, files, _ = split_files(ws)
    args = ("predict", *map(str, files[:2]), "--run", "test_resnet-none", "--top-k", "4")
    expected = [json.loads(line) for line in _cli(ws, *args, "--format", "json").stdout.splitlines()]
    r = _cli(ws, *args)
    assert r.exit_code == 0 and "…" not in r.stdout, r.output
    assert _table_rows(r.stdout) == [
        (
            e["path"],
            [1, 2, 3, 4],
            "".join(t["class"] for t in e["top_k"]).replace(" ", ""),
            [f"{t['prob']:.3f}" for t in e["top_k"]],
        )
        for e in expected
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "/no/such/photo.jpg", "--run", "test_resnet-none"], "does not exist"),
        (["predict", "/dev/null", "--run", "test_resnet-none"], "/dev/null is not a file or folder; pass image files"),
        (["predict", "{img}", "--run", "nope"], "no run 'nope'"),
        (["predict", "{img}", "--run", "train"], "no run 'train'"),  # a cache folder of that name is no run
        (["predict", "{img}", "--model", "{txt}"], "not a readable ONNX model"),
        (["predict", "{img}", "--model", "{missing}"], "not found"),
        (  # the sidecar for the model: "fake.onnx.json.json not found" before
            ["predict", "{img}", "--model", "{txt}.json"],
            "fake.onnx.json is the sidecar of {txt}: pass the model file itself to --model",
        ),
        (["predict", "{img}", "--model", "{txt}", "--device", "cuda"], "an exported model runs on the CPU"),
        (["predict", "{empty}", "--run", "test_resnet-none"], "no image files (.jpg, .jpeg, .png"),
        (
            ["predict", "{img}", "--model", "{no_names}"],
            "no_names.onnx.json lists no class names; export the run again",
        ),
        (
            ["predict", "{img}", "--model", "{empty_names}"],
            "empty_names.onnx.json lists no class names; export the run again",
        ),
        (["predict", "{img}", "--model", "{bad_json}"], "bad_json.onnx.json is not valid JSON"),
        (["predict", "{img}", "--model", "{txt_pt}"], "fake.pt is not a readable TorchScript model ("),
        (
            [
                "export",
                "--run",
                "test_resnet-none",
                "--format",
                "onnx",
                "--checkpoint",
                "last",
                "--output",
                "{unfinished}",
            ],
            "is not finished",
        ),
        (  # a traceback from torch.jit's writer before, or mkdir's for the other formats
            ["export", "--run", "test_resnet-none", "--format", "torchscript", "--output", "{afile}/x.pt"],
            "afile is a file, not a folder); give --output a place you can write",
        ),
    ],
)
def test_bad_inputs_get_one_line(ws, tmp_path, args, message):
    _, files, _ = split_files(ws)
    txt = tmp_path / "fake.onnx"
    txt.write_text("hello")
    (tmp_path / "fake.onnx.json").write_text(json.dumps({"class_names": ["a"], "base_size": 8, "image_size": 8}))
    (tmp_path / "fake.pt").write_text("hello")
    (tmp_path / "fake.pt.json").write_text(json.dumps({"class_names": ["a"], "format": "torchscript"}))
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("")
    sidecars = {"no_names": json.dumps({"class_names": "abc"}), "empty_names": '{"class_names": []}', "bad_json": "{"}
    for name, sidecar in sidecars.items():
        (tmp_path / f"{name}.onnx").write_text("hello")
        (tmp_path / f"{name}.onnx.json").write_text(sidecar)
    unfinished = ws / "cub" / "students" / "test_resnet-none"
    # with {unfinished}: a run whose summary says it was interrupted
    with marked_interrupted(unfinished) if "{unfinished}" in args else nullcontext():
        filled = [
            a.format(
                img=files[0],
                txt=txt,
                txt_pt=tmp_path / "fake.pt",
                missing=tmp_path / "none.onnx",
                unfinished=tmp_path / "x.onnx",
                empty=tmp_path / "empty",
                no_names=tmp_path / "no_names.onnx",
                empty_names=tmp_path / "empty_names.onnx",
                bad_json=tmp_path / "bad_json.onnx",
                afile=tmp_path / "afile",
            )
            for a in args
        ]
        r = _cli(ws, *filled)
    message = message.format(txt=txt)
    assert r.exit_code != 0 and message in " ".join(r.output.split()) and "Traceback" not in r.output, r.output
    assert not (tmp_path / "x.onnx").exists()


def test_the_best_student_without_its_weights_is_named_with_the_way_out(ws, tmp_path):
    own = tmp_path / "ws"
    shutil.copytree(ws, own)
    best = find_run(own, None)
    (best / "best.pt").unlink()
    _, files, _ = split_files(own)
    r = _cli(own, "predict", str(files[0]))  # the workspace's pick, not named by the user
    assert r.exit_code == 1 and r.output == (
        f"Error: {best / 'best.pt'} not found; the run has no such checkpoint; {best.name} is the workspace's best "
        "student by test top-1 of its best checkpoint: name another run with --run\n"
    )
    r = _cli(own, "export", "--format", "onnx", "--run", best.name)  # named: the library's line alone
    assert r.exit_code == 1 and r.output.endswith(
        f"Error: {best / 'best.pt'} not found; the run has no such checkpoint\n"
    )
    other = next(p for p in (own / "cub" / "students").iterdir() if p != best)
    r = _cli(own, "predict", str(files[0]), "--run", other.name)
    assert r.exit_code == 0, r.output


def test_a_workspace_without_a_finished_student_or_a_runs_cache_is_one_line(ws, tmp_path):
    _, files, _ = split_files(ws)
    other = tmp_path / "other"
    (other / "cub" / "students").mkdir(parents=True)
    r = _cli(other, "predict", str(files[0]))
    assert r.exit_code == 1 and r.output == (
        f"Error: no finished student in workspace {other}; train one with `dait-cache train-student` or name a "
        "run with --run\n"
    )
    shutil.copytree(ws / "cub" / "students" / "test_resnet-none", other / "cub" / "students" / "test_resnet-none")
    r = _cli(other, "predict", str(files[0]))  # the run without its cache
    cache = other / "cub" / "cache"
    assert r.exit_code == 1 and r.output.startswith(
        f"Error: run test_resnet-none needs the cache of dataset cub at {cache}, which cannot be opened (no cache at "
    )
    assert len(r.output.splitlines()) == 1 and "run `dait-cache encode` first" in r.output


def test_last_weights_of_an_earlier_epoch_are_refused(ws, tmp_path):
    from dait_cache.train import checkpoint as ckpt

    run = tmp_path / "cub" / "students" / "test_resnet-none"
    shutil.copytree(ws / "cub" / "students" / "test_resnet-none", run)
    (tmp_path / "cub" / "cache").symlink_to(ws / "cub" / "cache")
    state = ckpt.load(run / ckpt.CHECKPOINT)
    ckpt.save_atomic({**state, "epoch": 1}, run / ckpt.CHECKPOINT)  # as if an earlier one were copied in
    with pytest.raises(DaitError, match=r"holds epoch 2, not the last \(3\); use --checkpoint best$"):
        load_run_model(run, checkpoint="last")


def test_a_run_of_another_workspace_dataset_is_refused(ws, dogs_cache_workspace, tmp_path):
    run = tmp_path / "dogs" / "students" / "test_resnet-none"
    shutil.copytree(ws / "cub" / "students" / "test_resnet-none", run)
    shutil.copytree(dogs_cache_workspace / "dogs" / "cache", tmp_path / "dogs" / "cache")
    with pytest.raises(DaitError, match="was trained on cache"):
        load_run_model(run)


def test_predict_with_onnx_needs_no_timm(ws, exported):
    rm, results = exported
    _, files, _ = split_files(ws)
    code = (
        "import sys; from cli.main import cli; "
        "cli(['predict', sys.argv[1], '--model', sys.argv[2], '--format', 'json'], standalone_mode=False); "
        "print('timm imported:', 'timm' in sys.modules)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(files[0]), str(results["onnx"].path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "timm imported: False" in r.stdout and '"top_k"' in r.stdout


@pytest.mark.parametrize("fmt", ["onnx", "pt2", "torchscript"])
def test_a_sidecar_of_another_export_is_refused_before_any_image(ws, exported, tmp_path, fmt):
    from dait_cache.deploy.predict import load_exported

    # a sidecar naming fewer classes ended in an IndexError, another input size in onnxruntime's error
    _, results = exported
    side = json.loads(results[fmt].sidecar.read_text())
    size = side["image_size"]
    cases = {
        "classes": ({**side, "class_names": side["class_names"][:2]}, f"gives {len(side['class_names'])} class "
                    "scores but its sidecar m.json names 2 classes; keep the sidecar"),
        "size": ({**side, "image_size": size * 2}, f"does not take the {2 * size}x{2 * size} input its sidecar "
                 "m.json names ("),
    }  # fmt: skip
    if fmt == "torchscript":  # a traced conv net takes any size: only its classes can disagree
        del cases["size"]
    for what, (sidecar, said) in cases.items():
        model = tmp_path / what / "m"
        model.parent.mkdir()
        shutil.copy(results[fmt].path, model)
        (tmp_path / what / "m.json").write_text(json.dumps(sidecar))
        with pytest.raises(DaitError) as err:
            load_exported(model)
        assert str(err.value).startswith(f"{model} {said}"), str(err.value)
        assert "\n" not in str(err.value)


def turned_copy(path: Path, folder: Path) -> Path:
    """``path`` as a camera stores a photo taken turned: pixels a quarter turn anticlockwise,
    EXIF orientation 6 telling a viewer to turn them back."""
    from PIL import Image

    tags = Image.Exif()
    tags[0x0112] = 6
    turned = folder / f"turned-{path.stem}.png"
    Image.fromarray(np.rot90(np.asarray(Image.open(path).convert("RGB")), k=1)).save(turned, exif=tags)
    return turned


def test_a_photo_taken_turned_is_seen_upright(ws, exported, tmp_path):
    rm, results = exported
    _, files, _ = split_files(ws)
    turned = turned_copy(files[0], tmp_path)
    assert torch.equal(rm.preprocessing.view(turned), rm.preprocessing.view(files[0]))
    side = json.loads((results["onnx"].path.parent / "student.onnx.json").read_text())
    assert side["exif_orientation"] is True  # the tiny cache was encoded with the default
    assert sidecar_preprocessing(side) == rm.preprocessing
    aircraft = {**side, "crop_bottom": 20, "exif_orientation": False}  # the banner cut, no EXIF turn
    assert sidecar_preprocessing(aircraft) == replace(rm.preprocessing, crop_bottom=20, exif_orientation=False)
    with pytest.raises(DaitError, match=r"the model's sidecar lacks its preprocessing \(KeyError\('image_size'\)\)"):
        sidecar_preprocessing({k: v for k, v in side.items() if k != "image_size"})


def test_the_banner_rows_are_cut_before_the_view_is_made(tmp_path):
    from PIL import Image

    photo = np.zeros((60, 40, 3), dtype=np.uint8)
    photo[:40] = (0, 0, 255)  # the picture: blue; under it, 20 rows of a red banner
    photo[40:] = (255, 0, 0)
    Image.fromarray(photo).save(tmp_path / "plane.png")
    view = Preprocessing(base_size=16, image_size=16, crop_bottom=20).view(tmp_path / "plane.png")
    assert view.shape == (3, 16, 16) and torch.equal(
        view, torch.tensor([0, 0, 255], dtype=torch.uint8).view(3, 1, 1).expand(3, 16, 16)
    )
    uncut = Preprocessing(base_size=16, image_size=16).view(tmp_path / "plane.png")
    assert uncut[0].max() == 255  # without the cut, the banner's red is in the view


def test_an_unknown_run_lists_only_finished_students_and_an_unknown_checkpoint_is_named(ws):
    run_dir = ws / "cub" / "students" / "test_resnet-none"
    with marked_interrupted(run_dir):
        with pytest.raises(DaitError, match=r"no run 'nope' in workspace .* \(finished students: test_resnet-rise\)$"):
            find_run(ws, "nope")
    with pytest.raises(DaitError, match="unknown checkpoint 'middle'; valid: best, last"):
        load_run_model(run_dir, "middle")


def test_the_readme_snippet_predicts_what_predict_does(ws, exported, tmp_path):
    """The README's numpy + Pillow + onnxruntime lines, run as a user would paste them."""
    import re

    rm, results = exported
    _, files, _ = split_files(ws)
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- deploy-snippet -->\n```python\n(.*?)```", readme, re.S).group(1)
    onnx_path = results["onnx"].path
    code = code.replace('"student.onnx.json"', repr(str(onnx_path) + ".json")).replace(
        '"student.onnx"', repr(str(onnx_path))
    )
    for f in [*files[:4], turned_copy(files[0], tmp_path)]:
        r = subprocess.run(
            [sys.executable, "-c", code.replace('"photo.jpg"', repr(str(f)))],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        (pred,), _ = predict_files(
            torch_logits(rm.classifier, torch.device("cpu")), rm.preprocessing, rm.class_names, [f], top_k=1
        )
        assert r.stdout.strip() == f"{pred.top_k[0]['class']} {round(pred.top_k[0]['prob'], 4)}"


def test_an_onnx_file_declares_the_opset_its_sidecar_names(ws, tmp_path, monkeypatch):
    import onnx

    from dait_cache.deploy import export
    from dait_cache.deploy.export import written_opset

    # --opset 17 wrote an opset-18 file (torch's exporter converts down only with a logged traceback)
    # whose sidecar said 17; an opset past the installed onnx's newest failed inside the exporter
    rm = load_run_model(ws / "cub" / "students" / "test_resnet-none")
    for opset in (17, onnx.defs.onnx_opset_version() + 1):
        with pytest.raises(DaitError, match=f"^--opset {opset}: torch's ONNX exporter writes opsets 18 to "):
            export_run(rm, "onnx", tmp_path / f"o{opset}.onnx", opset=opset, latency_runs=1)
        assert not list(tmp_path.iterdir())
    # and should an opset in range not be written (the exporter only warns), the file is not kept
    monkeypatch.setattr(export, "MIN_OPSET", 7)
    with pytest.raises(DaitError, match="^--opset 17: torch's ONNX exporter wrote opset 18 instead; pass --opset 18"):
        export_run(rm, "onnx", tmp_path / "o17.onnx", opset=17, latency_runs=1)
    assert not list(tmp_path.iterdir())
    monkeypatch.undo()
    result = export_run(rm, "onnx", tmp_path / "o21.onnx", opset=21, latency_runs=1)
    assert written_opset(result.path) == 21 and result.record["opset"] == 21
    assert json.loads(result.sidecar.read_text())["opset"] == 21


def test_a_missing_export_extra_names_the_install_command(ws, exported, monkeypatch):
    rm, results = exported
    _, files, _ = split_files(ws)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: import raises
    r = _cli(ws, "predict", str(files[0]), "--model", str(results["onnx"].path))
    assert r.exit_code == 1 and "pip install 'dait-cache[export]'" in r.output and "Traceback" not in r.output
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    r = _cli(ws, "export", "--run", "test_resnet-none", "--format", "onnx", "--output", str(ws / "x.onnx"))
    assert r.exit_code == 1 and "pip install 'dait-cache[export]'" in r.output and not (ws / "x.onnx").exists()


def test_an_export_stopped_before_its_sidecar_leaves_no_earlier_sidecar_beside_the_new_file(ws, tmp_path, monkeypatch):
    from dait_cache.deploy import export

    # exported again to one path with another run, and stopped between the model and the sidecar:
    # the earlier sidecar would describe the new file (its run, accuracy, classes)
    out = tmp_path / "student.pt"
    first = export_run(load_run_model(ws / "cub" / "students" / "test_resnet-none"), "torchscript", out, latency_runs=1)
    assert json.loads(first.sidecar.read_text())["run"] == "test_resnet-none"

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "atomic_write_json", stopped)
    with pytest.raises(KeyboardInterrupt):
        export_run(load_run_model(ws / "cub" / "students" / "test_resnet-rise"), "torchscript", out, latency_runs=1)
    assert out.is_file() and not first.sidecar.exists()
    r = CliRunner().invoke(cli, ["predict", str(split_files(ws)[1][0]), "--model", str(out)])
    assert r.exit_code == 1 and "student.pt.json not found" in r.output, r.output
