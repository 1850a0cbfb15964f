"""Source-image content checks (cache/sources.py) on real files and real HDF5 shards, with the
expected hashes computed here by hashlib."""

from __future__ import annotations

import hashlib
import os

import h5py
import numpy as np
import pytest

from dait_cache.cache.sources import (
    SOURCE_HASH,
    changed_sources,
    file_stats,
    hash_array,
    source_file,
    stored_hashes,
)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shard(path, sample_index: list[int], hashes: list[str] | None) -> dict:
    with h5py.File(path, "w") as f:
        f["sample_index"] = np.array(sample_index, dtype=np.int64)
        if hashes is not None:
            f[SOURCE_HASH] = hash_array(hashes)
    return {"path": path.name}


@pytest.fixture
def split(tmp_path):
    """Four image files in two shards (rows 2, 3 first: shards follow sample index, not file order)."""
    files = []
    for i in range(4):
        files.append(tmp_path / f"img{i}.jpg")
        files[-1].write_bytes(bytes([i]) * (10 + i))
    shards = [
        _shard(tmp_path / "shard-00001.h5", [2, 3], [_sha(files[2]), _sha(files[3])]),
        _shard(tmp_path / "shard-00000.h5", [0, 1], [_sha(files[0]), _sha(files[1])]),
    ]
    paths = [str(p) for p in files]
    return {"shards": shards, "source_stat": file_stats(paths)}, paths, files


def test_file_stats_are_size_and_mtime_or_none(tmp_path):
    f = tmp_path / "a.jpg"
    f.write_bytes(b"12345")
    os.utime(f, ns=(7, 123456789))
    unreadable = [str(tmp_path / "gone.jpg"), str(f / "under-a-file.jpg")]  # not found; not a directory
    assert file_stats([str(f), "synthetic:3", *unreadable]) == [[5, 123456789], None, None, None]
    assert source_file("synthetic:3") is None and source_file(str(f)) == str(f)  # no file is hashed for it


def test_stored_hashes_follow_sample_index_and_skip_old_or_damaged_shards(tmp_path, split):
    info, _, files = split
    assert stored_hashes(tmp_path, info) == {i: _sha(f) for i, f in enumerate(files)}
    old = _shard(tmp_path / "shard-00002.h5", [4], None)  # written before hashes were kept
    (tmp_path / "shard-00003.h5").write_bytes(b"not hdf5")
    missing = {"path": "shard-00009.h5"}
    more = {"shards": info["shards"] + [old, {"path": "shard-00003.h5"}, missing]}
    assert stored_hashes(tmp_path, more) == {i: _sha(f) for i, f in enumerate(files)}


def test_only_files_whose_bytes_changed_are_named(tmp_path, split):
    info, paths, files = split
    os.utime(files[0], ns=(1, 1))  # touched: re-hashed, same bytes
    files[1].write_bytes(b"\x09" * 11)  # same size, other bytes, new mtime
    files[3].unlink()  # gone: cannot be the encoded image
    assert changed_sources(tmp_path, info, paths, file_stats(paths)) == [paths[1], paths[3]]


def test_a_change_that_keeps_size_and_mtime_is_found_only_by_deep(tmp_path, split):
    info, paths, files = split
    st = files[2].stat()
    files[2].write_bytes(b"\x07" * st.st_size)
    os.utime(files[2], ns=(st.st_atime_ns, st.st_mtime_ns))
    stats = file_stats(paths)
    assert stats == info["source_stat"]
    assert changed_sources(tmp_path, info, paths, stats) == []
    assert changed_sources(tmp_path, info, paths, stats, deep=True) == [paths[2]]
    assert changed_sources(tmp_path, info, paths, None) == [paths[2]]  # no stats given: every file is hashed


def test_rows_beyond_the_recorded_stats_are_hashed(tmp_path, split):
    info, paths, files = split
    st = files[3].stat()
    files[3].write_bytes(b"\x05" * st.st_size)
    os.utime(files[3], ns=(st.st_atime_ns, st.st_mtime_ns))  # its stat alone would not show it
    short = {**info, "source_stat": info["source_stat"][:3]}  # a manifest from before row 3 had a stat
    assert changed_sources(tmp_path, short, paths, file_stats(paths)) == [paths[3]]


def test_rows_without_a_recorded_hash_are_not_judged(tmp_path, split):
    info, paths, files = split
    for f in files:
        f.write_bytes(b"other")
    old = {"shards": [_shard(tmp_path / "old.h5", [0, 1, 2, 3], ["", "", "", ""])], "source_stat": None}
    assert changed_sources(tmp_path, old, paths, file_stats(paths)) == []
    assert changed_sources(tmp_path, {"shards": [], "source_stat": []}, ["synthetic:0"], [None], deep=True) == []
