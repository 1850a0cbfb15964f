"""DAIT stage 1 and the shared engine, on a tiny cache whose VLM has been deleted."""

import hashlib
import io
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from encode_helpers import own_workspace, torchrun_two, train_cfg

from dait_cache.cache import open_cache
from dait_cache.cache.reader import PixelSource
from dait_cache.errors import DaitError
from dait_cache.locks import live_readers
from dait_cache.models import create_backbone
from dait_cache.provenance import cpu_name
from dait_cache.train import checkpoint as ckpt
from dait_cache.train.data import epoch_plan
from dait_cache.train.loop import model_input, split_counts, split_rows
from dait_cache.train.objectives import VLMAlignment
from dait_cache.train.runs import load_run_backbone
from dait_cache.train.teacher import train_teacher


def test_gradients_reach_teacher_and_both_mlps_not_the_cache(tiny_cache_workspace):
    cache = open_cache(tiny_cache_workspace / "cub" / "cache")
    model = create_backbone("resnet18", cache.num_classes, pretrained=False)
    obj = VLMAlignment(
        32, model.num_features, torch.from_numpy(cache.class_text_emb()), lambda_rate=0.5, lambda_bias=0.0
    )
    v = torch.from_numpy(cache.img_emb("train")[:4, 1]).float().requires_grad_(True)
    x = torch.randn(4, 3, 64, 64)
    batch = {"x": x, "pixels": None, "label": torch.tensor([0, 1, 2, 3]), "vlm_img": v}
    loss, logits, terms = obj(model, batch, epoch=1)  # lambda 0.5: every term counts
    loss.backward()
    assert set(terms) == {"ce", "sia", "ira"}
    for module in (model.net.conv1, obj.mlp_img[0], obj.mlp_txt[0], obj.mlp_txt[2]):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    assert v.grad is None and obj.class_text.grad is None
    assert not obj.class_text.requires_grad


def test_epoch_plan_sees_every_image_once_through_an_augmented_view():
    rows = np.arange(10, 30)
    order, views = epoch_plan(rows, 4, seed=0, epoch=3)
    assert sorted(order.tolist()) == rows.tolist() and set(views.tolist()) <= {1, 2, 3}
    again = epoch_plan(rows, 4, seed=0, epoch=3)
    assert np.array_equal(order, again[0]) and np.array_equal(views, again[1])
    assert not np.array_equal(order, epoch_plan(rows, 4, seed=0, epoch=4)[0])
    r0, _ = epoch_plan(rows, 4, 0, 3, rank=0, world=2)
    r1, _ = epoch_plan(rows, 4, 0, 3, rank=1, world=2)
    assert sorted(r0.tolist() + r1.tolist()) == rows.tolist()
    shares = [epoch_plan(rows, 4, 0, 3, rank=r, world=3)[0] for r in range(3)]
    assert [len(s) for s in shares] == [6, 6, 6]  # equal shares: 20 // 3 * 3 rows this epoch
    assert len(set(np.concatenate(shares).tolist())) == 18


def test_splits_disjoint_and_fraction_taken_after_val(tiny_cache_workspace):
    cache = open_cache(tiny_cache_workspace / "cub" / "cache")
    train, val = split_rows(cache, train_cfg(tiny_cache_workspace))
    assert len(set(train) & set(val)) == 0 and len(train) + len(val) == 32
    train_half, val2 = split_rows(cache, train_cfg(tiny_cache_workspace, train_fraction=0.5))
    assert np.array_equal(val, val2) and set(train_half) < set(train)
    # 50% means half of the official 8 images per class, drawn from the 6 the val split left
    assert np.bincount(cache.labels("train")[train_half]).tolist() == [4, 4, 4, 4]


def test_split_counts_say_when_the_fraction_is_capped_and_val_can_be_off(tiny_cache_workspace):
    cache = open_cache(tiny_cache_workspace / "cub" / "cache")
    full = split_counts(cache, train_cfg(tiny_cache_workspace, train_fraction=1.0))
    assert full == {"n_train": 24, "n_val": 8, "n_test": 12, "n_train_requested": 32, "capped": True}
    assert split_counts(cache, train_cfg(tiny_cache_workspace, train_fraction=0.5))["capped"] is False
    none = split_counts(cache, train_cfg(tiny_cache_workspace, val_fraction=0.0, train_fraction=1.0))
    assert none == {"n_train": 32, "n_val": 0, "n_test": 12, "n_train_requested": 32, "capped": False}
    caller = torch.manual_seed(7).get_state()
    run_dir, summary = train_teacher(train_cfg(tiny_cache_workspace, val_fraction=0.0, epochs=2, name="noval"))
    assert torch.equal(torch.get_rng_state(), caller)  # the run's seeding leaves the caller's RNG alone
    assert summary["n_val"] == 0 and summary["n_train"] == 32
    assert summary["test_top1_best_val"] == summary["test_top1_last"] and summary["best_epoch"] == 1


