"""Building and reconciling a cache's manifest: the row plan, the fingerprint, which shards on
disk can be trusted (resume), the shards still to encode and how a finished shard is recorded."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from .. import __version__
from ..config import EncodeConfig
from ..data.base import ImageDataset
from ..data.views import PARAM_NAMES, decode_probe, decoder_version, get_preset, render_probe
from ..dist import barrier
from ..errors import CacheError, DaitError
from ..io import sha256_file
from ..locks import live_readers
from .manifest import (
    FORMAT_VERSION,
    TEXT_FILE,
    ManifestDamaged,
    field_differences,
    fingerprint,
    is_complete,
    read_manifest,
    samples_hash,
)
from .reader import decode_mismatch, render_mismatch
from .shards import read_attrs
from .sources import changed_sources, file_stats, source_file
from .verify import check_shard

log = logging.getLogger(__name__)


def _split_record(ds: ImageDataset, num_views: int, shard_size: int) -> dict:
    root = Path(ds.root)
    rel = [(os.path.relpath(p, root) if ds.root and source_file(p) else p, y) for p, y in ds.samples]
    return {
        "size": len(ds),
        "num_views": num_views,
        "samples_hash": samples_hash(rel),
        "num_shards": -(-len(ds) // shard_size),
        "shards": [],
        "skipped": [],
        "source_stat": file_stats([p for p, _ in ds.samples]),
    }


def dataset_kind(dataset: str) -> str:
    """The dataset's path-free identity (``folder:<path>`` -> ``folder``)."""
    return "folder" if dataset.startswith("folder:") else dataset


def build_manifest(cfg: EncodeConfig, datasets: dict[str, ImageDataset], templates: list[str], weights_id: str) -> dict:
    """The manifest skeleton (no shards yet) and its fingerprint; ``templates`` are the class
    prompts and ``weights_id`` identifies the VLM's weights."""
    train = datasets["train"]
    preset = get_preset(cfg.view_preset)
    splits = {
        "train": _split_record(train, cfg.views + 1, cfg.shard_size),
        "test": _split_record(datasets["test"], 1, cfg.shard_size),
    }
    fp_fields = _fingerprint_fields(cfg, train.class_names, splits, templates, weights_id)
    return {
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "fingerprint": fingerprint(fp_fields),
        "fingerprint_fields": fp_fields,
        "dataset": {
            "name": cfg.dataset,
            "data_root": str(Path(cfg.data_root).resolve()),
            "num_classes": len(train.class_names),
        },
        "vlm": {"name": cfg.vlm, "pretrained": cfg.pretrained, "weights_id": fp_fields["vlm"]["weights_id"]},
        "views": {
            "base_size": cfg.base_size,
            "image_size": cfg.image_size,
            "preset": cfg.view_preset,
            "preset_settings": preset.as_dict(),
            "K": cfg.views,
            "seed": cfg.seed,
            "param_names": list(PARAM_NAMES),
            "render_probe": render_probe(),
            "decode_probe": decode_probe(),
            "decoder": decoder_version(),
        },
        "prompts": {"mode": cfg.prompts, "templates": templates},
        "dtype": "float16",
        "shard_size": cfg.shard_size,
        "image_cache": cfg.image_cache,
        "text": {"path": TEXT_FILE, "state": "pending"},
        "splits": splits,
    }


def _fingerprint_fields(
    cfg: EncodeConfig, class_names: list[str], splits: dict, templates: list[str], weights_id: str
) -> dict:
    """What the cache's fingerprint hashes: everything that changes a cached byte's meaning."""
    return {
        "format_version": FORMAT_VERSION,
        "dataset": {
            "name": dataset_kind(cfg.dataset),
            "class_names": samples_hash((c, i) for i, c in enumerate(class_names)),
            "crop_banner": cfg.crop_banner,
            # only when set, so caches from before the option keep their fingerprint
            **({"exif_orientation": True} if cfg.exif_orientation else {}),
            **{s: {"size": r["size"], "samples_hash": r["samples_hash"]} for s, r in splits.items()},
        },
        "vlm": {"name": cfg.vlm if not cfg.vlm.startswith("local-dir:") else "local-dir", "weights_id": weights_id},
        "views": {
            "base_size": cfg.base_size,
            "image_size": cfg.image_size,
            "preset": get_preset(cfg.view_preset).as_dict(),
            "K": cfg.views,
            "seed": cfg.seed,
        },
        "prompts": templates,
        "dtype": "float16",
    }


class OtherSettings(CacheError):
    """The cache folder holds a cache of other settings or inputs; ``diffs`` names each."""

    def __init__(self, message: str, diffs: list[str]):
        super().__init__(message)
        self.diffs = diffs


