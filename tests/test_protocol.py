"""The experiment protocol: a student learns only from a teacher trained on its rows, replayed
pixels are the pixels the VLM saw, any timm backbone can teach, figures never select on test."""

import json
import re
import shutil
from dataclasses import replace

import fake_trees
import numpy as np
import pytest
import torch
from encode_helpers import make_cfg
from PIL import Image
from tiny_vlm import make_tiny_vlm

from dait_cache.cache import open_cache
from dait_cache.cache.manifest import encode_command
from dait_cache.cache.reader import PixelSource
from dait_cache.config import TrainConfig
from dait_cache.data import load_dataset
from dait_cache.data.aircraft import BANNER_PX
from dait_cache.data.views import ViewParams, make_base, render_view
from dait_cache.encode import encode
from dait_cache.errors import DaitError
from dait_cache.figures import accuracy_bars, method_mean
from dait_cache.io import sha256_file
from dait_cache.report import RunRecord, build_table, column_title
from dait_cache.train import checkpoint as ckpt
from dait_cache.train.student import train_student
from dait_cache.train.teacher import train_teacher
from dait_cache.vlm import load_vlm

COMMON = dict(epochs=1, batch_size=8, pretrained=False, workers=0, device="cpu", val_fraction=0.25)


@pytest.fixture(scope="module")
def trained_ws(tiny_cache_workspace, tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol") / "ws"
    shutil.copytree(tiny_cache_workspace / "cub" / "cache", root / "cub" / "cache")
    train_teacher(TrainConfig(workdir=str(root), arch="resnet10t", **COMMON))
    return root


@pytest.fixture()
def ws(trained_ws, tmp_path):
    """A workspace of our own: the cache, and one teacher trained on 100% of the rows (trained
    once per module, copied per test)."""
    root = tmp_path / "ws"
    shutil.copytree(trained_ws, root)
    return root


def student(ws, **kw):
    return TrainConfig(workdir=str(ws), arch="resnet10t", role="student", **{**COMMON, **kw})


def test_a_student_learns_only_from_a_teacher_trained_on_its_rows(ws):
    with pytest.raises(
        DaitError,
        match=r"no finished teacher .* same rows .*train_fraction 0.5.*"
        rf"dait-cache --workdir {re.escape(str(ws))} train-teacher --dataset cub --train-fraction 0.5 "
        r"--val-fraction 0.25 --seed 0",
    ):
        train_student(student(ws, method="dait-l", train_fraction=0.5))
    for method in ("dait-f", "kd", "rkd"):  # naming a teacher of other rows is refused too
        with pytest.raises(
            DaitError,
            match=r"teacher resnet10t-dait was trained on other rows.*"
            r"train_fraction: teacher 1.0, student 0.5.*--train-fraction 0.5",
        ):
            train_student(student(ws, method=method, train_fraction=0.5, teacher="resnet10t-dait"))
    matching, _ = train_teacher(TrainConfig(workdir=str(ws), arch="resnet10t", train_fraction=0.5, **COMMON))
    assert matching.name == "resnet10t-dait-frac0.5"
    train_teacher(TrainConfig(workdir=str(ws), arch="resnet10t", name="newer-full", **COMMON))  # newest, other rows
    run_dir, summary = train_student(student(ws, method="dait-l", train_fraction=0.5))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["teacher_run"] == str(matching) and summary["teacher_run"] == str(matching)
    assert config["teacher_fingerprint"] == sha256_file(matching / ckpt.BEST)
    assert summary["n_train"] == 16  # round(0.5 x 8) of each class's 8 official images


@pytest.mark.parametrize("exif", [True, False], ids=["exif-upright", "exif-as-stored"])
def test_crop_banner_and_exif_replay_without_image_cache(vlm_id, tmp_path, exif):
    fake_trees.make_aircraft(tmp_path / "data")
    for k, path in enumerate(sorted((tmp_path / "data").rglob("*.jpg"))):  # photos taken turned
        tags = Image.Exif()
        tags[0x0112] = (6, 8, 3, 1)[k % 4]
        Image.open(path).save(path, exif=tags, quality=95)
    cfg = make_cfg(
        vlm_id,
        tmp_path / "data",
        tmp_path / "ws",
        dataset="aircraft",
        views=2,
        crop_banner=True,
        image_cache=False,
        exif_orientation=exif,
    )
    encode(cfg)
    cache = open_cache(cfg.cache_dir)
    # without the option the manifest is the one encode wrote before it existed
    assert ("exif_orientation" in cache.manifest["fingerprint_fields"]["dataset"]) is exif
    assert ("--no-exif-orientation" in encode_command(cfg.cache_dir)) is not exif
    if not exif:  # the repair command of a cache whose config.json predates the option keeps it as it was
        config = json.loads((cfg.cache_dir / "config.json").read_text())
        del config["exif_orientation"]
        (cfg.cache_dir / "config.json").write_text(json.dumps(config))
        assert "--no-exif-orientation" in encode_command(cfg.cache_dir)
        with pytest.raises(DaitError, match="--overwrite to replace it, --no-exif-orientation to keep it as it"):
            encode(replace(cfg, exif_orientation=True))
    ds = load_dataset("aircraft", tmp_path / "data", "train")
    ds.crop_bottom, ds.exif_orientation = BANNER_PX, exif  # what the VLM saw, built independently of the cache
    source, vlm = PixelSource(cache, "train"), load_vlm(vlm_id, None, "cpu")
    params, index, emb = cache.view_params("train"), cache.sample_index("train"), cache.img_emb("train")
    for row in range(len(index)):
        base = make_base(ds.load_image(int(index[row])), 72)
        views = []
        for view in range(3):
            want = render_view(base, ViewParams.from_vector(params[row, view]), 64)
            assert torch.equal(source.render(row, view), want)  # what training replays
            assert torch.equal(cache.view_pixels("train", row, view), want)
            views.append(want)
        again = vlm.encode_images(torch.stack(views)).half().float()
        assert torch.allclose(again, torch.from_numpy(emb[row]).float(), rtol=1e-2, atol=1e-3)


@pytest.mark.slow
def test_the_papers_teachers_each_teach_a_student(data_root, tmp_path):
    vlm = make_tiny_vlm(tmp_path / "vlm32", image_size=32)
    encode(make_cfg(vlm, data_root, tmp_path / "ws", views=1, image_size=32, base_size=36))
    common = dict(COMMON, batch_size=4, max_batches=2)
    # one per family end to end; resnet50 and vgg13 (129 M parameters: 39 s of this test on 2
    # Zen 1 cores) take the same path, and test_models checks their interface and widths
    for arch in ("resnet34", "efficientnet_b0", "regnety_016"):
        run_dir, summary = train_teacher(TrainConfig(workdir=str(tmp_path / "ws"), arch=arch, **common))
        assert summary["status"] == "finished"
        student_dir, s = train_student(
            TrainConfig(
                workdir=str(tmp_path / "ws"),
                arch="resnet18",
                role="student",
                method="dait-f",
                teacher=run_dir.name,
                name=arch,
                **common,
            )
        )
        assert s["status"] == "finished" and s["teacher_run"] == str(run_dir)
        for done in (run_dir, student_dir):  # 1.8 GB of checkpoints if all were kept to the end
            shutil.rmtree(done)
    ce_dir, _ = train_teacher(TrainConfig(workdir=str(tmp_path / "ws"), arch="resnet34", method="ce", **common))
    for method in ("kd", "rkd"):
        _, s = train_student(
            TrainConfig(
                workdir=str(tmp_path / "ws"),
                arch="resnet18",
                role="student",
                method=method,
                teacher=ce_dir.name,
                **common,
            )
        )
        assert s["status"] == "finished" and s["teacher_run"] == str(ce_dir)


def record(method, last, best, n_train=264, n_val=24, fraction=0.3, tag=""):
    return RunRecord(
        "cub",
        "student",
        "resnet18",
        method,
        fraction,
        "finished",
        1,
        1,
        last,
        best,
        f"/x/{method}{tag}",
        tag=tag,
        n_train=n_train,
        n_val=n_val,
    )


def test_figures_average_runs_instead_of_picking_the_best_on_test():
    runs = [record("none", 10.0, 12.0, tag="a"), record("none", 30.0, 20.0, tag="b")]
    # sample standard deviation (ddof 1), as the report's mean ± std
    assert method_mean(runs, "resnet18", "none", "test_top1_last") == pytest.approx((20.0, 200**0.5, 2))
    assert method_mean(runs, "resnet18", "none", "test_top1_best_val") == pytest.approx((16.0, 32**0.5, 2))
    # the bars: each column its own runs, each arch its own bar, unfinished runs left out
    runs += [record("none", 50.0, 50.0, fraction=1.0), replace(record("kd", 40.0, 40.0), arch="mobilenetv2"),
             replace(record("kd", 90.0, 90.0, tag="c"), status="running"),
             record("rkd", 5.0, 5.0, fraction=1.0), record("crd", 6.0, 6.0, fraction=1.0)]  # fmt: skip
    panels = accuracy_bars(runs, "test_top1_last", ("kd", "none"))
    # methods outside the given order follow it, by name
    assert [(p["column"], p["methods"]) for p in panels] == [
        (("cub", 1.0), ["none", "crd", "rkd"]),
        (("cub", 0.3), ["kd", "none"]),
    ]
    assert panels[0]["bars"] == {"resnet18": [(50.0, 0.0, 1), (6.0, 0.0, 1), (5.0, 0.0, 1)]}
    bars = panels[1]["bars"]
    assert bars["mobilenetv2"] == [(40.0, 0.0, 1), (0.0, 0.0, 0)]
    assert bars["resnet18"] == [(0.0, 0.0, 0), pytest.approx((20.0, 200**0.5, 2))]


def test_runs_differing_only_in_seed_share_a_cell_with_mean_and_std():
    from pathlib import Path

    from dait_cache.report import _tag

    assert _tag(Path("/w/resnet18-none-frac0.3-s2"), "resnet18", "none", 0.3, 2) == ""
    assert _tag(Path("/w/resnet18-none-frac0.3"), "resnet18", "none", 0.3, 0) == ""
    assert _tag(Path("/w/resnet18-none-long-s2"), "resnet18", "none", 1.0, 2) == "long"
    runs = [
        replace(record("none", v, v), seed=seed, run_dir=f"/x/{seed}") for seed, v in ((2, 13.0), (0, 10.0), (1, 19.0))
    ]
    runs.append(replace(record("dait-f", 20.0, 20.0), seed=0))
    table = build_table(runs, "last", baseline="none")
    col, none, dait = ("cub", 0.3), ("resnet18", "none", "student"), ("resnet18", "dait-f", "student")
    assert table.cells[(none, col)] == (pytest.approx(14.0), f"14.00 ± {np.std([10, 19, 13], ddof=1):.2f} (n=3)")
    assert table.samples[(none, col)] == [(0, 10.0), (1, 19.0), (2, 13.0)]
    assert table.deltas[(dait, col)] == pytest.approx(6.0)
    runs[0] = replace(runs[0], status="running")
    table = build_table(runs, "last", baseline="none")
    assert table.cells[(none, col)] == (None, f"14.50 ± {np.std([10, 19], ddof=1):.2f} (2/3 seeds finished)")


def test_report_shows_n_train_and_when_there_is_no_val_split():
    table = build_table([record("none", 10.0, 10.0), record("dait-f", 12.0, 12.0, n_train=270)], "best-val")
    assert column_title(("cub", 0.3), table) == "cub (30%) n_train=264/270"
    table = build_table([record("none", 10.0, 10.0, n_val=0, fraction=1.0)], "best-val")
    assert column_title(("cub", 1.0), table) == "cub n_train=264, no val split"


def test_resume_refuses_changed_settings_but_lets_epochs_grow(ws):
    cfg = student(ws, method="none", name="resumable")
    train_student(cfg)
    with pytest.raises(DaitError, match=r"other settings \(lr: 0.0001 -> 0.001; seed: 0 -> 3\).*only --epochs"):
        train_student(replace(cfg, resume=True, epochs=2, lr=1e-3, seed=3))
    _, summary = train_student(replace(cfg, resume=True, epochs=2))
    assert summary["epochs_done"] == 2 and summary["status"] == "finished"


@pytest.mark.parametrize("name", ["../escape", "/tmp/elsewhere", "..", "a/b"])
def test_run_names_cannot_leave_the_workspace(ws, name):
    with pytest.raises(DaitError, match="plain folder name"):
        train_teacher(TrainConfig(workdir=str(ws), arch="resnet10t", name=name, **COMMON))
    with pytest.raises(DaitError, match="plain folder name"):
        train_student(student(ws, method="none", name=name))


def test_a_student_run_is_not_a_teacher(ws):
    run_dir, _ = train_student(student(ws, method="none"))
    with pytest.raises(DaitError, match="is a student run, not a teacher"):
        train_student(student(ws, method="dait-l", teacher=str(run_dir), name="from-a-student"))


@pytest.mark.parametrize(
    "field, value, flag",
    [
        ("lr", float("nan"), "--lr nan"),
        ("temperature", 0.0, "--temperature 0"),
        ("weight_decay", -1.0, "--weight-decay -1"),
    ],
)
def test_settings_that_cannot_train_are_refused_up_front(ws, field, value, flag):
    with pytest.raises(DaitError, match=f"{flag}.* cannot train"):
        train_student(student(ws, method="none", **{field: value}))
    with pytest.raises(DaitError, match=f"{flag}.* cannot train"):
        train_teacher(TrainConfig(workdir=str(ws), arch="resnet10t", **{**COMMON, field: value}))


def test_a_negative_seed_is_refused_before_any_folder(ws, tmp_path):
    from click.testing import CliRunner

    from cli.main import cli
    from dait_cache.config import EncodeConfig
    from dait_cache.study import build_plan

    # numpy's SeedSequence refuses negative seeds: this was a raw ValueError from inside a run
    with pytest.raises(DaitError, match="--seed -1 cannot seed"):
        train_student(student(ws, method="none", seed=-1, name="neg"))
    with pytest.raises(DaitError, match="--seed -1 cannot seed"):
        train_teacher(TrainConfig(workdir=str(ws), arch="resnet10t", name="neg", **{**COMMON, "seed": -1}))
    assert not list(ws.glob("*/*/neg"))
    with pytest.raises(DaitError, match="--seed -1 cannot seed"):
        encode(EncodeConfig(dataset="synthetic", seed=-1, workdir=str(tmp_path / "w")))
    assert not (tmp_path / "w").exists()
    with pytest.raises(DaitError, match="--seeds 0,-1: seeds are integers of 0 or more"):
        build_plan("teachers", ("cub",), seeds=(0, -1))
    r = CliRunner().invoke(cli, ["--workdir", str(ws), "train-teacher", "--seed", "-1"])
    assert r.exit_code == 2 and "-1 is not in the range x>=0" in r.output


def test_verify_reports_non_finite_embeddings(tiny_cache_workspace, tmp_path):
    import h5py

    from dait_cache.cache import verify_cache
    from dait_cache.cache.manifest import read_manifest, write_manifest

    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache_workspace / "cub" / "cache", cache)
    manifest = read_manifest(cache)
    shard = manifest["splits"]["train"]["shards"][0]
    with h5py.File(cache / shard["path"], "r+") as f:
        emb = f["img_emb"][...]
        emb[0, 1, 3] = np.nan
        f["img_emb"][...] = emb
    shard["sha256"] = sha256_file(cache / shard["path"])  # a NaN the checksums agree with
    write_manifest(cache, manifest)
    assert any("img_emb holds 1 NaN/Inf" in p for p in verify_cache(cache))


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_one_writer_per_cache_and_per_run(vlm_id, data_root, tmp_path, ws):
    import os
    import socket

    cfg = make_cfg(vlm_id, data_root, tmp_path / "enc")
    lock = cfg.cache_dir.parent / ".encode.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))  # a live owner
    with pytest.raises(DaitError, match=rf"cache .* is in use by process {os.getpid()}"):
        encode(cfg)
    assert not cfg.cache_dir.exists()
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))  # its owner died
    encode(cfg)
    assert not lock.exists() and open_cache(cfg.cache_dir).manifest["text"]["state"] == "complete"

    run_lock = ws / "cub" / "students" / ".resnet10t-none.lock"
    run_lock.parent.mkdir(parents=True, exist_ok=True)
    run_lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with pytest.raises(DaitError, match=r"run .*resnet10t-none is in use by process"):
        train_student(student(ws, method="none"))
    run_lock.unlink()
    train_student(student(ws, method="none"))
    assert not run_lock.exists()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_unsafe_damaged_or_foreign_checkpoints_are_one_line_refusals(ws, tmp_path):
    teacher_dir = ws / "cub" / "teacher" / "resnet10t-dait"
    best = teacher_dir / ckpt.BEST
    good = best.read_bytes()
    marker = tmp_path / "pwned"
    torch.save({"step": _RunsCode(marker)}, best)  # a pickle that would run code when loaded
    with pytest.raises(DaitError, match=r"best.pt is not a readable dait-cache checkpoint.*unsafe to load"):
        train_student(student(ws, method="dait-l", teacher="resnet10t-dait"))
    assert not marker.exists()
    best.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DaitError, match=r"best.pt is not a readable dait-cache checkpoint"):
        train_student(student(ws, method="dait-l", teacher="resnet10t-dait"))
    other, _ = train_teacher(TrainConfig(workdir=str(ws), arch="resnet18", name="other-arch", **COMMON))
    shutil.copy(other / ckpt.BEST, best)  # another architecture's weights
    with pytest.raises(DaitError, match=r"best.pt does not fit resnet10t .*another --arch"):
        train_student(student(ws, method="dait-l", teacher="resnet10t-dait"))
    cfg = student(ws, method="none", name="resume-foreign")
    run_dir, _ = train_student(cfg)
    shutil.copy(other / ckpt.CHECKPOINT, run_dir / ckpt.CHECKPOINT)
    with pytest.raises(DaitError, match=r"checkpoint.pt does not fit resnet10t with none"):
        train_student(replace(cfg, resume=True, epochs=2))


