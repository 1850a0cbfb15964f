"""Cache manifest (format version 1): what was encoded, how, and which shards are complete.

The fingerprint hashes exactly the fields that change the cached numbers (dataset contents, VLM
weights, view settings, prompts, dtype); paths, times and shard layout are outside it.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..config import json_digest
from ..errors import CacheError
from ..io import atomic_write_json

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
    return json_digest(fields, 20)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def field_differences(old: dict, new: dict) -> list[str]:
    """Human-readable 'key: old -> new' lines for fingerprint fields that differ."""
    # as JSON, as the fingerprint sees them: a tuple of a new config equals the list it was saved as
    a, b = (_flatten(json.loads(json.dumps(fields))) for fields in (old, new))
    diffs = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            show = lambda v: (v[:12] + "...") if isinstance(v, str) and len(v) > 24 else v  # noqa: E731
            diffs.append(f"{k}: {show(a.get(k))!r} -> {show(b.get(k))!r}")
    return diffs


DIGESTS = "digests"  # section -> sha256 of its canonical JSON, written with every manifest
# Manifest fields that repeat a fingerprint field: (manifest path, fingerprint_fields path).
_DUPLICATES = [(("views", k), ("views", k)) for k in ("base_size", "image_size", "K", "seed")] + [
    (("views", "preset_settings"), ("views", "preset")),
    (("vlm", "weights_id"), ("vlm", "weights_id")),
    (("prompts", "templates"), ("prompts",)),
    (("dtype",), ("dtype",)),
    (("format_version",), ("format_version",)),
]


class ManifestDamaged(CacheError):
    """The manifest parses but disagrees with itself: edited or damaged after it was written."""


def section_digests(manifest: dict) -> dict[str, str]:
    """A digest per top-level section, so a damaged manifest names the section that changed."""
    return {k: json_digest(v) for k, v in sorted(manifest.items()) if k != DIGESTS}


def _get(d: dict, path: tuple) -> Any:
    for k in path:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def manifest_damage(manifest: dict) -> str | None:
    """The first way ``manifest`` disagrees with itself (digests, fingerprint, duplicated fields),
    or None when it is intact."""
    saved = manifest.get(DIGESTS)
    if not isinstance(saved, dict):
        return f"section {DIGESTS!r} is missing (written by an older dait-cache, or damaged)"
    now = section_digests(manifest)
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            state = "is missing" if key not in now else "is new" if key not in saved else "was changed"
            return f"field {key!r} {state} since encode wrote it (its digest does not match)"
    fields = manifest.get("fingerprint_fields")
    if not isinstance(fields, dict) or fingerprint(fields) != manifest.get("fingerprint"):
        return "field 'fingerprint' does not match the fingerprint of 'fingerprint_fields'"
    for here, there in _DUPLICATES:
        if _get(manifest, here) != _get(fields, there):
            return (
                f"field {'.'.join(here)!r} ({_get(manifest, here)!r}) disagrees with fingerprint_fields."
                f"{'.'.join(there)} ({_get(fields, there)!r})"
            )
    return None


# encode options that change what is cached, in the order a user reads them; flags separately
_ENCODE_OPTIONS = (
    "dataset",
    "data_root",
    "vlm",
    "pretrained",
    "views",
    "view_preset",
    "image_size",
    "base_size",
    "seed",
    "shard_size",
    "prompts",
    "on_bad_image",
)
# config key -> (value that needs the flag, the flag, the value when config.json predates the key)
_ENCODE_FLAGS = {
    "image_cache": (False, "--no-image-cache", True),
    "crop_banner": (True, "--crop-banner", False),
    "exif_orientation": (False, "--no-exif-orientation", False),
    "store_views": (True, "--store-views", False),
}


def encode_command(cache_dir: Path) -> str:
    """The ``dait-cache encode`` command that (re)builds this cache, from its ``config.json``."""
    try:
        cfg = json.loads((Path(cache_dir) / "config.json").read_text(encoding="utf-8"))
        parts = ["dait-cache", "--workdir", str(cfg["workdir"]), "encode"]
        for key in _ENCODE_OPTIONS:
            if cfg.get(key) is not None:
                parts += ["--" + key.replace("_", "-"), str(cfg[key])]
        parts += [flag for key, (when, flag, before) in _ENCODE_FLAGS.items() if cfg.get(key, before) is when]
    except (OSError, ValueError, KeyError, TypeError):
        return "rerun the `dait-cache encode` command that built this cache"
    return f"`{shlex.join(parts)}`"


def read_manifest(cache_dir: Path, repair: str | None = None) -> dict:
    """The manifest of ``cache_dir``, checked against itself; a refusal ends with the command
    that repairs it (``repair``, else the cache's own encode command)."""
    path = Path(cache_dir) / MANIFEST
    fix = lambda: repair or encode_command(cache_dir)  # noqa: E731 - read config.json only on failure
    if not path.is_file():
        raise CacheError(f"no cache at {cache_dir} (missing {MANIFEST}); run `dait-cache encode` first")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestDamaged(f"{path} is not valid JSON ({exc}); repair: {fix()}") from None
    if not isinstance(m, dict):
        raise ManifestDamaged(f"{path} is not a manifest (a JSON {type(m).__name__}); repair: {fix()}")
    damage = manifest_damage(m)
    if m.get("format_version") != FORMAT_VERSION and (damage is None or DIGESTS not in m):
        raise CacheError(
            f"{path} has format version {m.get('format_version')}, this tool reads "
            f"{FORMAT_VERSION}; re-encode with --overwrite"
        )
    if damage is not None:
        raise ManifestDamaged(
            f"{path}: {damage}; repair: {fix()} (rebuilds the manifest, keeping the shards that check out)"
        )
    return m


def write_manifest(cache_dir: Path, manifest: dict) -> None:
    manifest.pop(DIGESTS, None)
    manifest[DIGESTS] = section_digests(manifest)
    atomic_write_json(Path(cache_dir) / MANIFEST, manifest)


def is_complete(manifest: dict) -> bool:
    """True when the text embeddings and every planned shard of every split are complete."""
    if manifest.get("text", {}).get("state") != "complete":
        return False
    for split in manifest["splits"].values():
        if split.get("num_shards") != len(split["shards"]):
            return False
        if any(s["state"] != "complete" for s in split["shards"]):
            return False
    return True
