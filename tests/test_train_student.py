"""DAIT stage 2 and the baselines, against a tiny teacher trained on the tiny cache."""

import hashlib
import json
import shutil
from dataclasses import replace

import pytest
import torch
from encode_helpers import own_workspace

from dait_cache.config import TrainConfig
from dait_cache.errors import DaitError
from dait_cache.train import checkpoint as ckpt
from dait_cache.train import student as student_mod
from dait_cache.train.runs import finished_runs, load_run_backbone
from dait_cache.train.student import METHODS, train_student
from dait_cache.train.teacher import train_teacher

COMMON = dict(epochs=1, batch_size=8, pretrained=False, workers=0, device="cpu", val_fraction=0.25)


@pytest.fixture(scope="module")
def teacher(tiny_cache_workspace):
    run_dir, summary = train_teacher(
        TrainConfig(workdir=str(tiny_cache_workspace), arch="resnet10t", name="tiny-teacher", **COMMON)
    )
    assert summary["status"] == "finished"
    return run_dir


@pytest.fixture
def ws(tiny_cache_workspace, teacher, tmp_path):
    """This test's own workspace, the cache and the tiny teacher: the students it trains (180 MB of
    checkpoints for a ResNet-18) leave with it instead of filling the session's workspace."""
    own = own_workspace(tiny_cache_workspace, tmp_path / "ws")
    shutil.copytree(teacher, own / "cub" / "teacher" / teacher.name)
    return own


EXPECTED_TERMS = {
    "none": {"ce"},
    "kd": {"ce", "kd"},
    "rkd": {"ce", "rkd"},
    "vl2lite": {"ce", "sia", "ira"},
    "rise": {"ce", "kd", "align", "rd"},
    "borlan": {"ce", "contrast"},
    "dait-l": {"ce", "kd"},
    "dait-f": {"ce", "sra"},
}


