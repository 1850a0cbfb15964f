"""The cache's HDF5 writer and encode's background shard writer, on their own."""

from __future__ import annotations

import json
import threading
import time

import h5py
import numpy as np
import pytest

from dait_cache.cache.shards import CHUNK_ROWS, ShardWriter, read_attrs, write_h5_atomic, write_shard
from dait_cache.errors import DaitError


def _write(path, n=100):
    arrays = {"emb": np.arange(n * 3, dtype=np.float16).reshape(n, 3), "label": np.arange(n, dtype=np.int64)}
    write_h5_atomic(path, arrays, {"fingerprint": "abc", "row_start": 0}, strings={"names": ["Jay", "Wren é"]})


def test_the_same_arrays_give_the_same_bytes_a_second_later(tmp_path):
    _write(tmp_path / "a.h5")
    time.sleep(1.1)  # HDF5 would record each dataset's creation time, to the second
    _write(tmp_path / "b.h5")
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "b.h5"]  # no temp file left


def test_datasets_are_row_chunks_with_checksums_and_read_back(tmp_path):
    _write(tmp_path / "a.h5")
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f["emb"].chunks == (CHUNK_ROWS, 3) and f["emb"].fletcher32
        assert f["label"][...].tolist() == list(range(100))
        assert [s.decode() for s in f["names"][...]] == ["Jay", "Wren é"]
    assert read_attrs(tmp_path / "a.h5") == {"fingerprint": "abc", "row_start": 0}
    assert type(read_attrs(tmp_path / "a.h5")["row_start"]) is int
    _write(tmp_path / "small.h5", n=5)
    with h5py.File(tmp_path / "small.h5", "r") as f:
        assert f["emb"].chunks == (5, 3)


def _rows(n=3, k=4, size=8):
    g = np.random.default_rng(0)
    return [
        {
            "emb": g.normal(size=(k, 5)),
            "params": g.normal(size=(k, 6)),
            "index": 10 + i,
            "label": i % 2,
            "src": f"{i:064x}",
            "base": g.integers(0, 256, size=(size, size, 3)),
        }
        for i in range(n)
    ]


def test_a_shard_holds_the_rows_in_the_cache_formats_dtypes(tmp_path):
    rows, skipped = _rows(), [{"path": "a/b.jpg", "reason": "cannot decode"}]
    write_shard(tmp_path, "train/shard-00000.h5", rows, "fp1", 10, 13, True, skipped)
    write_shard(tmp_path, "train/shard-00001.h5", rows, "fp1", 13, 16, False, [])
    with h5py.File(tmp_path / "train/shard-00000.h5", "r") as f:
        assert f["img_emb"].dtype == np.float16 and f["view_params"].dtype == np.float32
        assert np.array_equal(f["img_emb"][...], np.stack([r["emb"] for r in rows]).astype(np.float16))
        assert f["sample_index"][...].tolist() == [10, 11, 12] and f["label"][...].tolist() == [0, 1, 0]
        assert f["label"].dtype == np.int64 and f["src_sha256"][1] == f"{1:064x}".encode()
        assert f["images"].dtype == np.uint8 and f["images"].shape == (3, 8, 8, 3)
    with h5py.File(tmp_path / "train/shard-00001.h5", "r") as f:
        assert "images" not in f  # without the image cache, training re-decodes the files
    attrs = read_attrs(tmp_path / "train/shard-00000.h5")
    assert (attrs["fingerprint"], attrs["row_start"], attrs["row_end"]) == ("fp1", 10, 13)
    assert json.loads(attrs["skipped"]) == skipped


def test_a_shard_that_cannot_fit_twice_is_refused_before_it_is_written(tmp_path, monkeypatch):
    import collections
    import shutil

    rows = _rows()
    need = 3 * 4 * 5 * 2 + 3 * 4 * 6 * 4 + 3 * 8 * 2 + 3 * 64 + 3 * 8 * 8 * 3  # the shard's array bytes
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 2 * need + 1, 2 * need - 1))
    with pytest.raises(
        DaitError,
        match=rf"^not enough disk space to write train/s.h5 under .*: 0\.0 MB free, about {2 * need / 1e6:.1f} MB needed",
    ):
        write_shard(tmp_path, "train/s.h5", rows, "fp", 0, 3, True, [])
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 2 * need, 2 * need))
    write_shard(tmp_path, "train/s.h5", rows, "fp", 0, 3, True, [])  # twice the size is enough


def test_the_writer_runs_jobs_in_order_and_drain_waits_for_them(tmp_path):
    done, writer = [], ShardWriter()
    for k in range(5):
        writer.submit(lambda k=k: (time.sleep(0.01), done.append(k)))
    writer.drain()
    assert done == [0, 1, 2, 3, 4]
    writer.submit(lambda: (time.sleep(0.2), done.append("last")))
    writer.close()
    assert done[-1] == "last"  # close finishes what was queued


def test_a_failed_job_stops_the_later_ones_and_reaches_the_caller():
    done, writer = [], ShardWriter()
    gate = threading.Event()

    def fail():
        gate.wait()
        raise OSError("No space left on device")

    writer.submit(fail)
    writer.submit(lambda: done.append("after"))
    gate.set()
    with pytest.raises(OSError, match="No space left"):
        writer.close()
    assert done == []  # a shard after the failed one is not written
    writer = ShardWriter()
    writer.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        writer.drain()
    with pytest.raises(ZeroDivisionError):
        writer.submit(lambda: None)  # the caller hears of it at its next submit too


def test_the_queue_is_bounded_so_memory_stays_flat():
    writer, gate, started = ShardWriter(depth=1), threading.Event(), threading.Event()
    writer.submit(lambda: (started.set(), gate.wait()))
    started.wait()
    writer.submit(lambda: None)  # queued: the one place
    third = threading.Thread(target=writer.submit, args=(lambda: None,))
    third.start()
    third.join(0.3)
    assert third.is_alive()  # waits for room instead of holding a third shard's rows
    gate.set()
    third.join(5)
    assert not third.is_alive()
    writer.close()
