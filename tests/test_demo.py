"""The bundled mini-VLM and the demo pipeline."""

import json

import pytest

from dait_cache.config import EncodeConfig
from dait_cache.encode import encode
from dait_cache.minivlm import BASE_SIZE, IMAGE_SIZE, WEIGHTS_DIR, bundled_vlm_id, card
from dait_cache.vlm import load_vlm


def test_bundled_card_and_size():
    c = card()
    assert c["zero_shot_top1_synthetic_test"] >= 3 * c["chance_top1"]
    assert c["training"]["device"] == "cpu" and c["training"]["seconds"] <= 30 * 60
    weights = WEIGHTS_DIR / "open_clip_model.safetensors"
    assert weights.stat().st_size < 5 * 2 ** 20  # a few MB
    v = load_vlm(bundled_vlm_id(), None, "cpu")
    assert v.embed_dim == c["model_cfg"]["embed_dim"] and v.native_size == IMAGE_SIZE


def test_zero_shot_from_a_real_encode_matches_the_card(tmp_path):
    cfg = EncodeConfig(dataset="synthetic", workdir=str(tmp_path), vlm=bundled_vlm_id(), pretrained=None,
                       views=0, image_size=IMAGE_SIZE, base_size=BASE_SIZE, batch_size=256, workers=2,
                       device="cpu")
    result = encode(cfg)
    assert result.zero_shot_top1 >= 3 * 100 / 24
    assert result.zero_shot_top1 == pytest.approx(card()["zero_shot_top1_synthetic_test"], abs=1.5)


def test_pretraining_module_writes_a_loadable_local_dir(tmp_path):
    from dait_cache.minivlm.pretrain import pretrain

    c = pretrain(tmp_path / "mv", steps=3, seed=1, per_combo=1, batch=64, lr=1e-3, log=lambda *_: None)
    assert {p.name for p in (tmp_path / "mv").iterdir()} == {"open_clip_config.json",
                                                             "open_clip_model.safetensors", "card.json"}
    assert json.loads((tmp_path / "mv" / "card.json").read_text()) == json.loads(json.dumps(c))
    v = load_vlm(f"local-dir:{tmp_path / 'mv'}", None, "cpu")
    assert v.encode_texts(["a red circle with one stripe and a white dot"]).shape == (1, 64)


@pytest.mark.slow
def test_demo_pipeline_end_to_end_small(tmp_path):
    from dait_cache.demo import DemoConfig, demo_table, run_demo

    cfg = DemoConfig(workdir=str(tmp_path), views=2, teacher_arch="resnet10t", teacher_epochs=1,
                     student_archs=("resnet10t", "shufflenetv2"), methods=("none", "dait-f"),
                     student_epochs=1, workers=0)
    records, seconds = run_demo(cfg)
    roles = sorted((r.role, r.arch, r.method) for r in records)
    assert roles == [("student", "resnet10t", "dait-f"), ("student", "resnet10t", "none"),
                     ("student", "shufflenetv2", "dait-f"), ("student", "shufflenetv2", "none"),
                     ("teacher", "resnet10t", "dait"), ("vlm", "mini-vlm", "zero-shot")]
    assert all(r.status == "finished" and r.train_fraction in (0.3, 1.0) for r in records)
    table = demo_table(records)
    assert len(table.rows) == 6
    again, _ = run_demo(cfg)  # finished runs are reused, not retrained
    assert [r.test_top1_last for r in again] == [r.test_top1_last for r in records]
