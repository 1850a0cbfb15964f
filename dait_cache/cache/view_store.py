"""The view store: every cached view's exact uint8 pixels in a memory-mapped file per split.

Training normally re-renders each view from the base image and its recorded parameters; on a
fast GPU the CPU cores cannot render as fast as a small student trains. The store trades disk
for that work: ``views/<split>.u8`` holds a C-ordered uint8 array ``(N, V, 3, H, W)`` (train:
V = K + 1 views per row, test: the clean view), so a training worker copies a view instead of
rendering it. Its pixels are those the VLM saw (rendering is a pure function of the base image
and the recorded parameters); its sha256 sits in the manifest, so ``verify`` covers it.

Written like every cache file: to ``*.tmp``, flushed, fsynced, renamed, then recorded. A fresh
single-process ``encode --store-views`` fills it as the VLM gets the views (:class:`StoreStager`),
so each view is rendered once; a store added later, or after a resumed encode, is rendered again
from the cache (:func:`build_view_store`). Both give the same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.workers import worker_options
from ..errors import CacheError
from ..io import commit, sha256_file, temp_path
from ..progress import Progress
from .manifest import encode_command, read_manifest, write_manifest
from .shards import check_free_space

STORE_DIR = "views"


def store_shape(manifest: dict, split: str) -> tuple[int, ...]:
    info, size = manifest["splits"][split], int(manifest["views"]["image_size"])
    return (int(info["size"]) - len(info.get("skipped", [])), int(info["num_views"]), 3, size, size)


def store_bytes(manifest: dict) -> int:
    """Disk space the view store of this cache takes (all splits)."""
    return sum(int(np.prod(store_shape(manifest, s))) for s in manifest["splits"])


def store_path(cache_dir: Path, split: str) -> Path:
    return Path(cache_dir) / STORE_DIR / f"{split}.u8"


def _size_problem(cache_dir: Path, entry: dict) -> str | None:
    """How a recorded store file is not in place ("missing", or its size against the recorded
    one byte per value of its shape), or None (verify checks its bytes)."""
    path, expected = Path(cache_dir) / entry["path"], int(np.prod(entry["shape"]))
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    return None if size == expected else f"{size} bytes, expected {expected}"


def _stored(cache_dir: Path, manifest: dict, split: str) -> bool:
    """The split's store is recorded and its file is there at the recorded size."""
    entry = manifest.get("view_store", {}).get(split)
    return entry is not None and _size_problem(cache_dir, entry) is None


def has_store(cache_dir: Path, manifest: dict) -> bool:
    """Every split's store is recorded and in place (a deleted or cut one is built again)."""
    return all(_stored(cache_dir, manifest, s) for s in manifest["splits"])


def rebuild_command(cache_dir: Path) -> str:
    """The cache's own encode command with ``--store-views``: it renders a missing or cut store
    again and keeps the rest of the cache."""
    command = encode_command(cache_dir)
    if not command.startswith("`"):  # no config.json to rebuild the command from: say the flag
        return f"{command}, with --store-views"
    return command if "--store-views" in command else command[:-1] + " --store-views`"


def open_store(cache_dir: Path, manifest: dict, split: str) -> np.memmap | None:
    """The split's views as a read-only memory map, or None when the cache has no store. A
    recorded store that is missing or has another size is refused: numpy refuses to map a cut
    file with a raw error, and maps a grown one though it is not the file recorded."""
    entry = manifest.get("view_store", {}).get(split)
    if entry is None:
        return None
    path = Path(cache_dir) / entry["path"]
    problem = _size_problem(cache_dir, entry)
    if problem:
        raise CacheError(f"view store {path} is {problem}; rebuild it: {rebuild_command(cache_dir)}")
    return np.memmap(path, dtype=np.uint8, mode="r", shape=tuple(entry["shape"]))


class _RowViews(Dataset):
    def __init__(self, source, num_views: int):
        self.source, self.num_views = source, num_views

    def __len__(self) -> int:
        return len(self.source.params)

    def __getitem__(self, row: int) -> torch.Tensor:
        return torch.stack([self.source.render(row, v) for v in range(self.num_views)])