def test_two_epoch_run_writes_every_file(tiny_cache_workspace):
    cfg = train_cfg(tiny_cache_workspace, arch="regnety_016", name="full", workers=2, lr_step=1, lr_gamma=0.5)
    rows, readers = [], []
    cache_dir = tiny_cache_workspace / "cub" / "cache"
    run_dir, summary = train_teacher(
        cfg, on_epoch=lambda row: (rows.append(row), readers.append(live_readers(cache_dir)))
    )
    assert run_dir == tiny_cache_workspace / "cub" / "teacher" / "full"
    # the run is a registered reader of its cache while it trains (encode --overwrite waits), not after
    assert [[(r["pid"], r["what"]) for r in now] for now in readers] == [[(os.getpid(), f"run {run_dir}")]] * 2
    assert live_readers(cache_dir) == []
    for f in ("config.json", "metrics.jsonl", "checkpoint.pt", "best.pt", "summary.json"):
        assert (run_dir / f).is_file(), f
    assert not list(run_dir.glob("*.tmp"))
    metrics = ckpt.read_metrics(run_dir)
    assert [m["epoch"] for m in metrics] == [0, 1] and metrics == rows
    for key in (
        "loss",
        "ce",
        "sia",
        "ira",
        "lambda",
        "lr",
        "train_top1",
        "val_top1",
        "test_top1",
        "seconds",
        "images_per_s",
    ):
        assert key in metrics[0], key
    assert metrics[0]["lambda"] == 0.0 and metrics[1]["lambda"] == 0.5
    assert [m["lr"] for m in metrics] == [1e-3, 5e-4]  # what each epoch trained with, not the next one's
    for m in metrics:  # 24 training images an epoch, trained in less than the epoch's time without evaluation
        assert m["images_per_s"] > 24 / (m["seconds"] - m["eval_seconds"])
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "finished" and s["epochs_done"] == 2
    best = max(range(2), key=lambda e: (metrics[e]["val_top1"], -e))
    assert s["best_epoch"] == best and s["val_top1_best"] == metrics[best]["val_top1"]
    assert s["test_top1_best_val"] == metrics[best]["test_top1"] and s["test_top1_last"] == metrics[1]["test_top1"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["cache_fingerprint"] == open_cache(tiny_cache_workspace / "cub" / "cache").fingerprint
    assert config["lambda_rate_resolved"] == 0.5
    raw = (run_dir / "checkpoint.pt").read_bytes()  # a header with the sha256 of torch.save's bytes
    head = len(ckpt.MAGIC) + 65
    assert (
        raw.startswith(ckpt.MAGIC)
        and hashlib.sha256(raw[head:]).hexdigest().encode() == raw[len(ckpt.MAGIC) : head - 1]
    )
    assert torch.load(io.BytesIO(raw[head:]), weights_only=True)["epoch"] == 1  # plain torch reads the rest
    state = ckpt.load(run_dir / "checkpoint.pt")
    assert [m["epoch"] for m in state["metrics"]] == [0, 1]
    assert any(k.startswith("objective.mlp_img") for k in state["step"])
    assert any(k.startswith("objective.mlp_txt") for k in state["step"])
    ckpt.load(run_dir / "best.pt")
    import csv

    with open(run_dir / "metrics.csv", newline="") as f:  # the same rows, for spreadsheets
        table = list(csv.DictReader(f))
    assert [{k: float(v) for k, v in row.items() if v != ""} for row in table] == [
        {k: float(v) for k, v in m.items() if v is not None} for m in metrics
    ]
    with pytest.raises(DaitError, match="already exists.*--resume"):
        train_teacher(cfg)


def test_a_run_that_finished_after_the_first_check_is_not_trained_over(tiny_cache_workspace, monkeypatch):
    """Two commands for one run folder: the second passes the early check while the first still
    trains, then takes the lock once the first has finished; it must refuse, not start over."""
    from dait_cache.train import teacher as teacher_mod

    cfg = train_cfg(tiny_cache_workspace, epochs=1, name="race")
    run_dir, _ = train_teacher(cfg)
    finished = (run_dir / "best.pt").read_bytes()
    monkeypatch.setattr(teacher_mod, "prepare_run_dir", lambda run_dir, resume: None)  # the early check passed
    with pytest.raises(DaitError, match="already exists.*--resume"):
        train_teacher(cfg)
    assert (run_dir / "best.pt").read_bytes() == finished


@pytest.fixture(scope="module")
def dropout_arch():
    """timm's tiny ResNet with dropout: a network whose training step draws random numbers."""
    import timm
    from timm.models import register_model

    if "test_resnet_dropout" not in timm.list_models():

        @register_model
        def test_resnet_dropout(pretrained=False, **kw):
            return timm.create_model("test_resnet", pretrained=pretrained, drop_rate=0.5, **kw)

    return "test_resnet_dropout"


def test_resume_gives_the_same_final_weights(tiny_cache_workspace, dropout_arch):
    # the lr decays after the second epoch (a resume that lost the schedule's place decays later),
    # and dropout draws from each epoch's seeded stream
    straight, _ = train_teacher(
        train_cfg(tiny_cache_workspace, epochs=3, lr_step=2, arch=dropout_arch, name="straight")
    )

    def stop_after_first(row):
        if row["epoch"] == 0:
            raise KeyboardInterrupt

    cut = train_cfg(
        tiny_cache_workspace, epochs=3, lr_step=2, arch=dropout_arch, name="cut", checkpoint_minutes=0
    )  # one after every epoch
    with pytest.raises(KeyboardInterrupt):
        train_teacher(cut, on_epoch=stop_after_first)
    cut_dir = tiny_cache_workspace / "cub/teacher/cut"
    assert ckpt.read_summary(cut_dir)["status"] == "interrupted"
    # metrics.jsonl damaged meanwhile (its row edited): the resume takes the rows from the
    # checkpoint and rewrites the file at once, before its first epoch ends
    saved = ckpt.read_metrics(cut_dir)
    text = (cut_dir / ckpt.METRICS).read_text()
    (cut_dir / ckpt.METRICS).write_text(text.replace('"epoch": 0', '"epoch": 7'))
    seen = []

    def stop_at_first_batch(key, done, total):
        seen.append(ckpt.read_summary(cut_dir))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_teacher(replace(cut, resume=True), progress=stop_at_first_batch)
    assert ckpt.read_metrics(cut_dir) == saved
    assert (seen[0]["status"], seen[0]["epochs_done"], seen[0]["resumed"]) == ("running", 1, 1)
    run_dir, summary = train_teacher(replace(cut, resume=True))
    # resumed counts from the checkpoint: the stopped resume saved none
    assert summary["status"] == "finished" and summary["resumed"] == 1
    a = ckpt.load(straight / "checkpoint.pt")["step"]
    b = ckpt.load(run_dir / "checkpoint.pt")["step"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [m["epoch"] for m in ckpt.read_metrics(run_dir)] == [0, 1, 2]


def test_an_epoch_interrupted_part_way_resumes_exactly(tiny_cache_workspace, dropout_arch):
    """--checkpoint-minutes inside an epoch: the batch index, running sums and RNG state are in the
    checkpoint, and the resumed run ends with the same weights and metric rows as a straight one."""
    # a part checkpoint after every batch; dropout makes the RNG state part of the result
    kw = dict(epochs=2, workers=2, checkpoint_minutes=1e-9, arch=dropout_arch)
    straight, _ = train_teacher(train_cfg(tiny_cache_workspace, name="part-straight", **kw))

    def stop(key, done, total):
        if key == "epoch 2/2" and done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_teacher(train_cfg(tiny_cache_workspace, name="part-cut", **kw), progress=stop)
    cut = tiny_cache_workspace / "cub/teacher/part-cut"
    state = ckpt.load(cut / "checkpoint.pt")
    assert state["epoch"] == 0 and state["part"]["epoch"] == 1 and state["part"]["batch"] == 1
    run_dir, summary = train_teacher(train_cfg(tiny_cache_workspace, name="part-cut", resume=True, **kw))
    assert summary["status"] == "finished"
    a, b = ckpt.load(straight / "checkpoint.pt")["step"], ckpt.load(run_dir / "checkpoint.pt")["step"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timing = {"seconds", "eval_seconds", "images_per_s"}
    rows = [
        [{k: v for k, v in m.items() if k not in timing} for m in ckpt.read_metrics(d)] for d in (straight, run_dir)
    ]
    assert rows[0] == rows[1]


def test_ce_method_and_unknown_dataset(tiny_cache_workspace, monkeypatch):
    run_dir, summary = train_teacher(train_cfg(tiny_cache_workspace, method="ce", epochs=1, name="ce"))
    assert set(ckpt.read_metrics(run_dir)[0]) >= {"ce", "val_top1"} and "sia" not in ckpt.read_metrics(run_dir)[0]
    with pytest.raises(DaitError, match="no cache for dataset 'dogs'.*have: cub"):
        train_teacher(train_cfg(tiny_cache_workspace, dataset="dogs"))
    import dait_cache.train.teacher as teacher

    def built(*args, **kwargs):  # with ImageNet weights, a download (or an offline error) first
        raise AssertionError("the backbone was built before the method was checked")

    monkeypatch.setattr(teacher, "create_backbone", built)
    with pytest.raises(DaitError, match=r"^unknown teacher method 'kd'; valid: dait, ce$"):  # a student's
        train_teacher(train_cfg(tiny_cache_workspace, method="kd", name="kd"))
    assert not (run_dir.parent / "kd").exists()


def test_best_weights_copied_over_the_checkpoint_are_refused_on_resume(tiny_cache_workspace, tmp_path):
    ws = own_workspace(tiny_cache_workspace, tmp_path / "ws")
    run_dir, _ = train_teacher(train_cfg(ws, epochs=1, name="copied"))
    (run_dir / ckpt.CHECKPOINT).write_bytes((run_dir / ckpt.BEST).read_bytes())  # a sealed checkpoint, of weights only
    summary = ckpt.read_summary(run_dir)
    with pytest.raises(DaitError) as err:
        train_teacher(train_cfg(ws, epochs=2, name="copied", resume=True))
    assert str(err.value) == (
        f"{run_dir / ckpt.CHECKPOINT} is not a training checkpoint (no best, optimizer, scheduler); "
        "delete it and start the run again"
    )
    assert ckpt.read_summary(run_dir) == summary  # refused before the run's record was touched


@pytest.mark.slow
def test_torchrun_two_processes_only_rank0_writes(tiny_cache_workspace, tmp_path):
    log, plans = tmp_path / "writes.log", tmp_path / "plans.log"
    args = (
        f"--workdir {tiny_cache_workspace} train-teacher --arch test_resnet --epochs 2 --batch-size 8 --no-pretrained"
    )
    args = args.split() + "--workers 0 --device cpu --val-fraction 0.25 --name ddp --eval-test selected".split()
    script = tmp_path / "run.py"
    script.write_text(f"""
import os
import dait_cache.io as c
import dait_cache.train.checkpoint as k
real = c.atomic_write_bytes
def logged(path, data):
    with open({str(log)!r}, "a") as f:
        f.write(os.environ["RANK"] + " " + str(path) + "\\n")
    real(path, data)
c.atomic_write_bytes = logged
k.atomic_write_bytes = logged
import dait_cache.train.data as data
plan = data.PlannedBatches.set_plan
def planned(self, split, rows, *args, **kw):
    with open({str(plans)!r}, "a") as f:
        f.write(f"{{os.environ['RANK']}} {{split}} {{len(rows)}}\\n")
    plan(self, split, rows, *args, **kw)
data.PlannedBatches.set_plan = planned
from cli.main import cli
from dait_cache.dist import process_group
import torch.distributed as d
with process_group("cpu"):
    # the command itself, inside a group of the caller's
    cli.main({args!r}, standalone_mode=False)
    assert d.is_initialized()  # the caller's group survives fit()
    d.barrier()
""")
    done = torchrun_two(script)
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout + done.stderr  # rank 0 speaks for the group: each line once
    assert said.count("epoch 2: ") == 1 and said.count("│ finished ") == 1 and said.count("images: ") == 1, said
    lines = log.read_text().splitlines()
    assert lines and all(line.startswith("0 ") for line in lines)
    run_dir = tiny_cache_workspace / "cub" / "teacher" / "ddp"
    summary = ckpt.read_summary(run_dir)
    assert summary["status"] == "finished"
    assert len(ckpt.read_metrics(run_dir)) == 2
    # evaluation is shared: each rank renders its half of a split, not all of it
    cache = open_cache(tiny_cache_workspace / "cub" / "cache")
    n_test = len(cache.labels("test"))
    test_plans = [line.split() for line in plans.read_text().splitlines() if line.split()[1] == "1"]
    assert sorted(test_plans) == [["0", "1", str(n_test // 2)]] * 2 + [["1", "1", str(n_test // 2)]] * 2
    # and its counts add up to what one process finds with the same weights (last epoch, best.pt)
    assert_test_numbers_are_the_weights(run_dir, summary, cache)


def assert_test_numbers_are_the_weights(run_dir, summary, cache):
    """The summary's test top-1 of the last and the best-on-validation epoch equal the top-1 of
    checkpoint.pt's and best.pt's weights, computed here on the clean test views."""
    n_test = len(cache.labels("test"))
    source, labels = PixelSource(cache, "test"), torch.as_tensor(cache.labels("test"))
    pixels = torch.stack([source.render(row, 0) for row in range(n_test)])
    for checkpoint, key in (("last", "test_top1_last"), ("best", "test_top1_best_val")):
        model = load_run_backbone(run_dir, cache.num_classes, checkpoint=checkpoint).eval()
        with torch.no_grad():
            correct = int((model(model_input(pixels, model)).argmax(1) == labels).sum())
        assert summary[key] == 100.0 * correct / n_test, key


def test_selected_evaluation_tests_the_best_epochs_weights_once_at_the_end(tiny_cache_workspace):
    # here the best epoch on validation is the first, and its weights test otherwise than the last ones
    run_dir, summary = train_teacher(train_cfg(tiny_cache_workspace, name="selected", eval_test="selected"))
    rows, best = ckpt.read_metrics(run_dir), summary["best_epoch"]
    assert [r["test_top1"] is not None for r in rows] == [e in (best, 1) for e in range(2)]
    assert_test_numbers_are_the_weights(run_dir, summary, open_cache(tiny_cache_workspace / "cub" / "cache"))


@pytest.mark.slow
def test_torchrun_ranks_stop_together_when_one_rank_diverges(tiny_cache_workspace, tmp_path):
    """Batch-norm statistics are each rank's own: when only rank 1's overflow, rank 0 must not
    save the epoch and wait for a rank that has stopped; every rank refuses the epoch at once."""
    ws = own_workspace(tiny_cache_workspace, tmp_path / "ws")
    script = tmp_path / "run.py"
    script.write_text(f"""
import os
import sys
import dait_cache.train.loop as loop
from dait_cache.config import TrainConfig
from dait_cache.dist import process_group
from dait_cache.errors import DaitError
from dait_cache.train.teacher import train_teacher
real = loop.train_step
def overflowing(forward, *args):
    out = real(forward, *args)
    # DDP broadcasts rank 0's buffers before each forward: after the last step, this one stays
    next(b for n, b in forward.module.named_buffers() if n.endswith("running_var")).fill_(float("inf"))
    return out
if os.environ["RANK"] == "1":
    loop.train_step = overflowing
with process_group("cpu"):
    try:
        train_teacher(TrainConfig(workdir={str(ws)!r}, arch="test_resnet", epochs=2, batch_size=8,
                      pretrained=False, workers=0, device="cpu", val_fraction=0.25, name="diverged"))
    except DaitError as e:
        os.write(1, ("rank " + os.environ["RANK"] + " refused: " + str(e) + "\\n").encode())  # one write: ranks share the pipe
        sys.exit(3)
""")
    done = torchrun_two(script)
    said = done.stdout
    assert done.returncode != 0
    assert "rank 0 refused: the weights or batch-norm statistics became non-finite during epoch 1 on rank 1" in said
    assert "rank 1 refused: the weights or batch-norm statistics became non-finite during epoch 1 on rank 1" in said
    # the epoch's loss terms are over both ranks' images: each rank states the same row
    rows = sorted(line.split(" on rank 1 ", 1)[1] for line in said.splitlines() if " refused: " in line)
    assert len(rows) == 2 and rows[0] == rows[1]
    run_dir = ws / "cub" / "teacher" / "diverged"
    summary = ckpt.read_summary(run_dir)
    assert summary["status"] == "failed" and "non-finite during epoch 1" in summary["error"]
    assert not (run_dir / ckpt.CHECKPOINT).exists() and not ckpt.read_metrics(run_dir)


@pytest.mark.slow
def test_torchrun_continues_a_one_process_part_epoch_once_per_image(tiny_cache_workspace, tmp_path):
    """A run stopped part-way through an epoch in one process, resumed under torchrun: the ranks
    share what that process had left of the epoch (each image once), and the part's sums count once."""
    from dataclasses import asdict

    import dait_cache.train.loop as loop

    ws = own_workspace(tiny_cache_workspace, tmp_path / "ws")
    cfg = train_cfg(ws, name="moved", batch_size=4, checkpoint_minutes=1e-9)  # a part after every batch

    def stop(key, done, total):
        if key.startswith("epoch 1/") and done == 3:
            raise KeyboardInterrupt

    trained = []
    real = loop.make_batch

    def logged(pixels, index, *args):
        trained.extend(index[:, 1].tolist())
        return real(pixels, index, *args)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(loop, "make_batch", logged)
        train_teacher(cfg, progress=stop)
    run_dir = ws / "cub" / "teacher" / "moved"
    part = ckpt.load(run_dir / ckpt.CHECKPOINT)["part"]
    assert part["batch"] == 2 and part["seen"] == 8
    before = trained[: part["seen"]]  # what the checkpoint holds; the 3rd batch was lost with the stop
    log = tmp_path / "rows.log"
    script = tmp_path / "run.py"
    script.write_text(f"""
import json
import os
import dait_cache.train.loop as loop
from dait_cache.config import TrainConfig
from dait_cache.dist import process_group
from dait_cache.train.teacher import train_teacher
rank = os.environ["RANK"]
def say(line):
    with open({str(log)!r}, "a") as f:
        f.write(rank + " " + line + "\\n")
real_batch, real_row = loop.make_batch, loop._Tally.row
def make_batch(pixels, index, *args):
    say("rows " + " ".join(map(str, index[:, 1].tolist())))
    return real_batch(pixels, index, *args)
def row(self, *args):
    out = real_row(self, *args)
    say("seen " + str(out["seen"]))
    return out
loop.make_batch, loop._Tally.row = make_batch, row
with process_group("cpu"):
    train_teacher(TrainConfig(**json.loads({json.dumps({**asdict(cfg), "resume": True})!r})))
""")
    done = torchrun_two(script)
    assert done.returncode == 0, done.stderr[-3000:]
    assert ckpt.read_summary(run_dir)["status"] == "finished"
    first = {"0": [], "1": []}  # each rank's rows of the continued epoch, and the images it counted
    seen = {}
    for rank, what, *values in (line.split(" ") for line in log.read_text().splitlines()):
        if what == "rows" and rank not in seen:
            first[rank] += map(int, values)
        elif what == "seen":
            seen.setdefault(rank, int(values[0]))
    every = before + first["0"] + first["1"]
    assert first["0"] and first["1"] and len(set(every)) == len(every)  # no image twice
    rows = loop.split_rows(open_cache(ws / "cub" / "cache"), cfg)[0].tolist()
    assert len(rows) == 24 and len(first["0"]) == len(first["1"]) == 8  # 2 batches of 4 each: none dropped
    assert sorted(every) == sorted(rows)  # the epoch trained each of its images once
    assert seen == {"0": 24, "1": 24}  # the part's 8 images counted once, by rank 0


@pytest.mark.slow
def test_torchrun_saves_parts_of_an_epoch_and_resumes_them_exactly(tiny_cache_workspace, tmp_path):
    """--checkpoint-minutes inside an epoch under torchrun: the ranks agree on when, rank 0 writes
    the group's sums, the images done and every rank's RNG state, and a resumed two-process run
    ends with the weights of an uninterrupted one."""
    import shutil
    from dataclasses import asdict

    ws = tmp_path / "ws"  # the cache alone: the shared workspace holds other tests' runs
    shutil.copytree(tiny_cache_workspace / "cub" / "cache", ws / "cub" / "cache")
    # a part after every batch; dropout makes the RNG states part of the result
    cfg = asdict(train_cfg(ws, batch_size=4, checkpoint_minutes=1e-9, arch="test_resnet_dropout"))
    script = tmp_path / "run.py"
    body = """
import json
import sys
import timm
from timm.models import register_model
import dait_cache.train.loop as loop
from dait_cache.config import TrainConfig
from dait_cache.dist import process_group
from dait_cache.train.teacher import train_teacher

@register_model
def test_resnet_dropout(pretrained=False, **kw):
    return timm.create_model("test_resnet", pretrained=pretrained, drop_rate=0.5, **kw)

loop.PART_CHECK_EVERY = 1  # ask every batch (50 in a real run)
cfg = json.loads(sys.argv[1])

def stop(key, done, total):
    if key.startswith("epoch 2/") and done == 2:
        raise KeyboardInterrupt

with process_group("cpu"):
    if sys.argv[2] == "first":
        train_teacher(TrainConfig(**{**cfg, "name": "straight"}))
        try:
            train_teacher(TrainConfig(**{**cfg, "name": "cut"}), progress=stop)
        except KeyboardInterrupt:
            pass
        else:
            raise SystemExit("the stop did not happen")
    else:
        train_teacher(TrainConfig(**{**cfg, "name": "cut", "resume": True}))
"""
    script.write_text(body)
    for phase in ("first", "resume"):
        done = torchrun_two(script, json.dumps(cfg), phase)
        assert done.returncode == 0, done.stderr[-3000:]
        if phase == "first":
            state = ckpt.load(ws / "cub/teacher/cut" / ckpt.CHECKPOINT)
            part = state["part"]  # saved after epoch 2's first batch: 1 batch of 4 on each of 2 ranks
            assert state["epoch"] == 0 and part["epoch"] == 1 and part["images"] == 8 and part["seen"] == 8
            assert len(part["rng_ranks"]) == 2
    straight, cut = ws / "cub/teacher/straight", ws / "cub/teacher/cut"
    assert ckpt.read_summary(cut)["status"] == "finished" and ckpt.read_summary(cut)["resumed"] == 1
    a, b = ckpt.load(straight / ckpt.CHECKPOINT)["step"], ckpt.load(cut / ckpt.CHECKPOINT)["step"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [ckpt.read_metrics(d) for d in (straight, cut)]
    for x, y in zip(*rows):  # the counts exactly; the loss sums are added in another order (float32)
        assert (x["train_top1"], x["val_top1"], x["test_top1"]) == (y["train_top1"], y["val_top1"], y["test_top1"])
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-6)


def test_config_json_records_provenance(tiny_cache_workspace):
    import platform
    import socket
    from importlib import metadata

    run_dir, _ = train_teacher(train_cfg(tiny_cache_workspace, epochs=1, name="provenance", log="none"))
    assert (run_dir / "metrics.jsonl").is_file() and not (run_dir / "metrics.csv").exists()
    p = json.loads((run_dir / "config.json").read_text())["provenance"]
    for pkg in ("torch", "torchvision", "timm", "open_clip_torch", "h5py", "numpy"):
        assert p["versions"][pkg] == metadata.version(pkg)
    assert p["host"] == socket.gethostname() and p["device"] == "cpu" and p["python"] == platform.python_version()
    assert p["workdir"] == str(Path(tiny_cache_workspace).resolve())
    # the CPU and its kernels: CPU training rounds differently on another instruction set
    assert p["cpu_kernels"] == torch.backends.cpu.get_cpu_capability() and p["threads"] == torch.get_num_threads()
    assert p["cpu"] == cpu_name() and p["device_name"] == f"{cpu_name()}, {p['cpu_kernels']} kernels"
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    assert p["git_commit"] is None if not head else p["git_commit"].split("+")[0] == head
    cache_cfg = json.loads((tiny_cache_workspace / "cub" / "cache" / "config.json").read_text())
    assert cache_cfg["provenance"]["versions"] == p["versions"]


def test_a_resumed_run_keeps_where_it_began_and_records_where_it_went_on(tiny_cache_workspace, monkeypatch):
    """A resume on another machine or version replaced config.json's provenance: the numbers of
    the epochs trained first lost their trace."""
    from dait_cache.train import engine

    cfg = train_cfg(tiny_cache_workspace, epochs=1, name="provenance-resumed", log="none")
    run_dir = tiny_cache_workspace / "cub" / "teacher" / cfg.name
    run_dir.mkdir(parents=True)  # a run that died before its first checkpoint: a fresh start is no resume
    (run_dir / "config.json").write_text(json.dumps({"provenance": {"host": "the crashed run's"}}))
    train_teacher(cfg)
    first = json.loads((run_dir / "config.json").read_text())["provenance"]
    assert first["host"] != "the crashed run's" and "resumed_provenance" not in json.loads(
        (run_dir / "config.json").read_text()
    )
    elsewhere = [{**first, "host": "other-machine", "git_commit": "0123abc"}, {**first, "host": "third"}]
    monkeypatch.setattr(engine, "provenance", lambda workdir, device: dict(elsewhere[0]))
    train_teacher(replace(cfg, epochs=2, resume=True))  # epoch 2 on another machine
    monkeypatch.setattr(engine, "provenance", lambda workdir, device: dict(elsewhere[1]))
    train_teacher(replace(cfg, epochs=2, resume=True))  # finished: nothing left to train there
    config = json.loads((run_dir / "config.json").read_text())
    assert config["provenance"] == first and config["epochs"] == 2
    assert config["resumed_provenance"] == [{**elsewhere[0], "from_epoch": 1}, {**elsewhere[1], "from_epoch": 2}]


def tensorboard_scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_log_tensorboard_writes_each_epoch_once_across_a_resume(tiny_cache_workspace):
    # no checkpoint is due within 10 minutes: the resumed run starts again from epoch 0
    cfg = train_cfg(tiny_cache_workspace, epochs=3, name="tb", log="tensorboard", checkpoint_minutes=10)

    def stop_after_second(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_teacher(cfg, on_epoch=stop_after_second)
    run_dir, _ = train_teacher(cfg)  # nothing to resume: it starts again in the same folder
    metrics = ckpt.read_metrics(run_dir)
    scalars = tensorboard_scalars(run_dir)
    # epochs 0 and 1 were logged, then the run stopped before any checkpoint: the resume logged
    # them again, and TensorBoard keeps only the second copy
    assert [step for step, _ in scalars["top1/val"]] == [0, 1, 2]
    for tag, key in (("top1/val", "val_top1"), ("loss/loss", "loss"), ("loss/sia", "sia"), ("schedule/lr", "lr")):
        assert scalars[tag] == [(m["epoch"], pytest.approx(m[key], rel=1e-6)) for m in metrics], tag
    # only the objective's terms are losses (ckpt.loss_terms, shared with the curves figure)
    assert {t for t in scalars if t.startswith("loss/")} == {"loss/loss", "loss/ce", "loss/sia", "loss/ira"}
    assert not (run_dir / "metrics.csv").exists()


def test_tensorboard_scalars_are_the_rows_finite_numbers_under_their_tags():
    from dait_cache.train.tensorboard import scalars

    row = {"epoch": 4, "val_top1": float("nan"), "test_top1": 50, "lr": 1e-4, "loss": 2.5, "kl": float("inf")}
    row |= {"ce": 0.5, "images_per_s": 120.0, "lambda": 0.25, "digest": "ab12", "seconds": None}
    assert scalars(row) == {  # no validation split (NaN), an overflowed term and what is no number: left out
        "top1/test": 50.0,
        "schedule/lr": 1e-4,
        "loss/loss": 2.5,
        "loss/ce": 0.5,
        "time/images_per_s": 120.0,
        "schedule/lambda": 0.25,
    }


def test_log_tensorboard_without_the_package_is_one_line(tiny_cache_workspace, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(DaitError, match=r"--log tensorboard needs the tensorboard package: pip install"):
        train_teacher(train_cfg(tiny_cache_workspace, name="tb-missing", log="tensorboard"))
    assert not (tiny_cache_workspace / "cub" / "teacher" / "tb-missing").exists()


def test_cpu_name_reads_the_model_name_with_its_family_and_model(tmp_path):
    """Two generations that call themselves alike ("AMD EPYC": Zen 1 is family 23, Zen 3 family
    25) are told apart; the first processor's block is read; without cpuinfo, platform's name."""
    info = tmp_path / "cpuinfo"

    def block(n: int, name: str, family: int, model: int) -> str:
        return f"processor\t: {n}\ncpu family\t: {family}\nmodel\t\t: {model}\nmodel name\t: {name}\nflags\t\t: fpu\n\n"

    for name, family, model, said in (
        ("Intel(R) Xeon(R) CPU @ 2.20GHz", 6, 85, "Intel(R) Xeon(R) CPU @ 2.20GHz (family 6, model 85)"),
        ("AMD EPYC", 23, 1, "AMD EPYC (family 23, model 1)"),
        ("AMD EPYC", 25, 1, "AMD EPYC (family 25, model 1)"),
    ):
        info.write_text(block(0, name, family, model) + block(1, "another", 99, 9))
        assert cpu_name(info) == said
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\n")  # a kernel that gives no numbers
    assert cpu_name(info) == "Some CPU"
    import platform

    assert cpu_name(tmp_path / "missing") == (platform.processor() or platform.machine())


def test_a_diverged_run_keeps_no_nan_checkpoint_and_says_how_to_go_on(tiny_cache_workspace, tmp_path):
    import math

    ws = own_workspace(tiny_cache_workspace, tmp_path / "ws")  # the runs below are not the other tests' to see
    # lr 1e6 diverges within a few batches; a part-epoch checkpoint after every batch
    cfg = train_cfg(ws, name="nan", lr=1e6, checkpoint_minutes=1e-9, val_fraction=0.1, batch_size=2)
    with pytest.raises(DaitError) as err:
        train_teacher(cfg)
    run_dir = ws / "cub" / "teacher" / "nan"
    # the part checkpoints went on after the loss was NaN, so --resume continued from NaN weights
    part = ckpt.load(run_dir / ckpt.CHECKPOINT)["part"]
    assert part["epoch"] == 0 and all(math.isfinite(v) for v in part["sums"].values())
    assert all(torch.isfinite(v).all() for v in ckpt.load(run_dir / ckpt.CHECKPOINT)["step"].values())
    # the advice was "lower --lr and continue with --resume", which refuses another --lr
    said = str(err.value)
    # here the loss was still finite: batch-norm's running variance overflowed first
    assert said.startswith("the weights or batch-norm statistics became non-finite during epoch 1 (") and said.endswith(
        "; the last checkpoint is from before it, but a resumed run keeps its --lr: lower --lr and start "
        f"another run (--name NEW, or delete {run_dir})"
    )
    first = replace(cfg, name="nan0", checkpoint_minutes=0)  # checkpoints after each epoch only
    with pytest.raises(DaitError) as err:
        train_teacher(first)
    said = str(err.value)
    assert said.startswith("loss became non-finite during epoch 1 (")
    assert said.endswith("; nothing was saved: lower --lr and run the command again")
    assert not (ws / "cub" / "teacher" / "nan0" / ckpt.CHECKPOINT).exists()
    # an epoch that ends where the first run stopped, its loss finite: its end is checked too
    short = replace(first, name="nan1", max_batches=int(part["batch"]) + 1)
    with pytest.raises(DaitError, match=r"^the weights or batch-norm statistics became non-finite during epoch 1"):
        train_teacher(short)
    assert not (ws / "cub" / "teacher" / "nan1" / ckpt.CHECKPOINT).exists()
    _, summary = train_teacher(replace(first, lr=1e-3, epochs=1))  # the same command, a lower --lr
    assert summary["status"] == "finished"


def test_a_full_disk_stops_training_with_one_line_and_the_resume_hint(tiny_cache_workspace, monkeypatch):
    import errno

    def full(*args, **kw):  # what the OS says when the checkpoint's bytes do not fit
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_epoch", full)
    run_dir = tiny_cache_workspace / "cub" / "teacher" / "full-disk"
    with pytest.raises(DaitError) as err:
        train_teacher(train_cfg(tiny_cache_workspace, name="full-disk", epochs=1))
    assert str(err.value) == (
        f"the disk holding {run_dir} is full (No space left on device); free some space and "
        "continue with --resume (from its last checkpoint)"
    )
    assert ckpt.read_summary(run_dir)["status"] == "failed"


def test_a_teacher_starts_from_a_weights_file_or_else_from_its_seed(tiny_cache_workspace, tmp_path):
    import timm

    torch.manual_seed(7)
    src = timm.create_model("test_resnet", pretrained=False).state_dict()  # a local state dict, as offline
    torch.save(src, tmp_path / "w.pth")

    def start(name, **kw):  # one epoch at a learning rate too small to move a weight visibly
        torch.manual_seed(1000 + len(name))  # the caller's random state differs from run to run
        run_dir, _ = train_teacher(train_cfg(tiny_cache_workspace, name=name, method="ce", epochs=1, lr=1e-12, **kw))
        return ckpt.load(run_dir / "checkpoint.pt")["step"]["model.net.conv1.0.weight"]

    from_file = start("from-file", weights=str(tmp_path / "w.pth"))
    assert torch.allclose(from_file, src["conv1.0.weight"], atol=1e-6)
    a, b = start("seeded-a"), start("seeded-bb")
    assert torch.equal(a, b) and not torch.allclose(a, src["conv1.0.weight"], atol=1e-3)
