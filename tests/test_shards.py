"""The cache's HDF5 writer and encode's background shard writer, on their own."""

from __future__ import annotations

import threading
import time

import h5py
import numpy as np
import pytest

from dait_cache.cache.shards import CHUNK_ROWS, ShardWriter, read_attrs, write_h5_atomic


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


def test_the_writer_runs_jobs_in_order_and_drain_waits_for_them(tmp_path):
    done, writer = [], ShardWriter()
    for k in range(5):
        writer.submit(lambda k=k: (time.sleep(0.01), done.append(k)))
    writer.drain()
    assert done == [0, 1, 2, 3, 4]
    writer.close()


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
