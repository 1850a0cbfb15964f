"""Check a cache directory: checksums, shapes, dtypes, fingerprints and row coverage."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..data.views import PARAM_DIM
from ..errors import CacheError
from ..vlm import sha256_file
from .manifest import TEXT_FILE, is_complete, read_manifest
from .view_store import check_store


def _check_shard(cache_dir: Path, split: str, info: dict, manifest: dict, num_views: int) -> list[str]:
    path = cache_dir / info["path"]
    if not path.is_file():
        return [f"{info['path']}: missing"]
    problems = []
    if info.get("sha256") and sha256_file(path) != info["sha256"]:
        problems.append(f"{info['path']}: sha256 differs from the manifest (file changed or corrupt)")
    start, end = info["rows"]
    dim = manifest["vlm"]["embed_dim"]
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("fingerprint") != manifest["fingerprint"]:
                problems.append(f"{info['path']}: fingerprint {f.attrs.get('fingerprint')} != manifest")
            idx = f["sample_index"][...]
            n = len(idx)
            expect = {"img_emb": ((n, num_views, dim), np.float16),
                      "view_params": ((n, num_views, PARAM_DIM), np.float32),
                      "sample_index": ((n,), np.int64), "label": ((n,), np.int64)}
            for name, (shape, dtype) in expect.items():
                if name not in f:
                    problems.append(f"{info['path']}: dataset {name} missing")
                    continue
                if f[name].shape != shape or f[name].dtype != dtype:
                    problems.append(f"{info['path']}: {name} is {f[name].shape} {f[name].dtype}, "
                                    f"expected {shape} {np.dtype(dtype)}")
                else:
                    values = f[name][...]  # reading checks the fletcher32 checksums
                    if values.dtype.kind == "f" and not np.isfinite(values).all():
                        problems.append(f"{info['path']}: {name} holds {int((~np.isfinite(values)).sum())} "
                                        "NaN/Inf values; re-encode this cache (--overwrite)")
            skipped = {s["sample_index"] for s in manifest["splits"][split].get("skipped", [])}
            want = [i for i in range(start, end) if i not in skipped]
            if idx.tolist() != want:
                problems.append(f"{info['path']}: rows cover sample indices other than {start}..{end - 1}")
            if "images" in f:
                f["images"][...]
    except OSError as exc:
        problems.append(f"{info['path']}: unreadable ({exc})")
    return problems


def verify_cache(cache_dir: str | Path) -> list[str]:
    """Return the list of problems; empty means healthy."""
    cache_dir = Path(cache_dir)
    try:
        manifest = read_manifest(cache_dir)
    except CacheError as exc:
        return [str(exc)]
    problems = [] if is_complete(manifest) else ["manifest: cache is incomplete (encode interrupted)"]
    text = cache_dir / TEXT_FILE
    if not text.is_file():
        problems.append(f"{TEXT_FILE}: missing")
    elif sha256_file(text) != manifest["text"].get("sha256"):
        problems.append(f"{TEXT_FILE}: sha256 differs from the manifest")
    else:
        with h5py.File(text, "r") as f:
            if "text_emb" in f and not np.isfinite(f["text_emb"][...]).all():
                problems.append(f"{TEXT_FILE}: text_emb holds NaN/Inf values; re-encode this cache (--overwrite)")
    for split, info in manifest["splits"].items():
        covered = 0
        for shard in info["shards"]:
            problems += _check_shard(cache_dir, split, shard, manifest, info["num_views"])
            covered += shard["rows"][1] - shard["rows"][0]
        if covered != info["size"]:
            problems.append(f"{split}: shards cover {covered} of {info['size']} samples")
    return problems + check_store(cache_dir, manifest)


def cache_warnings(cache_dir: str | Path) -> list[str]:
    """Files the manifest does not name (and which of them ``encode`` deletes), and a missing
    ``config.json``: the cache still reads, but a user should know."""
    cache_dir = Path(cache_dir)
    try:
        manifest = read_manifest(cache_dir)
    except CacheError:
        return []
    known = {"manifest.json", TEXT_FILE, "config.json"}
    known |= {s["path"] for info in manifest["splits"].values() for s in info["shards"]}
    known |= {e["path"] for e in manifest.get("view_store", {}).values()}
    warnings = [] if (cache_dir / "config.json").is_file() else [
        "config.json: missing (the settings the cache was encoded with); rerun the same encode command"]
    for path in sorted(p for p in cache_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(cache_dir).as_posix()
        if rel not in known:
            fate = "encode deletes it (an unfinished write)" if rel.endswith(".tmp") else "no manifest entry names it"
            warnings.append(f"{rel}: unknown file; {fate}")
    return warnings