def refuse_if_read(cache_dir: Path) -> None:
    """``--overwrite`` deletes the cache: not while a training reads it (its next shard would be gone)."""
    readers = live_readers(cache_dir)
    if readers:
        first = readers[0]
        raise DaitError(
            f"{cache_dir} is being read by {first.get('what', 'a run')} (process {first.get('pid', '?')} on "
            f"{first.get('host', '?')}{f', and {len(readers) - 1} more' if len(readers) > 1 else ''}); "
            f"wait for it to finish or stop it, then rerun with --overwrite (if that process no longer "
            f"runs, delete {first['file']})"
        )


def _machine_mismatch(manifest: dict) -> str | None:
    """How this machine would make other pixels than the one that encoded the manifest's shards:
    it renders otherwise, or decodes otherwise where base images are made again (without the
    image cache; with it, every row's base image is kept as it was decoded)."""
    return render_mismatch(manifest) or (None if manifest.get("image_cache", True) else decode_mismatch(manifest))


def check_existing(cache_dir: Path, new: dict, cfg: EncodeConfig, datasets: dict) -> dict | None:
    """The existing manifest if it can be resumed; refuse (or wipe with --overwrite) otherwise:
    other settings, or source images whose bytes changed since they were encoded."""
    if not (cache_dir / "manifest.json").exists():
        return None
    try:
        old = read_manifest(cache_dir)
        layout_differs = (old["shard_size"], old["image_cache"]) != (cfg.shard_size, cfg.image_cache)
        diffs = field_differences(old["fingerprint_fields"], new["fingerprint_fields"])
    except ManifestDamaged as exc:
        # A damaged manifest is rebuilt, as a lost one is: shards are adopted only when their
        # content checks out against the row plan (see shard_done).
        log.warning("%s", str(exc).split("; repair:")[0] + "; rebuilding it")
        return None
    except (CacheError, KeyError) as exc:
        missing = isinstance(exc, KeyError)  # a manifest of another dait-cache version
        why = (
            f"its manifest has no field {exc} (written by another version?)"
            if missing
            else f"unreadable manifest ({exc})"
        )
        old, layout_differs, diffs = None, False, [why]
    if old is not None and old["fingerprint"] == new["fingerprint"] and not layout_differs:
        changed = [
            p
            for split, ds in datasets.items()
            for p in changed_sources(
                cache_dir, old["splits"][split], [q for q, _ in ds.samples], new["splits"][split]["source_stat"]
            )
        ]
        mismatch = None if is_complete(old) else _machine_mismatch(old)
        if not changed and not mismatch:
            return old
        diffs = [f"it was begun on a machine that {mismatch}"] if mismatch else []
        if changed:
            diffs.append(f"{len(changed)} source image(s) changed since they were encoded (first: {changed[0]})")
    if cfg.overwrite:
        refuse_if_read(cache_dir)
        shutil.rmtree(cache_dir)
        return None
    if layout_differs and not diffs:
        diffs = [
            f"shard_size/image_cache: {(old['shard_size'], old['image_cache'])} -> {(cfg.shard_size, cfg.image_cache)}"
        ]
    keep = (
        ", --no-exif-orientation to keep it as it was encoded (before that option),"
        if any(d.startswith("dataset.exif_orientation: None") for d in diffs)
        else ""
    )
    raise OtherSettings(
        f"{cache_dir} holds a cache built with other settings or inputs ({'; '.join(diffs[:4])}); "
        f"pass --overwrite to replace it{keep} or use another --workdir",
        diffs,
    )


def shard_path(split: str, k: int) -> str:
    return f"{split}/shard-{k:05d}.h5"


def shard_done(cache_dir: Path, rel: str, fp: str, start: int, end: int, known_sha: str | None, num_views: int) -> bool:
    """A shard at its final name was renamed into place whole; trust it if it still matches."""
    path = cache_dir / rel
    if not path.is_file():
        return False
    if known_sha is not None:
        return sha256_file(path) == known_sha
    # No manifest entry (lost or damaged manifest, or a crash before recording): adopt the file
    # only if its whole content checks out against this shard's place in the row plan.
    try:
        attrs = read_attrs(path)
        skipped = {s["sample_index"] for s in json.loads(attrs.get("skipped", "[]"))}
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if attrs.get("fingerprint") != fp or (attrs.get("row_start"), attrs.get("row_end")) != (start, end):
        return False
    return not check_shard(path, rel, (start, end), fp, num_views, None, skipped)


