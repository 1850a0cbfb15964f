"""verify's checks one by one, on a real shard and cache edited the way damage or a foreign file
would change them: each check must name what it found, and an intact cache must pass."""

from __future__ import annotations

import hashlib
import shutil

import h5py
import numpy as np
import pytest
from encode_helpers import make_cfg

from dait_cache.cache import verify_cache
from dait_cache.cache.manifest import read_manifest, write_manifest
from dait_cache.cache.verify import check_shard
from dait_cache.encode import encode

NAME = "train/shard-00000.h5"


@pytest.fixture(scope="module")
def encoded(vlm_id, data_root, tmp_path_factory):
    cfg = make_cfg(vlm_id, data_root, tmp_path_factory.mktemp("verify") / "ws")
    return encode(cfg).cache_dir


@pytest.fixture()
def cache(encoded, tmp_path):
    """A copy of the module's cache that a test may damage."""
    return shutil.copytree(encoded, tmp_path / "cache")


def _check(cache_dir, dim=32, rows=(0, 8), skipped=frozenset()):
    m = read_manifest(cache_dir)
    return check_shard(cache_dir / NAME, NAME, rows, m["fingerprint"], 4, dim, set(skipped))


def _rewrite(cache_dir, key, values) -> None:
    with h5py.File(cache_dir / NAME, "r+") as f:
        if key in f:
            del f[key]
        f.create_dataset(key, data=values, fletcher32=True)


def test_an_intact_shard_and_cache_have_no_problems(cache):
    assert _check(cache) == [] and _check(cache, dim=None) == []
    assert verify_cache(cache) == []


def test_a_shard_of_another_cache_is_named_by_its_fingerprint(cache):
    with h5py.File(cache / NAME, "r+") as f:
        f.attrs["fingerprint"] = "0" * 20
    assert _check(cache) == [f"{NAME}: fingerprint {'0' * 20} != manifest"]


def test_embeddings_of_another_width_and_missing_or_mistyped_datasets_are_named(cache):
    assert _check(cache, dim=64) == [f"{NAME}: img_emb is (8, 4, 32) float16, expected (8, 4, 64) float16"]
    with h5py.File(cache / NAME, "r+") as f:
        labels = f["label"][...]
        del f["label"]
    assert _check(cache) == [f"{NAME}: dataset label missing"]
    _rewrite(cache, "label", labels.astype(np.int32))
    assert _check(cache) == [f"{NAME}: label is (8,) int32, expected (8,) int64"]
    _rewrite(cache, "label", labels)
    with h5py.File(cache / NAME, "r") as f:
        params = f["view_params"][...]
    _rewrite(cache, "view_params", params[:, :3])
    assert _check(cache) == [f"{NAME}: view_params is (8, 3, 15) float32, expected (8, 4, 15) float32"]


def test_nan_embeddings_and_rows_of_other_samples_are_named(cache):
    with h5py.File(cache / NAME, "r") as f:
        emb, idx = f["img_emb"][...], f["sample_index"][...]
    bad = emb.copy()
    bad[1, 2, 3], bad[5, 0, 0] = np.nan, np.inf
    _rewrite(cache, "img_emb", bad)
    assert _check(cache) == [f"{NAME}: img_emb holds 2 NaN/Inf values; re-encode this cache (--overwrite)"]
    bad[1, 2, 3] = 0.0  # an infinity alone (a float16 overflow) is found too
    _rewrite(cache, "img_emb", bad)
    assert _check(cache) == [f"{NAME}: img_emb holds 1 NaN/Inf values; re-encode this cache (--overwrite)"]
    _rewrite(cache, "img_emb", emb)
    _rewrite(cache, "sample_index", idx + 1)
    assert _check(cache) == [f"{NAME}: rows cover sample indices other than 0..7"]
    assert _check(cache, rows=(1, 9)) == []
    _rewrite(cache, "sample_index", idx)
    assert _check(cache, skipped={3}) == [f"{NAME}: rows cover sample indices other than 0..7"]  # row 3 is there


@pytest.mark.parametrize("dataset", ["images", "src_sha256"])
def test_a_damaged_optional_dataset_is_caught_by_its_checksum(cache, dataset):
    path = cache / NAME
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 5] ^= 0x04
    path.write_bytes(bytes(data))
    (problem,) = _check(cache)
    assert problem.startswith(f"{NAME}: unreadable (OSError: "), problem


def test_a_file_that_is_not_hdf5_is_unreadable_not_a_traceback(cache):
    (cache / NAME).write_bytes(b"not an hdf5 file at all")
    (problem,) = _check(cache)
    assert problem.startswith(f"{NAME}: unreadable (OSError: "), problem


def test_text_embeddings_with_nan_and_a_split_not_covered_are_named(cache):
    text = cache / "text.h5"
    with h5py.File(text, "r+") as f:
        emb = f["text_emb"][...]
        emb[0, 0, 0] = np.nan
        f["text_emb"][...] = emb
    m = read_manifest(cache)
    m["text"]["sha256"] = hashlib.sha256(text.read_bytes()).hexdigest()  # as if encoded so
    m["splits"]["train"]["shards"].pop()
    m["splits"]["train"]["num_shards"] -= 1
    write_manifest(cache, m)
    assert verify_cache(cache) == [
        "text.h5: text_emb holds NaN/Inf values; re-encode this cache (--overwrite)",
        f"train: shards cover 16 of {m['splits']['train']['size']} samples",
    ]


def test_text_embeddings_missing_or_changed_are_named(cache):
    text = cache / "text.h5"
    data = text.read_bytes()
    text.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert verify_cache(cache) == ["text.h5: sha256 differs from the manifest"]
    text.unlink()
    assert verify_cache(cache) == ["text.h5: missing"]


def test_a_shard_changed_where_hdf5_does_not_look_is_named_by_its_checksum(cache):
    with open(cache / NAME, "ab") as f:  # bytes past the file's end of allocation: h5py reads it as before
        f.write(b"\0")
    assert _check(cache) == []  # every dataset, shape and fletcher32 checksum as before
    assert verify_cache(cache) == [f"{NAME}: sha256 differs from the manifest (file changed or corrupt)"]


def test_a_manifest_that_lacks_a_planned_shard_is_incomplete(cache):
    m = read_manifest(cache)
    m["splits"]["train"]["shards"].pop()  # as an encode stopped before its last shard
    write_manifest(cache, m)
    assert verify_cache(cache) == [
        "manifest: cache is incomplete (encode interrupted)",
        f"train: shards cover 16 of {m['splits']['train']['size']} samples",
    ]
