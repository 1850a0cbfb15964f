"""Writing and reading single HDF5 files of the cache, atomically and reproducibly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from ..io import commit, temp_path

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
