"""Check a cache directory: checksums, shapes, dtypes, fingerprints and row coverage."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..data.views import PARAM_DIM
from ..errors import CacheError
from ..io import sha256_file
from .manifest import TEXT_FILE, is_complete, read_manifest
from .reader import KEEP_VIEWS, decode_mismatch, render_mismatch
from .view_store import check_store


def _check_shard(cache_dir: Path, split: str, info: dict, manifest: dict, num_views: int) -> list[str]:
    skipped = {s["sample_index"] for s in manifest["splits"][split].get("skipped", [])}
    return check_shard(
        cache_dir / info["path"],
        info["path"],
        tuple(info["rows"]),
        manifest["fingerprint"],
        num_views,
        manifest["vlm"].get("embed_dim"),
        skipped,
        info.get("sha256"),
    )


def check_shard(
    path: Path,
    name: str,
    rows: tuple[int, int],
    fingerprint: str,
    num_views: int,
    dim: int | None,
    skipped: set,
    sha256: str | None = None,
) -> list[str]:
    """Problems of one shard file against what it must hold: its checksum (when recorded), its
    fingerprint, the row plan (``rows`` less ``skipped``), dataset shapes and dtypes (``dim=None``
    accepts any embedding width), the fletcher32 checksums of every value, and finite floats."""
    if not path.is_file():
        return [f"{name}: missing"]
    problems = []
    if sha256 and sha256_file(path) != sha256:
        problems.append(f"{name}: sha256 differs from the manifest (file changed or corrupt)")
    start, end = rows
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("fingerprint") != fingerprint:
                problems.append(f"{name}: fingerprint {f.attrs.get('fingerprint')} != manifest")
            idx = f["sample_index"][...]
            n = len(idx)
            width = dim if dim is not None else (f["img_emb"].shape[-1] if "img_emb" in f else 0)
            expect = {
                "img_emb": ((n, num_views, width), np.float16),
                "view_params": ((n, num_views, PARAM_DIM), np.float32),
                "sample_index": ((n,), np.int64),
                "label": ((n,), np.int64),
            }
            for key, (shape, dtype) in expect.items():
                if key not in f:
                    problems.append(f"{name}: dataset {key} missing")
                    continue
                if f[key].shape != shape or f[key].dtype != dtype:
                    problems.append(
                        f"{name}: {key} is {f[key].shape} {f[key].dtype}, expected {shape} {np.dtype(dtype)}"
                    )
                else:
                    values = f[key][...]  # reading checks the fletcher32 checksums
                    if values.dtype.kind == "f" and not np.isfinite(values).all():
                        problems.append(
                            f"{name}: {key} holds {int((~np.isfinite(values)).sum())} "
                            "NaN/Inf values; re-encode this cache (--overwrite)"
                        )
            want = [i for i in range(start, end) if i not in skipped]
            if idx.tolist() != want:
                problems.append(f"{name}: rows cover sample indices other than {start}..{end - 1}")
            for extra in ("images", "src_sha256"):  # optional datasets: their checksums too
                if extra in f:
                    f[extra][...]
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        problems.append(f"{name}: unreadable ({type(exc).__name__}: {exc})")
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
    warnings = (
        []
        if (cache_dir / "config.json").is_file()
        else ["config.json: missing (the settings the cache was encoded with); rerun the same encode command"]
    )
    mismatch = render_mismatch(manifest)
    if mismatch and "train" not in manifest.get("view_store", {}):
        warnings.append(f"views: this machine {mismatch}; training here is refused: {KEEP_VIEWS}")
    mismatch = None if manifest.get("image_cache", True) else decode_mismatch(manifest)
    if mismatch and "train" not in manifest.get("view_store", {}):
        warnings.append(f"images: this machine {mismatch}; training here is refused: {KEEP_VIEWS}")
    for path in sorted(p for p in cache_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(cache_dir).as_posix()
        if rel not in known:
            fate = "encode deletes it (an unfinished write)" if rel.endswith(".tmp") else "no manifest entry names it"
            warnings.append(f"{rel}: unknown file; {fate}")
    return warnings


def verify_sources(cache_dir: str | Path) -> list[str]:
    """``verify --deep``: re-hash every source image and name those whose bytes differ from what
    was encoded (the dataset must be where the cache was encoded from)."""
    from .reader import open_cache
    from .sources import changed_sources

    cache = open_cache(cache_dir)
    problems = []
    for split, info in cache.manifest["splits"].items():
        paths = [p for p, _ in cache.source_dataset(split, decoding=False).samples]
        problems += [
            f"{p}: changed since it was encoded (sha256 differs); re-encode with --overwrite"
            for p in changed_sources(cache.dir, info, paths, deep=True)
        ]
    return problems
