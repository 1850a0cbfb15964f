"""Config helpers (config.py): the canonical digest, ``<prefix>:<path>`` names, workspace folder
names of datasets, and the resolved lambda rate. Expected values are written out or computed here
by hand."""

from __future__ import annotations

import hashlib
from pathlib import Path

from dait_cache.config import TrainConfig, dataset_slug, json_digest, prefixed_path


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


def test_a_lambda_rate_of_zero_is_kept_and_none_is_one_over_the_epochs():
    assert TrainConfig(epochs=8, lambda_rate=0.0).resolved_lambda_rate == 0.0  # lambda stays at its bias
    assert TrainConfig(epochs=8).resolved_lambda_rate == 1 / 8
    assert TrainConfig(epochs=8, lambda_rate=0.5).resolved_lambda_rate == 0.5
