"""The bundled mini-VLM and the demo pipeline."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dait_cache.config import EncodeConfig
from dait_cache.encode import encode
from dait_cache.minivlm import IMAGE_SIZE, WEIGHTS_DIR, bundled_vlm_id, card
from dait_cache.provenance import cpu_name
from dait_cache.vlm import load_vlm


def test_bundled_card_and_size():
    c = card()
    assert c["zero_shot_top1_synthetic_test"] >= 3 * c["chance_top1"]
    assert c["training"]["device"] == "cpu" and c["training"]["seconds"] <= 30 * 60
    weights = WEIGHTS_DIR / "open_clip_model.safetensors"
    assert weights.stat().st_size < 5 * 2**20  # a few MB
    v = load_vlm(bundled_vlm_id(), None, "cpu")
    assert v.embed_dim == c["model_cfg"]["embed_dim"] and v.native_size == IMAGE_SIZE


def test_zero_shot_from_a_real_encode_matches_the_card(tmp_path):
    # vlm and sizes left unset: encode() resolves the synthetic world's defaults (the mini-VLM)
    cfg = EncodeConfig(dataset="synthetic", workdir=str(tmp_path), views=0, batch_size=256, workers=2, device="cpu")
    result = encode(cfg)
    assert result.zero_shot_top1 >= 3 * 100 / 24
    assert result.zero_shot_top1 == pytest.approx(card()["zero_shot_top1_synthetic_test"], abs=1.5)


def test_pretraining_module_writes_a_loadable_local_dir(tmp_path):
    from dait_cache.minivlm.pretrain import pretrain

    c = pretrain(tmp_path / "mv", steps=3, seed=1, per_combo=1, batch=64, lr=1e-3, log=lambda *_: None)
    assert {p.name for p in (tmp_path / "mv").iterdir()} == {
        "open_clip_config.json",
        "open_clip_model.safetensors",
        "card.json",
    }
    assert json.loads((tmp_path / "mv" / "card.json").read_text()) == json.loads(json.dumps(c))
    v = load_vlm(f"local-dir:{tmp_path / 'mv'}", None, "cpu")
    assert v.encode_texts(["a red circle with one stripe and a white dot"]).shape == (1, 64)


def test_students_decay_on_their_own_schedule_and_teachers_on_theirs():
    from dataclasses import replace

    from dait_cache.demo import DemoConfig

    def schedules(cfg):
        return {(c.role, c.epochs, c.lr_step, c.lr_gamma) for c in cfg.plan()}

    cfg = DemoConfig()
    assert schedules(cfg) == {("teacher", 60, 40, 0.5), ("student", 40, 30, 0.1)}
    same = replace(cfg, student_lr_step=None, student_lr_gamma=None)  # the search's stages A-C
    assert schedules(same) == {("teacher", 60, 40, 0.5), ("student", 40, 40, 0.5)}


def test_a_demo_run_folder_with_other_settings_is_refused_before_any_work(tmp_path):
    from dait_cache.config import save_config
    from dait_cache.demo import DemoConfig, run_demo, run_dir_of
    from dait_cache.errors import DaitError
    from dait_cache.io import to_jsonable
    from dait_cache.train import checkpoint as ckpt

    cfg = DemoConfig(workdir=str(tmp_path))
    older = next(r for r in cfg.plan() if r.role == "student")  # an older demo's run: no decay
    run_dir = run_dir_of(older)
    run_dir.mkdir(parents=True)
    save_config(to_jsonable(replace(older, lr_step=40, lr_gamma=0.5)), run_dir)
    ckpt.write_summary(run_dir, {"status": "finished", "epochs": older.epochs, "epochs_done": older.epochs})
    with pytest.raises(DaitError, match=r"other settings than the demo's \(lr_step: 40 -> 30; lr_gamma: 0.5 -> 0.1\)"):
        run_demo(cfg)
    assert not (tmp_path / "synthetic" / "cache").exists()  # refused before the encode


@pytest.mark.slow
def test_demo_pipeline_small_seeds_mean_and_std_match_numpy(tmp_path, monkeypatch):
    from dait_cache.demo import DemoConfig, demo_table, ordering_claims, run_demo
    from dait_cache.train import checkpoint as ckpt

    cfg = DemoConfig(
        workdir=str(tmp_path),
        views=2,
        seeds=(0, 1),
        teacher_arch="test_resnet",
        teacher_epochs=1,
        student_archs=("test_efficientnet",),
        methods=("none", "dait-f"),
        student_epochs=2,
    )
    # a run of the user's own in the demo's workspace: not the demo's, so neither in its table
    # nor exported, however well it did
    mine = tmp_path / "synthetic" / "students" / "test_efficientnet-none-mine"
    mine.mkdir(parents=True)
    theirs = {"arch": "test_efficientnet", "method": "none", "train_fraction": 0.3, "seed": 0, "n_train": 216}
    ckpt.write_summary(mine, {"status": "finished", **theirs, "test_top1_best_val": 99.0, "val_top1_best": 99.0})
    records, seconds = run_demo(cfg)
    assert mine not in [Path(r.run_dir) for r in records]
    students = tmp_path / "synthetic" / "students"
    assert sorted(p.name for p in students.iterdir() if p.is_dir() and p != mine) == [
        "test_efficientnet-dait-f-frac0.3",
        "test_efficientnet-dait-f-frac0.3-s1",
        "test_efficientnet-none-frac0.3",
        "test_efficientnet-none-frac0.3-s1",
    ]
    assert sorted((r.role, r.method, r.seed) for r in records if r.role != "vlm") == [
        ("student", "dait-f", 0),
        ("student", "dait-f", 1),
        ("student", "none", 0),
        ("student", "none", 1),
        ("teacher", "dait", 0),
        ("teacher", "dait", 1),
    ]
    # each seed's student learnt from the teacher trained on its own rows
    for seed, suffix in ((0, ""), (1, "-s1")):
        s = ckpt.read_summary(students / f"test_efficientnet-dait-f-frac0.3{suffix}")
        assert s["seed"] == seed and s["teacher_run"].endswith(f"test_resnet-dait-frac0.3{suffix}")
    col = ("synthetic", 0.3)
    for metric, key in (("best-val", "test_top1_best_val"), ("last", "test_top1_last")):
        table = demo_table(records, metric)
        assert len(table.rows) == 4  # VLM, teacher, two methods: seeds share a row
        for method in ("none", "dait-f"):
            values = [ckpt.read_summary(students / f"test_efficientnet-{method}-frac0.3{x}")[key] for x in ("", "-s1")]
            row = ("test_efficientnet", method, "student")
            mean, text = table.cells[(row, col)]
            assert mean == pytest.approx(np.mean(values))
            assert text == f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f} (n=2)"
            assert table.samples[(row, col)] == [(0, values[0]), (1, values[1])]
        claims = ordering_claims(table, others=("none",))
        assert len(claims) == 1 and claims[0].startswith(f"test_efficientnet {metric}: dait-f ")
    # the last step: the student best on validation (test chooses nothing) as ONNX, classifying
    # three test images
    from dait_cache.demo import deploy_demo
    from dait_cache.deploy import load_run_model

    deployed = deploy_demo(cfg)
    students = [r for r in records if r.role == "student"]
    chosen = next(r for r in students if Path(r.run_dir).name == deployed.export.record["run"])  # not "mine"
    assert chosen.val_top1_best == max(r.val_top1_best for r in students) and deployed.export.path.is_file()
    assert chosen.val_top1_best == ckpt.read_summary(Path(chosen.run_dir))["val_top1_best"]
    rm = load_run_model(chosen.run_dir)
    for (path, _truth), p in zip(deployed.images, deployed.predictions):
        with torch.no_grad():
            logits = rm.classifier(rm.preprocessing.view(path)[None])[0]
        assert p.path == path and p.top_k[0]["index"] == int(logits.argmax())
    assert [truth for _, truth in deployed.images] == rm.class_names[:3]
    again, _ = run_demo(cfg)  # finished runs are reused, not retrained
    assert [r.test_top1_last for r in again] == [r.test_top1_last for r in records]
    # a run whose record says it was stopped is resumed from its checkpoint, not skipped nor refused
    stopped = tmp_path / "synthetic" / "students" / "test_efficientnet-dait-f-frac0.3-s1"
    ckpt.write_summary(stopped, {**ckpt.read_summary(stopped), "status": "interrupted"})
    again, _ = run_demo(cfg)
    assert ckpt.read_summary(stopped)["status"] == "finished" and ckpt.read_summary(stopped)["resumed"] == 1
    assert [r.test_top1_last for r in again] == [r.test_top1_last for r in records]
    # one run at a time gives the same numbers (seed 1's runs; the cache copied, not encoded again)
    shutil.copytree(tmp_path / "synthetic" / "cache", tmp_path / "serial" / "synthetic" / "cache")
    serial, _ = run_demo(replace(cfg, workdir=str(tmp_path / "serial"), seeds=(1,)), jobs=1)

    def numbers(recs):
        return sorted((Path(r.run_dir).name, r.test_top1_last, r.test_top1_best_val) for r in recs if r.role != "vlm")

    assert len(numbers(serial)) == 3
    assert numbers(serial) == [n for n in numbers(records) if n[0].endswith("-s1")]
    # the command itself, on the finished workspace: every run skipped, the table, the claims, the
    # export, and next steps that name this workspace
    from click.testing import CliRunner

    from cli.main import cli

    monkeypatch.setattr("dait_cache.demo.DemoConfig", lambda workdir: replace(cfg, workdir=workdir))
    r = CliRunner().invoke(cli, ["demo", "--workdir", str(tmp_path)])
    said = " ".join(r.output.split())
    assert r.exit_code == 0, r.output
    assert said.count("finished earlier, skipped") == 6 and "test_efficientnet last: dait-f " in said
    assert f"test_efficientnet dait-f: {values[0]:.2f} / {values[1]:.2f} (seeds 0, 1)" in said  # last, as above
    assert f"Next: dait-cache --workdir {tmp_path} report --plots {tmp_path / 'plots'};" in said
    from dait_cache.provenance import cpu_kernels

    assert f"measured on {cpu_name()}, {cpu_kernels()} kernels, " in said  # the machine the numbers belong to
    # a cache of other views in the demo's place: one line naming the difference and what to do
    # (the demo has no --overwrite), and nothing trained
    from dait_cache.errors import DaitError

    with pytest.raises(DaitError, match=r"other settings than the demo's \(views\.K: 2 -> 3\); give the demo another"):
        run_demo(replace(cfg, workdir=str(tmp_path / "serial"), views=3, seeds=(2,)))
    assert not list((tmp_path / "serial" / "synthetic" / "teacher").glob("*-s2"))


def test_the_ordering_claim_needs_the_means_apart_by_both_stds():
    from dait_cache.demo import demo_table, ordering_claims
    from dait_cache.report import RunRecord

    def runs(arch, method, values):
        return [
            RunRecord(
                "synthetic", "student", arch, method, 0.3, "finished", 1, 1, v, v, f"/w/{arch}{method}{s}", seed=s
            )
            for s, v in enumerate(values)
        ]

    # mobilenetv2: dait-f 20 ± 2, none 15 ± 2 (apart by more than both stds), vl2lite 17 ± 2 (within)
    records = runs("mobilenetv2", "dait-f", [18, 20, 22]) + runs("mobilenetv2", "none", [13, 15, 17])
    records += runs("mobilenetv2", "vl2lite", [15, 17, 19]) + runs("resnet18", "dait-f", [10, 10, 10])
    records += runs("resnet18", "none", [12, 12, 12])  # resnet18 has no vl2lite run: no claim on it
    assert ordering_claims(demo_table(records, "last"), others=("vl2lite", "none")) == [
        "mobilenetv2 last: dait-f is above, within one std of vl2lite (20.00 ± 2.00 vs 17.00 ± 2.00)",
        "mobilenetv2 last: dait-f beats none (20.00 ± 2.00 vs 15.00 ± 2.00)",
        "resnet18 last: dait-f does not beat none (10.00 ± 0.00 vs 12.00 ± 0.00)",
    ]
    # exactly one std apart on each side is not beyond it
    records = runs("mobilenetv2", "dait-f", [18, 20, 22]) + runs("mobilenetv2", "none", [14, 16, 18])
    assert ordering_claims(demo_table(records, "last"), others=("none",)) == [
        "mobilenetv2 last: dait-f is above, within one std of none (20.00 ± 2.00 vs 16.00 ± 2.00)"
    ]


def test_the_plan_trains_each_seeds_teacher_first_and_only_dait_students_learn_from_it():
    from dait_cache.demo import DemoConfig
    from dait_cache.train.runs import run_name

    plan = DemoConfig(workdir="/w").plan()
    teachers = [run_name(r) for r in plan[:3]]
    assert teachers == ["test_resnet-dait-frac0.3", "test_resnet-dait-frac0.3-s1", "test_resnet-dait-frac0.3-s2"]
    assert [(r.role, r.seed) for r in plan[:3]] == [("teacher", 0), ("teacher", 1), ("teacher", 2)]
    students = plan[3:]
    assert [(r.seed, r.method) for r in students] == [
        (seed, m) for seed in (0, 1, 2) for m in ("none", "kd", "vl2lite", "dait-l", "dait-f")
    ]
    # kd learns from the VLM's zero-shot logits, vl2lite from the VLM: only DAIT uses the teacher
    assert [r.teacher for r in students] == [
        teachers[seed] if m.startswith("dait") else None
        for seed in (0, 1, 2)
        for m in ("none", "kd", "vl2lite", "dait-l", "dait-f")
    ]
    assert {(r.role, r.epochs, r.lr_step, r.lr_gamma) for r in plan} == {
        ("teacher", 60, 40, 0.5),
        ("student", 40, 30, 0.1),
    }


def test_a_student_starts_once_its_teacher_finished_and_no_more_than_jobs_at_once():
    from dait_cache.demo import DemoConfig, startable

    cfg = DemoConfig(workdir="/w", seeds=(0, 1), methods=("none", "dait-f"))
    t0, t1, none0, dait0, none1, dait1 = cfg.plan()
    assert startable([t0, t1, none0, dait0, none1, dait1], [], 2) == [t0, t1]
    assert startable([t1, none0, dait0, none1, dait1], [t0], 4) == [t1, none0, none1]  # no teacher finished
    assert startable([none0, dait0, none1, dait1], [t1], 4) == [none0, dait0, none1]  # t0 finished, t1 not
    assert startable([dait0, none1, dait1], [t1, none0], 3) == [dait0]
    assert startable([dait1], [t1, none0, dait0], 8) == []
    assert startable([dait1], [none0], 1) == []  # one job, taken
    assert startable([dait1], [], 1) == [dait1]


def test_a_failed_demo_run_stops_the_demo_with_its_own_error(tmp_path):
    from dait_cache.demo import DemoConfig, _train_all
    from dait_cache.errors import DaitError

    cfg = DemoConfig(workdir=str(tmp_path))
    bad = replace(cfg.plan()[0], arch="no_such_arch")  # refused in its run process
    said = []
    with pytest.raises(DaitError) as e:
        _train_all([bad], [bad], 0, 1, said.append, lambda *a: None)
    assert str(e.value).startswith("unknown architecture 'no_such_arch'; use one of ")
    assert said == ["run 1/1: teacher no_such_arch-dait-frac0.3"]
