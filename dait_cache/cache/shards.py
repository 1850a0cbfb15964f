"""Writing and reading single HDF5 files of the cache, atomically and reproducibly, and the
background thread that writes encode's shards."""

from __future__ import annotations

import json
import queue
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np

from ..errors import DaitError
from ..io import commit, temp_path
from .sources import SOURCE_HASH, hash_array

CHUNK_ROWS = 64


def _create(f: h5py.File, name: str, data: np.ndarray) -> None:
    # Chunked by rows with fletcher32 checksums; no timestamps, so identical runs give
    # identical bytes.
    kw = {}
    if data.ndim >= 1 and data.shape[0] > 0 and data.dtype.kind != "O":
        kw = {"chunks": (min(CHUNK_ROWS, data.shape[0]),) + data.shape[1:], "fletcher32": True}
    f.create_dataset(name, data=data, track_times=False, **kw)


def write_h5_atomic(
    path: Path, arrays: dict[str, np.ndarray], attrs: dict, strings: dict[str, Sequence[str]] | None = None
) -> None:
    """Write ``arrays`` (and utf-8 ``strings``) to a temp file, fsync, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    # No HDF5 file lock: the file has a private .tmp name until its rename, and a lock held here
    # would outlive the close in any DataLoader worker forked meanwhile (encode writes on a thread).
    with h5py.File(tmp, "w", libver=("earliest", "v110"), track_order=False, locking=False) as f:
        for name, data in arrays.items():
            _create(f, name, np.ascontiguousarray(data))
        for name, values in (strings or {}).items():
            f.create_dataset(name, data=np.array(list(values), dtype=h5py.string_dtype("utf-8")), track_times=False)
        for k, v in attrs.items():
            f.attrs[k] = v
        f.flush()
    commit(tmp, path)


def read_attrs(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: (v.item() if hasattr(v, "item") and np.ndim(v) == 0 else v) for k, v in f.attrs.items()}


def check_free_space(folder: Path, need: int, what: str, factor: float = 2.0) -> None:
    """Refuse a write that cannot fit (HDF5 crashes the process when the disk fills mid-write, and
    a memory map dies of SIGBUS); ``factor`` times the size leaves room for the temp file and the
    file system's own needs."""
    free = shutil.disk_usage(folder).free
    if free < factor * need:
        raise DaitError(
            f"not enough disk space to write {what} under {folder}: {free / 1e6:.1f} MB free, "
            f"about {factor * need / 1e6:.1f} MB needed; free some space and rerun the same "
            "command (finished shards are kept)"
        )


def write_shard(
    cache_dir: Path, rel: str, rows: list[dict], fp: str, start: int, end: int, image_cache: bool, skipped: list[dict]
) -> None:
    """One shard of encoded rows (embeddings, view parameters, sample index, label, source hash,
    optionally the base images), written atomically after a free-space check."""
    arrays = {
        "img_emb": np.stack([r["emb"] for r in rows]).astype(np.float16),
        "view_params": np.stack([r["params"] for r in rows]).astype(np.float32),
        "sample_index": np.array([r["index"] for r in rows], dtype=np.int64),
        "label": np.array([r["label"] for r in rows], dtype=np.int64),
        SOURCE_HASH: hash_array([r["src"] for r in rows]),
    }
    if image_cache:
        arrays["images"] = np.stack([r["base"] for r in rows]).astype(np.uint8)
    check_free_space(cache_dir, sum(a.nbytes for a in arrays.values()), rel)
    write_h5_atomic(
        cache_dir / rel, arrays, {"fingerprint": fp, "row_start": start, "row_end": end, "skipped": json.dumps(skipped)}
    )


class ShardWriter:
    """Writes finished shards on a background thread, so the VLM never waits for HDF5 writes,
    fsyncs and checksums. Jobs run in submission order; the queue is bounded (memory stays flat) and an
    error in a job is raised in the caller at its next ``submit`` or at ``close``."""

    def __init__(self, depth: int = 2):
        self._jobs: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dait-shard-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._error is None:
                try:
                    job()
                except BaseException as exc:  # handed to the caller
                    self._error = exc
            self._jobs.task_done()
        self._jobs.task_done()

    def drain(self) -> None:
        """Wait until every queued job is done: call before forking DataLoader workers, so no
        child inherits a half-written file's descriptor (and HDF5's lock on it)."""
        self._jobs.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, job: Callable[[], None]) -> None:
        self._raise()
        self._jobs.put(job)

    def close(self) -> None:
        """Finish every queued job (complete shards are worth keeping), then raise any error."""
        self._jobs.put(None)
        self._thread.join()
        self._raise()