def test_training_leaves_the_callers_random_state_alone(ws):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_student(student(ws, method="none", name="rng"))
    assert torch.equal(torch.rand(3), expected)


def test_testing_only_reported_epochs_reports_the_same_numbers(ws):
    from dait_cache.train import checkpoint as ckpt

    runs = {}
    for mode in ("every", "selected"):
        run_dir, s = train_student(replace(student(ws, method="none", name=mode), epochs=4, lr=3e-3, eval_test=mode))
        runs[mode] = (s, ckpt.read_metrics(run_dir))
    (every, rows_every), (selected, rows_sel) = runs["every"], runs["selected"]
    for key in ("test_top1_last", "test_top1_best_val", "val_top1_best", "best_epoch"):
        assert selected[key] == every[key], key
    assert [r["val_top1"] for r in rows_sel] == [r["val_top1"] for r in rows_every]
    # tested: the best epoch on validation (the first of equals) and the last, nothing else
    best_epoch = max(rows_every, key=lambda r: (r["val_top1"], -r["epoch"]))["epoch"]
    assert [r["test_top1"] for r in rows_sel] == [
        r["test_top1"] if r["epoch"] in (best_epoch, 3) else None for r in rows_every
    ]
    assert best_epoch != 3  # the best epoch's number came from best.pt after training