def record_shard(cache_dir: Path, manifest: dict, split: str, k: int, start: int, end: int) -> None:
    """Mark shard ``k`` of ``split`` (rows ``start:end``) complete in ``manifest``: its sha256 and the images it skipped."""
    rel = shard_path(split, k)
    attrs = read_attrs(cache_dir / rel)
    info = manifest["splits"][split]
    info["shards"] = [s for s in info["shards"] if s["path"] != rel]
    info["shards"].append(
        {"path": rel, "rows": [start, end], "sha256": sha256_file(cache_dir / rel), "state": "complete"}
    )
    info["shards"].sort(key=lambda s: s["rows"][0])
    info["skipped"] = [s for s in info["skipped"] if not start <= s["sample_index"] < end]
    info["skipped"] += json.loads(attrs.get("skipped", "[]"))
    info["skipped"].sort(key=lambda s: s["sample_index"])


def reconcile(cache_dir: Path, manifest: dict, cfg: EncodeConfig, datasets: dict, dist) -> dict | None:
    """Carry over what an existing, matching manifest records; refuse (or wipe) a mismatch."""
    old = check_existing(cache_dir, manifest, cfg, datasets) if dist.is_main else None
    barrier(dist)
    if old is None and dist.multi and (cache_dir / "manifest.json").exists():
        try:
            old = read_manifest(cache_dir)
        except ManifestDamaged:
            old = None
    if old is not None:
        manifest["created"], manifest["text"] = old["created"], old["text"]
        for split in manifest["splits"]:
            manifest["splits"][split]["shards"] = old["splits"][split]["shards"]
            manifest["splits"][split]["skipped"] = old["splits"][split].get("skipped", [])
        if has_shards(old):
            _keep_encoding_machine(manifest, old)
    return old


# What the manifest says about the machine that encoded the shards: a replay elsewhere is
# judged against it, so a rerun on another machine must not write its own over it.
MACHINE_FIELDS = ("render_probe", "decode_probe", "decoder")


def has_shards(manifest: dict) -> bool:
    return any(info["shards"] for info in manifest["splits"].values())


def _keep_encoding_machine(manifest: dict, old: dict) -> None:
    """The shards already there keep the probes of the machine that encoded them, and the view
    store rendered from them (its pixels follow from the fingerprinted base images and views)."""
    for key in MACHINE_FIELDS:
        if key in old["views"]:
            manifest["views"][key] = old["views"][key]
        else:  # encoded before the probes came in: still unknown
            manifest["views"].pop(key, None)
    if "view_store" in old:
        manifest["view_store"] = old["view_store"]


def refuse_repair_elsewhere(cache_dir: Path, old: dict | None, plan: dict) -> None:
    """Shards encoded here beside shards a machine that renders (or decodes) otherwise encoded
    would hold embeddings of other pixels than a replay gives; an unfinished cache is refused
    earlier (:func:`check_existing`), this covers the repair of a finished one."""
    if old is None or not has_shards(old) or not any(plan.values()):
        return
    mismatch = _machine_mismatch(old)
    if mismatch:
        raise CacheError(
            f"{cache_dir} has shards to encode again, and it was encoded on a machine that {mismatch}; "
            f"rerun the encode command on such a machine to repair it, or delete {cache_dir} and encode it here"
        )


def plan_shards(cache_dir: Path, manifest: dict, datasets: dict, shard_size: int, dist) -> dict:
    """split -> shards still to encode ``[(k, start, end)]``; records complete but unrecorded ones."""
    fp, plan = manifest["fingerprint"], {}
    for split, ds in datasets.items():
        known = {s["path"]: s.get("sha256") for s in manifest["splits"][split]["shards"]}
        shards = [(k, s, min(s + shard_size, len(ds))) for k, s in enumerate(range(0, len(ds), shard_size))]
        plan[split] = [
            (k, s, e)
            for k, s, e in shards
            if not shard_done(
                cache_dir,
                shard_path(split, k),
                fp,
                s,
                e,
                known.get(shard_path(split, k)),
                manifest["splits"][split]["num_views"],
            )
        ]
        if dist.is_main:  # shards renamed into place before a crash could record them
            for k, s, e in shards:
                if (k, s, e) not in plan[split] and shard_path(split, k) not in known:
                    record_shard(cache_dir, manifest, split, k, s, e)
    return plan


def text_complete(cache_dir: Path, old: dict | None) -> bool:
    """The text embeddings of an earlier run are in place and intact."""
    return (
        old is not None
        and old["text"].get("state") == "complete"
        and (cache_dir / TEXT_FILE).is_file()
        and sha256_file(cache_dir / TEXT_FILE) == old["text"].get("sha256")
    )