@pytest.mark.parametrize("arch", ["resnet18", "shufflenetv2"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_one_epoch(ws, arch, method):
    teacher = ws / "cub" / "teacher" / "tiny-teacher"
    cfg = TrainConfig(workdir=str(ws), arch=arch, method=method, role="student", **COMMON)
    run_dir, summary = train_student(cfg)
    assert run_dir.name == f"{arch}-{method}" and run_dir.parent.name == "students"
    assert summary["status"] == "finished" and 0 <= summary["test_top1_last"] <= 100
    metrics = ckpt.read_metrics(run_dir)[0]
    assert EXPECTED_TERMS[method] <= set(metrics) and all(
        torch.isfinite(torch.tensor(metrics[k])) for k in EXPECTED_TERMS[method]
    )
    config = json.loads((run_dir / "config.json").read_text())
    assert config["cache_fingerprint"] == summary["cache_fingerprint"]
    if method in ("dait-f", "dait-l"):
        assert config["teacher_run"] == str(teacher) and config["signal"] == "teacher"
        assert config["teacher_fingerprint"] == hashlib.sha256((teacher / "best.pt").read_bytes()).hexdigest()
    else:
        assert config["teacher_run"] is None and config["teacher_fingerprint"] is None
        assert config["signal"] == ("labels" if method == "none" else "vlm-cache")
    state = ckpt.load(run_dir / "best.pt")["step"]
    assert not any("teacher" in k for k in state)  # the frozen teacher is never saved with the student
    if method == "dait-f":
        assert state["objective.adapter.weight"].shape[1] == (512 if arch == "resnet18" else 1024)
        assert state["objective.adapter.weight"].shape[0] == 512  # resnet10t's channels
    if method == "vl2lite":
        assert config["lambda_rate_resolved"] == pytest.approx(1 / 8)


def spy_on(monkeypatch, method):
    """Record the objective train_student builds, with its teacher's and adapter's first state."""
    seen = {}
    build = student_mod.BUILDERS[method]

    def spy(cfg, cache, s, t):
        obj = build(cfg, cache, s, t)
        seen.update(
            objective=obj,
            teacher_state={k: v.clone() for k, v in t.state_dict().items()} if t else None,
            adapter=obj.adapter.weight.detach().clone() if hasattr(obj, "adapter") else None,
        )
        return obj

    monkeypatch.setitem(student_mod.BUILDERS, method, spy)
    return seen


def test_teacher_stays_frozen_and_adapter_trains(ws, monkeypatch):
    seen = spy_on(monkeypatch, "dait-f")
    cfg = TrainConfig(
        workdir=str(ws),
        arch="resnet18",
        method="dait-f",
        role="student",
        teacher="tiny-teacher",
        name="frozen-check",
        **COMMON,
    )
    run_dir, _ = train_student(cfg)
    frozen = seen["objective"].teacher.model
    after = frozen.state_dict()  # weights and BatchNorm statistics, after a whole epoch of use
    assert all(torch.equal(after[k], v) for k, v in seen["teacher_state"].items())
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
    trained = ckpt.load(run_dir / "checkpoint.pt")["step"]["objective.adapter.weight"]
    assert not torch.equal(trained, seen["adapter"])  # the 1x1 adapter learned


def test_kd_and_rkd_use_a_teacher_when_named(ws, monkeypatch):
    teacher = ws / "cub" / "teacher" / "tiny-teacher"
    best = ckpt.load(teacher / "best.pt")["step"]
    for method in ("kd", "rkd"):
        seen = spy_on(monkeypatch, method)
        cfg = TrainConfig(
            workdir=str(ws),
            arch="resnet18",
            method=method,
            role="student",
            teacher="tiny-teacher",
            name="with-teacher",
            **COMMON,
        )
        run_dir, _ = train_student(cfg)
        used = seen["objective"].teacher.model.state_dict()
        assert all(torch.equal(used[k[len("model.") :]], v) for k, v in best.items() if k.startswith("model."))
        # the objective's targets are the teacher's outputs (pinned in test_objectives)
        config = json.loads((run_dir / "config.json").read_text())
        assert (config["teacher_run"], config["signal"]) == (str(teacher), "teacher")


def test_teacher_from_another_dataset_is_refused(tiny_cache_workspace, dogs_cache_workspace, teacher):
    cfg = TrainConfig(
        workdir=str(dogs_cache_workspace),
        arch="resnet18",
        method="dait-f",
        role="student",
        teacher=str(teacher),
        **COMMON,
    )
    with pytest.raises(DaitError, match="trained on dataset 'cub'.*this student uses 'dogs'"):
        train_student(cfg)
    with pytest.raises(DaitError, match="no finished teacher"):
        train_student(
            TrainConfig(workdir=str(dogs_cache_workspace), arch="resnet18", method="dait-l", role="student", **COMMON)
        )


def test_unknown_method(tiny_cache_workspace):
    with pytest.raises(DaitError, match="unknown student method 'fitnet'.*dait-f"):
        train_student(TrainConfig(workdir=str(tiny_cache_workspace), method="fitnet", **COMMON))


def test_teacher_from_a_re_encoded_cache_is_refused_with_the_field(tiny_cache_workspace, teacher, tmp_path):
    import shutil

    other = tmp_path / "ws"
    shutil.copytree(tiny_cache_workspace / "cub" / "cache", other / "cub" / "cache")
    from dait_cache.cache.manifest import fingerprint, read_manifest, write_manifest

    manifest = read_manifest(other / "cub/cache")  # rewritten as if encoded with another seed
    manifest["fingerprint_fields"]["views"]["seed"] = manifest["views"]["seed"] = 7
    manifest["fingerprint"] = fingerprint(manifest["fingerprint_fields"])
    write_manifest(other / "cub/cache", manifest)
    cfg = TrainConfig(
        workdir=str(other), arch="resnet18", method="dait-f", role="student", teacher=str(teacher), **COMMON
    )
    with pytest.raises(DaitError, match=r"views.seed: 0 -> 7"):
        train_student(cfg)


def test_resume_on_another_cache_is_refused(tiny_cache_workspace):
    cfg = TrainConfig(
        workdir=str(tiny_cache_workspace),
        arch="resnet10t",
        method="none",
        role="student",
        name="resume-check",
        **COMMON,
    )
    run_dir, _ = train_student(cfg)
    config = json.loads((run_dir / "config.json").read_text())
    config["cache_fingerprint"] = "f" * 20
    config["cache_fingerprint_fields"]["views"]["K"] = 99
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(DaitError, match=r"views.K: 99 -> 3"):
        train_student(replace(cfg, resume=True, epochs=2))


def test_dait_f_with_a_token_teacher_is_one_line(tiny_cache_workspace):
    from dait_cache.cache import open_cache
    from dait_cache.models import create_backbone
    from dait_cache.train.student import BUILDERS

    cache = open_cache(tiny_cache_workspace / "cub" / "cache")
    student = create_backbone("test_resnet", cache.num_classes, pretrained=False)
    vit = create_backbone("test_vit", cache.num_classes, pretrained=False)
    cfg = TrainConfig(workdir=str(tiny_cache_workspace), role="student", method="dait-f", **COMMON)
    with pytest.raises(DaitError, match=r"dait-f aligns spatial feature maps \(C, H, W\), but test_vit gives"):
        BUILDERS["dait-f"](cfg, cache, student, vit)


@pytest.mark.parametrize("damage", [b'{"role": "teacher", bad', b"[1, 2]", None])
def test_a_teacher_with_a_damaged_config_is_one_line(tiny_cache_workspace, teacher, tmp_path, damage):
    import shutil

    from dait_cache.deploy import load_run_model

    shutil.copytree(tiny_cache_workspace / "cub" / "cache", tmp_path / "cub" / "cache")
    copy = tmp_path / "cub" / "teacher" / teacher.name
    shutil.copytree(teacher, copy)
    if damage is None:
        (copy / "config.json").unlink()
    else:
        (copy / "config.json").write_bytes(damage)
    student = TrainConfig(workdir=str(tmp_path), arch="resnet18", method="dait-f", role="student", **COMMON)
    for cfg in (student, replace(student, teacher=teacher.name)):  # picked, and named
        with pytest.raises(DaitError, match=rf"{copy / 'config.json'} is missing or damaged \(.+\): .*train it again"):
            train_student(cfg)
    with pytest.raises(DaitError, match="is missing or damaged"):
        load_run_model(copy)  # predict / export
    with pytest.raises(DaitError, match="is missing or damaged"):  # --resume of the run itself
        train_teacher(
            TrainConfig(
                workdir=str(tmp_path), arch="resnet10t", name=teacher.name, resume=True, **{**COMMON, "epochs": 2}
            )
        )


def test_a_students_weights_follow_its_seed_not_the_callers_random_state(tiny_cache_workspace):
    def weights(name, seed):
        torch.manual_seed(1000 + len(name))  # the caller's state differs from run to run
        cfg = TrainConfig(workdir=str(tiny_cache_workspace), arch="test_resnet", method="none", role="student",
                          name=name, seed=seed, **COMMON)  # fmt: skip
        run_dir, _ = train_student(cfg)
        return ckpt.load(run_dir / "checkpoint.pt")["step"]

    a, b, other = weights("seed-a", 0), weights("seed-bb", 0), weights("seed-ccc", 1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], other[k]) for k in a if k.startswith("model."))


