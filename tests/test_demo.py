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
