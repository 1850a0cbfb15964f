"""Is a cache still the encoding of its source images? Paths and labels are in the fingerprint;
this module covers their content.

Per row the manifest keeps the file's (size, mtime_ns), cheap to compare on every ``encode``, and
the shards keep the sha256 of its bytes (hashed in the decode workers during ``encode``). A file
whose size or mtime moved is re-hashed: only a changed hash counts as a changed image.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from ..io import sha256_file

SOURCE_HASH = "src_sha256"  # shard dataset: hex sha256 of each row's source file ("" for none)


def source_file(path: str) -> str | None:
    """The file behind a sample path (generated samples have none)."""
    return None if path.startswith("synthetic:") else path


def file_stats(paths: list[str]) -> list[list[int] | None]:
    """[size, mtime_ns] per sample (None where there is no file or it cannot be read)."""
    stats = []
    for p in paths:
        try:
            st = os.stat(p) if source_file(p) else None
        except OSError:
            st = None
        stats.append(None if st is None else [int(st.st_size), int(st.st_mtime_ns)])
    return stats


def stored_hashes(cache_dir: Path, split_info: dict) -> dict[int, str]:
    """sample index -> the sha256 recorded at encode time (caches from before it give none)."""
    out: dict[int, str] = {}
    for shard in split_info["shards"]:
        try:
            with h5py.File(Path(cache_dir) / shard["path"], "r") as f:
                if SOURCE_HASH in f:
                    for i, h in zip(f["sample_index"][...].tolist(), f[SOURCE_HASH][...].tolist()):
                        out[int(i)] = h.decode() if isinstance(h, bytes) else str(h)
        except (OSError, KeyError, RuntimeError):  # a missing or damaged shard is encoded again anyway
            continue
    return out


def changed_sources(
    cache_dir: Path, split_info: dict, paths: list[str], stats: list | None = None, deep: bool = False
) -> list[str]:
    """Source files whose bytes differ from what was encoded. Without ``deep`` only files whose
    (size, mtime) differ from ``split_info["source_stat"]`` are re-hashed."""
    recorded = split_info.get("source_stat") or []
    suspects = [
        i
        for i, path in enumerate(paths)
        if source_file(path) is not None and (deep or stats is None or i >= len(recorded) or stats[i] != recorded[i])
    ]
    if not suspects:  # the common case: no shard is opened
        return []
    hashes = stored_hashes(cache_dir, split_info)
    changed = []
    for i in suspects:
        path = paths[i]
        if not hashes.get(i):
            continue
        try:
            now = sha256_file(Path(path))
        except OSError:
            now = None
        if now != hashes[i]:
            changed.append(path)
    return changed


def hash_array(hashes: list[str]) -> np.ndarray:
    return np.array([h.encode() for h in hashes], dtype="S64")