def test_a_student_that_cannot_take_the_caches_views_is_refused_before_its_folder(tiny_cache_workspace):
    cfg = TrainConfig(workdir=str(tiny_cache_workspace), arch="vit_tiny_patch16_224", method="none", role="student",
                      name="too-small", **COMMON)  # fmt: skip
    with pytest.raises(DaitError, match=r"^vit_tiny_patch16_224 cannot take this cache's 64x64 views \("):
        train_student(cfg)
    assert not (tiny_cache_workspace / "cub" / "students" / "vit_tiny_patch16_224-none-too-small").exists()


def test_a_resumed_student_keeps_its_teacher_and_refuses_one_changed_since(tiny_cache_workspace, tmp_path):
    ws = tmp_path / "ws"  # its own workspace: the teachers trained here would be others' newest
    shutil.copytree(tiny_cache_workspace / "cub" / "cache", ws / "cub" / "cache")
    common = {**COMMON, "workdir": str(ws)}
    first, _ = train_teacher(TrainConfig(arch="resnet10t", name="first", **common))
    cfg = TrainConfig(arch="resnet10t", method="dait-l", role="student", **common)
    run_dir, _ = train_student(cfg)  # learns from the only teacher
    second, _ = train_teacher(TrainConfig(arch="resnet10t", name="second", **common))
    assert finished_runs(ws / "cub" / "teacher")[0] == second  # newer, same rows: a new student's pick
    _, summary = train_student(replace(cfg, epochs=2, resume=True))
    config = json.loads((run_dir / "config.json").read_text())
    assert summary["epochs_done"] == 2 and config["teacher_run"] == str(first)  # "second" before
    assert config["teacher_fingerprint"] == hashlib.sha256((first / "best.pt").read_bytes()).hexdigest()
    state = ckpt.load(first / "best.pt")  # the teacher's best weights replaced (trained further, say)
    state["step"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["step"].items()}
    ckpt.save_atomic(state, first / "best.pt")
    with pytest.raises(DaitError) as err:
        train_student(replace(cfg, epochs=3, resume=True))
    assert f"run {run_dir} was started with other settings (teacher first: its best.pt changed since" in str(err.value)
    assert summary == ckpt.read_summary(run_dir)