def test_sparse_checkpoints_still_resume_to_the_same_weights(ws):
    """With --checkpoint-minutes, an interrupted run resumes from its last checkpoint (or starts
    again when it has none) and ends with the weights of an uninterrupted run."""
    from dait_cache.train import checkpoint as ckpt

    straight_dir, _ = train_student(replace(student(ws, method="none", name="straight"), epochs=3))
    cfg = replace(student(ws, method="none", name="sparse"), epochs=3, checkpoint_minutes=10.0)

    def stop_after_second(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_student(cfg, on_epoch=stop_after_second)
    run_dir = ws / "cub" / "students" / "resnet10t-none-sparse"
    (run_dir / "checkpoint.pt.tmp").write_bytes(b"half a checkpoint")  # as a SIGKILL mid-write leaves
    (run_dir / "metrics.jsonl.old.tmp").write_bytes(b"{")  # a name no later write replaces
    assert not (run_dir / ckpt.CHECKPOINT).exists()  # none due yet: only after the last epoch
    assert ckpt.read_summary(run_dir)["status"] == "interrupted"
    _, summary = train_student(cfg)  # nothing to resume: it starts again
    assert summary["status"] == "finished" and ckpt.load(run_dir / ckpt.CHECKPOINT)["epoch"] == 2
    assert not list(run_dir.glob("*.tmp"))
    a, b = ckpt.load(straight_dir / ckpt.CHECKPOINT)["step"], ckpt.load(run_dir / ckpt.CHECKPOINT)["step"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_teacher_picked_is_the_newest_finished_one_of_the_students_rows(tiny_cache_workspace, tmp_path):
    """Each of the fields that decide a run's rows (seed, val_fraction, train_fraction) keeps a
    teacher from a student on its own; a named teacher of other rows is refused naming the field;
    one of another cache is left to the cache check, which names the cache."""
    import os

    from dait_cache.config import save_config
    from dait_cache.errors import CacheError
    from dait_cache.train.runs import check_same_cache, pick_teacher

    cache = open_cache(tiny_cache_workspace / "cub" / "cache")
    rows = {"seed": 3, "val_fraction": 0.2, "train_fraction": 0.5}
    folders = tmp_path / "cub"

    def teacher(name, age, status="finished", **other):
        run_dir = folders / "teacher" / name
        run_dir.mkdir(parents=True)
        save_config({"role": "teacher", "cache_fingerprint": cache.fingerprint, **rows, **other}, run_dir)
        ckpt.write_summary(run_dir, {"status": status})
        (run_dir / ckpt.BEST).write_bytes(b"weights")
        os.utime(run_dir / ckpt.SUMMARY, ns=(age, age))  # finished `age` ns after the epoch

    teacher("older", 1)
    teacher("newer", 2)
    teacher("unfinished", 3, status="running")
    teacher("other-seed", 4, seed=4)
    teacher("other-val", 5, val_fraction=0.1)
    teacher("other-fraction", 6, train_fraction=1.0)
    teacher("other-cache", 7, cache_fingerprint="0" * 16)  # the newest of the student's rows
    teacher("foreign", 0, cache_fingerprint="0" * 16, seed=9)  # another cache, other rows
    cfg = TrainConfig(workdir=str(tmp_path), role="student", method="dait-f", **rows)
    assert pick_teacher(folders, None, cfg, cache).name == "newer"
    for name, said in (("other-seed", "seed: teacher 4, student 3"), ("other-val", "val_fraction: teacher 0.1, "
                       "student 0.2"), ("other-fraction", "train_fraction: teacher 1.0, student 0.5")):  # fmt: skip
        with pytest.raises(DaitError, match=f"teacher {name} was trained on other rows than this student \\({said}\\)"):
            pick_teacher(folders, name, cfg, cache)
    for name in ("other-cache", "foreign"):  # what differs first is the cache: that refusal names it
        config = json.loads((pick_teacher(folders, name, cfg, cache) / "config.json").read_text())
        with pytest.raises(CacheError, match=f"was trained on cache {'0' * 16}, not on"):
            check_same_cache(config, cache, f"teacher {name}")
    # a student of the other rows finds the one teacher of its rows, though newer ones exist
    for other, name in (({"seed": 4}, "other-seed"), ({"val_fraction": 0.1}, "other-val"),
                        ({"train_fraction": 1.0}, "other-fraction")):  # fmt: skip
        assert pick_teacher(folders, None, replace(cfg, **other), cache).name == name
    with pytest.raises(DaitError, match="no finished teacher .* seed 5; finished: other-cache, other-fraction"):
        pick_teacher(folders, None, replace(cfg, seed=5), cache)


# Settings a resumed run may change: where and how it runs, not what it computes (epochs may only grow;
# max_batches is the API's debugging cap). Every other TrainConfig field changes a run's numbers.
MAY_CHANGE_ON_RESUME = {"role", "dataset", "workdir", "name", "epochs", "device", "workers", "resume",
                        "max_batches", "compile", "eval_test", "checkpoint_minutes", "log"}  # fmt: skip


def test_every_setting_that_changes_a_runs_numbers_is_refused_on_resume():
    from dataclasses import asdict, fields

    from dait_cache.train.runs import resume_differences

    def other(value):
        if isinstance(value, bool):
            return not value
        if isinstance(value, (int, float)):
            return value + 1
        return 0.125 if value is None else f"{value}x"

    saved_cfg = TrainConfig(role="student", method="kd", teacher="t", lambda_rate=0.25)
    saved = asdict(saved_cfg)
    for f in fields(TrainConfig):
        changed = replace(saved_cfg, **{f.name: other(getattr(saved_cfg, f.name))})
        diffs = resume_differences(saved, changed, epochs_done=1)
        if f.name in MAY_CHANGE_ON_RESUME:
            assert diffs == [], f.name
        else:
            assert [d.split(":")[0] for d in diffs] == [f.name], f.name
