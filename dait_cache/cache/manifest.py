"""Cache manifest (format version 1): what was encoded, how, and which shards are complete.

The fingerprint hashes exactly the fields that change the cached numbers (dataset contents, VLM
weights, view settings, prompts, dtype); paths, times and shard layout are outside it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from ..config import atomic_write_json
from ..errors import CacheError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TEXT_FILE = "text.h5"


def samples_hash(rows: Iterable[tuple[str, int]]) -> str:
    """Hash of the ordered (relative path, label) list: the identity of a split."""
    h = hashlib.sha256()
    for path, label in rows:
        h.update(f"{path}\t{label}\n".encode())
    return h.hexdigest()


def fingerprint(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def field_differences(old: dict, new: dict) -> list[str]:
    """Human-readable 'key: old -> new' lines for fingerprint fields that differ."""
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            show = lambda v: (v[:12] + "...") if isinstance(v, str) and len(v) > 24 else v  # noqa: E731
            diffs.append(f"{k}: {show(a.get(k))!r} -> {show(b.get(k))!r}")
    return diffs


def read_manifest(cache_dir: Path) -> dict:
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        raise CacheError(f"no cache at {cache_dir} (missing {MANIFEST}); run `dait-cache encode` first")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CacheError(f"{path} is not valid JSON ({exc}); rerun `dait-cache encode` to repair") from None
    if m.get("format_version") != FORMAT_VERSION:
        raise CacheError(f"{path} has format version {m.get('format_version')}, this tool reads "
                         f"{FORMAT_VERSION}; re-encode with --overwrite")
    return m


def write_manifest(cache_dir: Path, manifest: dict) -> None:
    atomic_write_json(Path(cache_dir) / MANIFEST, manifest)


def is_complete(manifest: dict) -> bool:
    if manifest.get("text", {}).get("state") != "complete":
        return False
    for split in manifest["splits"].values():
        if split.get("num_shards") != len(split["shards"]):
            return False
        if any(s["state"] != "complete" for s in split["shards"]):
            return False
    return True
