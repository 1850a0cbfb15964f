"""Run folders on their own (train/runs.py): settings refused up front, names, what a resume or a
rerun would change, finished runs and teachers. Real folders, real summary files; the expected
strings are written out here."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest

from dait_cache.config import TrainConfig
from dait_cache.errors import CacheError, DaitError
from dait_cache.train import checkpoint as ckpt
from dait_cache.train import runs


@pytest.mark.parametrize(
    "change, said",
    [
        ({"lr": 0.0}, "--lr 0.0 cannot train: give a finite number above 0"),
        ({"lr": float("inf")}, "--lr inf cannot train: give a finite number above 0"),
        ({"temperature": -1.0}, "--temperature -1.0 cannot train: give a finite number above 0"),
        ({"weight_decay": -0.1}, "--weight-decay -0.1 cannot train: give a finite number of 0 or more"),
        ({"lr_gamma": 0.0}, "--lr-gamma 0.0 cannot train: give a finite number above 0"),
        ({"checkpoint_minutes": -1.0}, "--checkpoint-minutes -1.0 cannot train: give a finite number of 0 or more"),
        ({"lambda_bias": float("nan")}, "--lambda-bias nan cannot train: give a finite number"),
        ({"lambda_rate": float("-inf")}, "--lambda-rate -inf cannot train: give a finite number"),
        ({"log": "wandb"}, "--log must be one of csv, tensorboard, none, not 'wandb'"),
        ({"eval_test": "never"}, "--eval-test must be every or selected, not 'never'"),
        ({"seed": -1}, "--seed -1 cannot seed numpy's generators"),
        ({"device": "cuda:7"}, "cuda"),
    ],
)
def test_settings_that_cannot_train_are_refused_by_name(change, said):
    with pytest.raises(DaitError) as err:
        runs.check_settings(TrainConfig(**change))
    assert str(err.value).startswith(said) or said in str(err.value), str(err.value)


def test_settings_at_their_limits_are_accepted():
    edge = TrainConfig(weight_decay=0.0, checkpoint_minutes=0.0, lambda_bias=-3.0, lambda_rate=0.0, log="none")
    runs.check_settings(edge)
    runs.check_settings(replace(edge, eval_test="selected", device="cpu"))


@pytest.mark.parametrize("name", [".", "..", "a/b", "a\\b", "/abs"])
def test_a_run_name_is_one_plain_folder_name(name):
    with pytest.raises(DaitError, match=r"must be a plain folder name"):
        runs.check_run_name(name)


@pytest.mark.parametrize(
    "cfg, name",
    [
        (TrainConfig(), "regnety_016-dait"),
        (TrainConfig(train_fraction=0.3, seed=2), "regnety_016-dait-frac0.3-s2"),
        (TrainConfig(train_fraction=1.0, seed=0), "regnety_016-dait"),
        (TrainConfig(train_fraction=1 / 3), "regnety_016-dait-frac0.333333"),  # six digits, not 16
        (TrainConfig(name="mine", seed=3, train_fraction=0.5), "mine"),
        (TrainConfig(role="student", arch="resnet18", method="kd", seed=1), "resnet18-kd-s1"),
        (TrainConfig(role="student", arch="resnet18", method="kd", name="x", seed=1), "resnet18-kd-x"),
        (TrainConfig(arch="hf-hub:timm/resnet50.a1_in1k", seed=2), "hf-hub-timm-resnet50.a1_in1k-dait-s2"),
        (TrainConfig(role="student", arch="hf-hub:timm/resnet18/", method="kd", name="x"), "hf-hub-timm-resnet18-kd-x"),
        (
            TrainConfig(role="student", arch="mobilenetv2", method="dait-f", train_fraction=0.25),
            "mobilenetv2-dait-f-frac0.25",
        ),
    ],
)
def test_run_names(cfg, name):
    assert runs.run_name(cfg) == name


def test_run_name_refuses_a_path_name():
    with pytest.raises(DaitError, match=r"--name '\.\./x'"):
        runs.run_name(TrainConfig(name="../x"))


def test_resume_differences_name_each_changed_setting_and_fewer_epochs():
    saved = {"lr": 1e-4, "seed": 0, "arch": "regnety_016", "epochs": 5, "device": "cpu"}
    cfg = TrainConfig(lr=1e-3, seed=0, epochs=3, device="cuda", workers=9)
    assert runs.resume_differences(saved, cfg, epochs_done=4) == [
        "lr: 0.0001 -> 0.001",
        "epochs: 3 is fewer than the 4 already done",
    ]
    assert runs.resume_differences(saved, replace(cfg, lr=1e-4, epochs=4), epochs_done=4) == []
    assert runs.resume_differences({}, cfg, epochs_done=0) == []  # fields a saved config lacks are not judged


def test_a_vl2lite_student_without_lambda_rate_takes_vl2lites_schedule():
    student = TrainConfig(role="student", method="vl2lite", epochs=20)
    assert runs.resolved_settings(student).lambda_rate == 1 / 160
    assert runs.resolved_settings(replace(student, lambda_rate=0.5)).lambda_rate == 0.5
    assert runs.resolved_settings(replace(student, method="dait-f")).lambda_rate is None
    assert runs.resolved_settings(TrainConfig(method="vl2lite", epochs=20)).lambda_rate is None  # a teacher


def _run(parent, name, config: dict | None = None, status: str | None = "finished", best=True):
    d = parent / name
    d.mkdir(parents=True)
    if config is not None:
        (d / "config.json").write_text(json.dumps(config))
    if status is not None:
        ckpt.write_summary(d, {"status": status})
    if best:
        (d / ckpt.BEST).write_bytes(b"")
    return d


def test_setting_differences_compare_what_changes_the_numbers(tmp_path):
    cfg = TrainConfig(role="student", arch="resnet18", method="vl2lite", epochs=8, teacher="t1")
    saved = {"lr": cfg.lr, "lambda_rate": 1 / 64, "epochs": 8, "teacher": "/elsewhere/t1", "teacher_run": "/ws/t1"}
    d = _run(tmp_path, "a", saved)
    assert runs.setting_differences(d, cfg, finished=True) == []  # teacher given as a path, resolved the same
    assert runs.setting_differences(d, replace(cfg, epochs=10), finished=True) == [
        "lambda_rate: 0.015625 -> 0.0125",
        "epochs: 8 -> 10",
    ]
    assert runs.setting_differences(d, replace(cfg, epochs=10, lambda_rate=1 / 64), finished=False) == []
    assert runs.setting_differences(d, replace(cfg, teacher="t2"), finished=True) == ["teacher: t1 -> t2"]
    assert runs.setting_differences(tmp_path / "absent", cfg, finished=False) == ["config.json: missing or damaged"]


def test_prepare_run_dir_never_clobbers_and_resumes_only_a_checkpoint(tmp_path):
    runs.prepare_run_dir(tmp_path, resume=False)
    with pytest.raises(DaitError, match=r"^nothing to resume in .* \(no checkpoint\.pt\); drop --resume$"):
        runs.prepare_run_dir(tmp_path, resume=True)
    (tmp_path / ckpt.CHECKPOINT).write_bytes(b"")
    runs.prepare_run_dir(tmp_path, resume=True)
    with pytest.raises(DaitError, match=r"already exists; pass --resume to continue it or --name"):
        runs.prepare_run_dir(tmp_path, resume=False)


def test_finished_runs_are_newest_first_and_only_finished(tmp_path):
    assert runs.finished_runs(tmp_path / "absent") == []
    old, new = _run(tmp_path, "old", {}), _run(tmp_path, "new", {})
    _run(tmp_path, "running", {}, status="running")
    _run(tmp_path, "no-best", {}, best=False)
    _run(tmp_path, "no-summary", {}, status=None)
    (_run(tmp_path, "damaged", {}) / ckpt.SUMMARY).write_text("{not json")
    os.utime(old / ckpt.SUMMARY, ns=(10**18, 10**18))
    os.utime(new / ckpt.SUMMARY, ns=(2 * 10**18, 2 * 10**18))
    assert runs.finished_runs(tmp_path) == [new, old]
    os.utime(old / ckpt.SUMMARY, ns=(3 * 10**18, 3 * 10**18))
    assert runs.finished_runs(tmp_path) == [old, new]


def test_row_differences_and_the_matching_teacher_command():
    cfg = TrainConfig(role="student", seed=2, val_fraction=0.0, train_fraction=0.3, workdir="/w s")
    teacher = {"seed": 2, "val_fraction": 0.1, "train_fraction": 1.0}
    assert runs.row_differences(teacher, cfg) == [
        "val_fraction: teacher 0.1, student 0.0",
        "train_fraction: teacher 1.0, student 0.3",
    ]
    assert runs.row_differences({**teacher, "val_fraction": 0.0, "train_fraction": 0.3}, cfg) == []
    assert runs.matching_teacher_command(cfg, "cub") == (
        "dait-cache --workdir '/w s' train-teacher --dataset cub --train-fraction 0.3 --val-fraction 0 --seed 2"
    )


def test_run_config_is_a_dict_or_one_line(tmp_path):
    assert runs.run_config(tmp_path) == {}
    with pytest.raises(DaitError, match=r"config\.json is missing or damaged \(No such file or directory\)"):
        runs.run_config(tmp_path, required=True)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(DaitError, match=r"damaged \(not a JSON object\): .* is not a usable dait-cache run"):
        runs.run_config(tmp_path)
    (tmp_path / "config.json").write_text('{"lr": ')
    with pytest.raises(DaitError, match=r"damaged \(Expecting value\)") as err:
        runs.run_config(tmp_path)
    assert "\n" not in str(err.value)
    (tmp_path / "config.json").write_text('{"lr": 0.1}')
    assert runs.run_config(tmp_path, required=True) == {"lr": 0.1}


def test_teacher_run_dir_finds_named_or_newest_teachers_only(tmp_path, monkeypatch):
    dataset = tmp_path / "cub"
    with pytest.raises(DaitError, match=r"^no finished teacher under .*teacher; run `dait-cache train-teacher`"):
        runs.teacher_run_dir(dataset, None)
    t = _run(dataset / "teacher", "t", {"role": "teacher"})
    s = _run(dataset / "student", "s", {"role": "student"})
    _run(dataset / "teacher", "half", {"role": "teacher"}, status="running", best=False)
    assert runs.teacher_run_dir(dataset, None) == t == runs.teacher_run_dir(dataset, "t")
    assert runs.teacher_run_dir(dataset, str(t)) == t  # a path works too
    monkeypatch.chdir(tmp_path)
    assert runs.teacher_run_dir(dataset, "cub/teacher/t").resolve() == t  # relative to where the user is
    with pytest.raises(DaitError, match=r"teacher run 'half' not found or unfinished \(finished teachers: t\)"):
        runs.teacher_run_dir(dataset, "half")
    with pytest.raises(DaitError, match=r"s is a student run, not a teacher"):
        runs.teacher_run_dir(dataset, str(s))
    _run(dataset / "teacher", "nameless", {})  # a config.json without its role
    with pytest.raises(DaitError, match=r"nameless is an unknown run, not a teacher; name a run made by"):
        runs.teacher_run_dir(dataset, "nameless")


@pytest.fixture(scope="module")
def cache(tiny_cache_workspace):
    from dait_cache.cache.reader import open_cache

    return open_cache(tiny_cache_workspace / "cub" / "cache")


def test_pick_teacher_takes_the_newest_on_the_same_rows(tmp_path, cache):
    dataset = tmp_path / "cub"
    rows = {"seed": 0, "val_fraction": 0.1, "train_fraction": 1.0, "role": "teacher"}
    same = {**rows, "cache_fingerprint": cache.fingerprint}
    newest_other_rows = _run(dataset / "teacher", "frac", {**same, "train_fraction": 0.3})
    other_cache = _run(dataset / "teacher", "other", {**rows, "cache_fingerprint": "0" * 16})
    older, match = _run(dataset / "teacher", "older", same), _run(dataset / "teacher", "match", same)
    for i, d in enumerate((older, match, other_cache, newest_other_rows)):
        os.utime(d / ckpt.SUMMARY, ns=((i + 1) * 10**18,) * 2)
    student = TrainConfig(role="student", workdir=str(tmp_path))
    assert runs.pick_teacher(dataset, None, student, cache) == match
    with pytest.raises(DaitError, match=r"teacher frac was trained on other rows .*train_fraction: teacher 0\.3"):
        runs.pick_teacher(dataset, "frac", student, cache)
    assert runs.pick_teacher(dataset, "other", student, cache) == other_cache  # refused later, by its cache
    both = _run(dataset / "teacher", "both", {**rows, "seed": 5, "cache_fingerprint": "0" * 16})
    assert runs.pick_teacher(dataset, "both", student, cache) == both  # the cache is what it is refused for
    with pytest.raises(DaitError, match=r"no finished teacher .*train_fraction 0\.5, val_fraction 0\.1, seed 0; "):
        runs.pick_teacher(dataset, None, replace(student, train_fraction=0.5), cache)


def test_check_same_cache_names_the_fields(cache):
    runs.check_same_cache({"cache_fingerprint": cache.fingerprint}, cache, "teacher t")
    fields = json.loads(json.dumps(cache.manifest["fingerprint_fields"]))
    fields["views"]["K"] = fields["views"]["K"] + 1
    with pytest.raises(CacheError, match=r"^teacher t was trained on cache abc, not on .*views\.K") as err:
        runs.check_same_cache({"cache_fingerprint": "abc", "cache_fingerprint_fields": fields}, cache, "teacher t")
    assert "re-encode with the run's settings or start a new run" in str(err.value)
    with pytest.raises(CacheError) as err:  # no fields recorded: every field differs, four are named
        runs.check_same_cache({"cache_fingerprint": "abc"}, cache, "teacher t")
    assert str(err.value).count(" -> ") == 4 and "dataset.class_names: None -> " in str(err.value)
    same_fields = {"cache_fingerprint": "abc", "cache_fingerprint_fields": cache.manifest["fingerprint_fields"]}
    with pytest.raises(CacheError, match=r"\(\w+\): unknown fields; re-encode"):
        runs.check_same_cache(same_fields, cache, "teacher t")


def test_the_workspace_dataset_is_the_named_or_the_only_cached_one(tmp_path):
    from dait_cache.workspace import resolve_dataset, workspace_datasets

    assert workspace_datasets(tmp_path / "absent") == []
    with pytest.raises(DaitError, match=r"^no cache in workspace .*; run `dait-cache encode --dataset NAME` first$"):
        resolve_dataset(tmp_path, None)
    for name in ("dogs", "folder-birds", "cub"):
        (tmp_path / name / "cache").mkdir(parents=True)
        (tmp_path / name / "cache" / "manifest.json").write_text("{}")
    (tmp_path / "aircraft" / "cache").mkdir(parents=True)  # an encode that never wrote its manifest
    (tmp_path / "notes.txt").write_text("")
    assert workspace_datasets(tmp_path) == ["cub", "dogs", "folder-birds"]
    with pytest.raises(DaitError) as e:
        resolve_dataset(tmp_path, None)
    assert str(e.value) == (
        f"workspace {tmp_path} holds several datasets (cub, dogs, folder-birds); choose one with --dataset"
    )
    assert resolve_dataset(tmp_path, "dogs") == "dogs"
    assert resolve_dataset(tmp_path, f"folder:{tmp_path / 'photos' / 'birds'}") == "folder-birds"
    with pytest.raises(DaitError) as e:
        resolve_dataset(tmp_path, "aircraft")
    assert str(e.value) == (
        f"no cache for dataset 'aircraft' in {tmp_path} (have: cub, dogs, folder-birds); "
        "run `dait-cache encode --dataset aircraft` first"
    )
    for name in ("cub", "folder-birds"):
        (tmp_path / name / "cache" / "manifest.json").unlink()
    assert resolve_dataset(tmp_path, None) == "dogs"


def test_load_run_backbone_reads_the_weights_of_the_checkpoint_asked_for(tmp_path):
    import torch

    from dait_cache.models import create_backbone

    torch.manual_seed(0)
    trained = {name: create_backbone("resnet18", 3, pretrained=False) for name in ("best", "last")}
    run = _run(tmp_path, "s", {"role": "student", "arch": "resnet18"}, best=False)
    for name, model in trained.items():
        state = {f"model.{k}": v for k, v in model.state_dict().items()}
        state["model.net.fc.weight"] = torch.full((3, 512), 7.0)  # an earlier version's copy of the head
        state["objective.proj.weight"] = torch.ones(2, 2)  # a method's own head: no part of the network
        ckpt.save_atomic({"step": state}, run / runs.CHECKPOINTS[name])
    x = torch.randn(2, 3, 32, 32)
    for name, model in trained.items():
        loaded = runs.load_run_backbone(run, 3, checkpoint=name)
        assert not loaded.training  # batch-norm's running statistics, as evaluation uses them
        assert torch.equal(loaded(x), model.eval()(x))
        net = runs.load_run_backbone(run, 3, head=False, checkpoint=name)
        assert all(torch.equal(v, model.net.state_dict()[k]) for k, v in net.net.state_dict().items())
        assert not torch.equal(net.classifier.weight, model.classifier.weight)  # left as created
    with pytest.raises(DaitError, match=r"^unknown checkpoint 'first'; valid: best, last$"):
        runs.load_run_backbone(run, 3, checkpoint="first")