def test_a_local_dir_timm_model_trains_in_one_run_folder_found_as_a_teacher(ws, tmp_path, monkeypatch):
    """timm takes ``local-dir:<folder>`` as an architecture: its runs lived four folders deep
    (``teacher/local-dir:/tmp/.../net-dait``), where no student, report or study found them."""
    import timm
    from timm.models import save_for_hf

    from dait_cache.report import collect_runs

    save_for_hf(timm.create_model("test_resnet", pretrained=False, num_classes=4), tmp_path / "models" / "mynet")
    monkeypatch.chdir(tmp_path / "models")  # a relative folder, recorded as an absolute one
    arch = "local-dir:mynet"
    run_dir, _ = train_teacher(TrainConfig(workdir=str(ws), arch=arch, method="dait", **COMMON))
    assert run_dir == ws / "cub" / "teacher" / "local-dir-mynet-dait"
    recorded = json.loads((run_dir / "config.json").read_text())["arch"]
    assert recorded == f"local-dir:{tmp_path / 'models' / 'mynet'}"
    shutil.rmtree(ws / "cub" / "teacher" / "tiny-teacher")  # the new teacher is the only one to pick
    monkeypatch.chdir(tmp_path)  # the student rebuilds the teacher from its recorded folder
    student_dir, summary = train_student(TrainConfig(workdir=str(ws), arch=recorded, method="dait-f", **COMMON))
    assert student_dir == ws / "cub" / "students" / "local-dir-mynet-dait-f"
    assert summary["status"] == "finished"
    assert json.loads((student_dir / "config.json").read_text())["teacher_run"] == str(run_dir)
    runs = {r.run_dir: r for r in collect_runs(ws) if r.role != "vlm"}  # the report finds both
    assert sorted(runs) == sorted(str(d) for d in (run_dir, student_dir))
    assert runs[str(student_dir)].tag == "" and runs[str(student_dir)].arch == recorded
    (tmp_path / "models" / "mynet").rename(tmp_path / "models" / "moved")  # the run names a folder gone since
    with pytest.raises(DaitError, match=rf"^run {student_dir} cannot be rebuilt here: cannot build '{recorded}' \("):
        load_run_backbone(student_dir, 4)