def _open_temp(cache_dir: Path, split: str, shape: tuple[int, ...]) -> tuple[Path, np.memmap]:
    """The split's store as a temp file of ``shape``, refused before any byte is written when the
    disk cannot hold it (a memory map on a full disk dies of SIGBUS)."""
    path = store_path(cache_dir, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_free_space(path.parent, int(np.prod(shape)), path.name, factor=1.05)
    tmp = temp_path(path)
    return tmp, np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape)


def _record(cache_dir: Path, manifest: dict, split: str, tmp: Path, shape: tuple[int, ...]) -> None:
    """Commit a finished ``tmp`` as the split's store and record it in the manifest."""
    digest = sha256_file(tmp)
    commit(tmp, store_path(cache_dir, split))
    manifest.setdefault("view_store", {})[split] = {
        "path": f"{STORE_DIR}/{split}.u8",
        "shape": list(shape),
        "dtype": "uint8",
        "sha256": digest,
    }
    write_manifest(cache_dir, manifest)


class StoreStager:
    """One split's store, filled while ``encode`` renders its views: sample ``i``'s views go to
    slot ``i`` of the temp file; :meth:`finish` closes the gaps of skipped images."""

    def __init__(self, cache_dir: Path, split: str, samples: int, num_views: int, image_size: int):
        self.split = split
        shape = (samples, num_views, 3, image_size, image_size)
        self.label = f"view store {split} ({np.prod(shape) / 1e9:.2f} GB)"  # its size, before it is written
        self.tmp, self.out = _open_temp(cache_dir, split, shape)
        self.filled = np.zeros(samples, dtype=bool)

    def put(self, index: int, views: torch.Tensor) -> None:
        self.out[index] = views.numpy()
        self.filled[index] = True

    def report(self, progress: Progress | None) -> None:
        if progress:
            progress(self.label, int(self.filled.sum()), len(self.filled))

    def finish(self, cache) -> None:
        """Rows in cache order (sample indices without the skipped ones), committed and recorded."""
        cache_dir = Path(cache.dir)
        manifest = read_manifest(cache_dir)
        index = cache.sample_index(self.split)
        # encode keeps a split only when it encodes all of it, so this holds; if it ever did not,
        # the store is rendered from the cache instead of being committed with gaps
        if not self.filled[index].all():
            self.discard()
            return
        for row, i in enumerate(index.tolist()):  # rows only move down: nothing is overwritten early
            if row != i:
                self.out[row] = self.out[i]
        shape = store_shape(manifest, self.split)
        self.out.flush()
        del self.out
        os.truncate(self.tmp, int(np.prod(shape)))
        _record(cache_dir, manifest, self.split, self.tmp, shape)
        cache.manifest = manifest

    def discard(self) -> None:
        del self.out
        self.tmp.unlink(missing_ok=True)


def build_view_store(cache, workers: int = 4, progress: Progress | None = None) -> int:
    """Render every view of ``cache`` into its store (skipping splits already stored); return bytes."""
    from .reader import PixelSource

    cache_dir = Path(cache.dir)
    manifest = read_manifest(cache_dir)
    for split in manifest["splits"]:
        if _stored(cache_dir, manifest, split):
            continue
        shape = store_shape(manifest, split)
        tmp, out = _open_temp(cache_dir, split, shape)
        loader = DataLoader(
            _RowViews(PixelSource(cache, split, use_store=False), shape[1]),
            batch_size=16,
            **worker_options(workers),
        )
        row = 0
        for views in loader:
            out[row : row + len(views)] = views.numpy()
            row += len(views)
            if progress:
                progress(f"view store {split}", row, shape[0])
        out.flush()
        del out
        _record(cache_dir, manifest, split, tmp, shape)
    cache.manifest = manifest
    return store_bytes(manifest)


def check_store(cache_dir: Path, manifest: dict) -> list[str]:
    """verify's part: each stored split has the recorded size and checksum."""
    problems = []
    for entry in manifest.get("view_store", {}).values():
        problem = _size_problem(cache_dir, entry)
        if problem:
            problems.append(f"{entry['path']}: {problem} (rerun encode with --store-views)")
        elif sha256_file(Path(cache_dir) / entry["path"]) != entry["sha256"]:
            problems.append(
                f"{entry['path']}: sha256 differs from the manifest (file changed or corrupt; "
                "delete it and rerun encode with --store-views)"
            )
    return problems
