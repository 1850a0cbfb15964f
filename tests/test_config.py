"""Config helpers (config.py): the canonical digest, ``<prefix>:<path>`` names, workspace folder
names of datasets, and the resolved lambda rate. Expected values are written out or computed here
by hand."""

from __future__ import annotations

import hashlib
from pathlib import Path

from dait_cache.config import EncodeConfig, TrainConfig, arch_slug, dataset_slug, json_digest, prefixed_path
from dait_cache.presets import resolve_encode_config


def test_json_digest_is_the_sha256_of_canonical_json_whatever_the_key_order():
    expected = hashlib.sha256(b'{"a": [1, 2.5], "b": {"c": null, "d": "x"}}').hexdigest()
    assert json_digest({"b": {"d": "x", "c": None}, "a": [1, 2.5]}) == expected[:16]
    assert json_digest({"a": [1, 2.5], "b": {"c": None, "d": "x"}}, 20) == expected[:20]


def test_prefixed_paths_expand_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert prefixed_path("folder:~/birds", "folder") == tmp_path / "birds"
    assert prefixed_path("local-dir:/m/vlm", "local-dir") == Path("/m/vlm")
    assert prefixed_path("local-dir:/m/vlm", "folder") is None
    assert prefixed_path("folderish", "folder") is None


def test_a_folder_dataset_is_named_by_its_resolved_folder(monkeypatch, tmp_path):
    (tmp_path / "birds").mkdir()
    monkeypatch.chdir(tmp_path / "birds")
    assert dataset_slug("folder:.") == "folder-birds"  # the folder '.' stands for
    assert dataset_slug("folder:../birds/") == "folder-birds"
    assert dataset_slug("cub") == "cub"


def test_an_architecture_is_one_folder_name_part(monkeypatch, tmp_path):
    (tmp_path / "models" / "mynet").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "models")
    assert arch_slug("resnet18.a1_in1k") == "resnet18.a1_in1k"
    assert arch_slug("hf-hub:timm/resnet18.a1_in1k") == "hf-hub-timm-resnet18.a1_in1k"
    assert arch_slug("local-dir:mynet/") == arch_slug(f"local-dir:{tmp_path}/models/mynet") == "local-dir-mynet"


def test_a_lambda_rate_of_zero_is_kept_and_none_is_one_over_the_epochs():
    assert TrainConfig(epochs=8, lambda_rate=0.0).resolved_lambda_rate == 0.0  # lambda stays at its bias
    assert TrainConfig(epochs=8).resolved_lambda_rate == 1 / 8
    assert TrainConfig(epochs=8, lambda_rate=0.5).resolved_lambda_rate == 0.5


def _design_defaults() -> dict[str, str]:
    """Section 7 of docs/design.md, the defaults' table: setting -> default, as written there."""
    section = (Path(__file__).parents[1] / "docs" / "design.md").read_text().split("\n## 7.")[1].split("\n## ")[0]
    rows = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return {setting.strip(): default.strip() for setting, default in rows}


def test_the_defaults_are_the_design_tables_paper_values():
    """What a paper reproduction trains with when no flag is given: the design's table, read from
    the document a maintainer edits, against the config dataclasses the CLI takes its defaults from."""
    table, cfg, enc = _design_defaults(), TrainConfig(), resolve_encode_config(EncodeConfig(dataset="aircraft"))
    assert table["epochs / batch"] == f"{cfg.epochs} / {cfg.batch_size}" == "100 / 32"
    assert table["optimiser"] == f"AdamW, lr {cfg.lr:.0e}, weight decay {cfg.weight_decay:.0e}".replace("e-0", "e-")
    assert table["lr schedule"] == f"step every {cfg.lr_step} epochs, gamma {cfg.lr_gamma}"
    assert table["temperature tau"] == f"{cfg.temperature:g}" == "2"
    assert (cfg.lambda_rate, cfg.lambda_bias, cfg.resolved_lambda_rate) == (None, 0.0, 1 / 100)
    assert (cfg.kd_alpha, cfg.val_fraction, cfg.train_fraction) == (0.5, 0.1, 1.0)
    assert table["image size / base size"] == f"{enc.image_size} / {enc.base_size}" == "224 / 256"
    assert table["views K"] == f"{enc.views} augmented + 1 clean"
    assert (enc.vlm, enc.pretrained) == ("convnext_xxlarge", "laion2b_s34b_b82k_augreg_soup")
