"""Phase 1: run the frozen VLM once over replayable views and write the HDF5 cache.

Work is split into shards of ``shard_size`` samples; each shard is encoded in batches that start
at the shard's first row, so a shard's bytes do not depend on which other shards are pending
(resume) or which rank encodes it (torchrun).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .cache.build import (
    build_manifest,
    dataset_kind,
    plan_shards,
    reconcile,
    record_shard,
    refuse_repair_elsewhere,
    shard_path,
    text_complete,
)
from .cache.manifest import MANIFEST, TEXT_FILE, write_manifest
from .cache.reader import open_cache
from .cache.shards import ShardWriter, write_h5_atomic, write_shard
from .cache.view_store import StoreStager, build_view_store, has_store, store_bytes
from .config import EncodeConfig, prefixed_path, save_config
from .data import aircraft, load_dataset, wait_for_download
from .data.base import ImageDataset
from .data.views import DECODE_DIFFERS, PROBE_DIFFERS, decode_probe, render_probe
from .dist import all_reduce_sum, barrier, current
from .encode_loader import embedded_batches, view_loader
from .errors import DaitError
from .io import remove_stale_temps, sha256_file, to_jsonable
from .locks import encode_lock, exclusive
from .presets import resolve_encode_config
from .progress import Progress
from .provenance import provenance
from .seeding import check_seed
from .vlm import VLM, check_vlm_name, load_vlm, prompt_templates, resolve_device, weights_id

log = logging.getLogger(__name__)


@dataclass
class EncodeResult:
    cache_dir: Path
    up_to_date: bool
    views_encoded: int
    seconds: float
    size_bytes: int
    zero_shot_top1: float
    skipped: int

    @property
    def views_per_second(self) -> float:
        return self.views_encoded / self.seconds if self.seconds > 0 else 0.0


def _encode_text(vlm, cache_dir: Path, class_names: list[str], templates: list[str], fp: str) -> None:
    prompts = [t.format(c) for c in class_names for t in templates]
    emb = vlm.encode_texts(prompts).numpy().reshape(len(class_names), len(templates), -1)
    write_h5_atomic(
        cache_dir / TEXT_FILE,
        {"text_emb": emb.astype(np.float32)},
        {"fingerprint": fp},
        strings={"class_names": class_names, "templates": templates},
    )


def _batch_rows(
    batch: dict, emb: np.ndarray, ds: ImageDataset, cfg: EncodeConfig, skipped: list, stager: StoreStager | None
) -> list[dict]:
    """The shard rows of one encoded batch (their views go to ``stager``, when one keeps them); a
    sample that failed to decode is skipped (recorded in ``skipped``) or, unless
    ``--on-bad-image skip``, stops the encode."""
    rows = []
    for j in range(len(batch["index"])):
        i = int(batch["index"][j])
        if batch["error"][j]:
            if cfg.on_bad_image != "skip":
                raise DaitError(batch["error"][j])
            skipped.append({"sample_index": i, "path": ds.samples[i][0], "reason": batch["error"][j]})
            continue
        if stager is not None:
            stager.put(i, batch["views"][j])
        rows.append(
            {
                "index": i,
                "label": int(batch["label"][j]),
                "emb": emb[j],
                "params": batch["params"][j].numpy(),
                "base": batch["base"][j].permute(1, 2, 0).numpy(),
                "src": batch["src"][j],
            }
        )
    return rows


def _encode_split(
    vlm,
    ds: ImageDataset,
    cfg: EncodeConfig,
    split: str,
    pending: list,
    num_views: int,
    fp: str,
    writer: ShardWriter,
    on_shard: Callable,
    progress: Progress | None,
    stager: StoreStager | None = None,
) -> int:
    """Encode the pending shards ``[(k, start, end)]`` one by one; return the number of views
    encoded. ``stager`` also keeps each sample's views for the view store."""
    if not pending:
        return 0
    writer.drain()
    per_batch = max(1, cfg.batch_size // num_views)
    loader = view_loader(ds, cfg, pending, num_views, per_batch, pin=vlm.device.type == "cuda")
    batches = embedded_batches(loader, vlm, num_views)
    total, done = sum(e - s for _, s, e in pending) * num_views, 0
    for k, start, end in pending:
        rows, skipped = [], []
        for _ in range(-(-(end - start) // per_batch)):  # this shard's batches
            batch, emb = next(batches)
            rows += _batch_rows(batch, emb, ds, cfg, skipped, stager)
            done += len(batch["index"]) * num_views
            if progress:
                progress(split, done, total)
            if stager is not None:
                stager.report(progress)
        if not rows:
            raise DaitError(f"{split} shard {k}: every image failed to decode; check the dataset")

        def job(rows=rows, skipped=skipped, k=k, start=start, end=end):  # this shard's values, bound now
            write_shard(cfg.cache_dir, shard_path(split, k), rows, fp, start, end, cfg.image_cache, skipped)
            on_shard(split, k, start, end, skipped)

        writer.submit(job)
    return done


def _probe_input_size(vlm, image_size: int) -> None:
    """Fail before any work when the VLM cannot take ``image_size`` views (fixed-size ViTs)."""
    try:
        vlm.encode_images(torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8))
    except (RuntimeError, AssertionError) as exc:
        raise DaitError(
            f"VLM {vlm.name} cannot encode {image_size}px views ({str(exc)[:120]}); it was "
            f"built for {vlm.native_size}px: pass --image-size {vlm.native_size}"
        ) from None


def manifest_for(cfg: EncodeConfig, datasets: dict[str, ImageDataset]) -> dict:
    """The manifest skeleton of ``cfg``: its prompts and VLM weights identity, resolved here."""
    return build_manifest(
        cfg, datasets, prompt_templates(dataset_kind(cfg.dataset), cfg.prompts), weights_id(cfg.vlm, cfg.pretrained)
    )


def _validate(cfg: EncodeConfig) -> EncodeConfig:
    """Refuse contradictory settings before any work; resolve paths later commands must find."""
    if cfg.on_bad_image not in ("fail", "skip"):
        raise DaitError(f"--on-bad-image must be fail or skip, not {cfg.on_bad_image!r}")
    if cfg.image_size > cfg.base_size:
        raise DaitError(f"--image-size {cfg.image_size} exceeds --base-size {cfg.base_size}")
    if cfg.crop_banner and cfg.dataset != "aircraft":
        raise DaitError("--crop-banner only applies to --dataset aircraft")
    check_seed(cfg.seed)
    check_vlm_name(cfg.vlm, cfg.pretrained)  # before the workspace gains a folder
    resolve_device(cfg.device)
    if cfg.dataset.startswith("folder:"):  # later commands must find it from any directory
        cfg = replace(cfg, dataset="folder:" + str(prefixed_path(cfg.dataset, "folder").resolve()))
    return cfg


def _check_same_rendering(dist, image_cache: bool) -> None:
    """Every process must render views alike (one render probe), or its shards would hold the
    embeddings of other pixels than a replay gives: a torchrun over machines of mixed CPUs.
    Without the image cache a replay decodes the images again, so they must decode alike too."""
    if not dist.multi:
        return
    probes = [("render views", "render", render_probe(), PROBE_DIFFERS)]
    if not image_cache:
        probes.append(("decode images", "decode", decode_probe(), DECODE_DIFFERS))
    for what, kind, probe, why in probes:
        mine = int(probe, 16) % (1 << 40)  # small enough to sum over the group in int64
        if all_reduce_sum(int(all_reduce_sum(mine, dist) != dist.world * mine), dist):
            raise DaitError(
                f"the {dist.world} encode processes do not {what} alike (their {kind} probes differ; "
                f"this one's is {probe}: {why}); run encode on machines of one kind, or in one process"
            )


def _finish(
    cfg: EncodeConfig,
    up_to_date: bool,
    views: int,
    t0: float,
    manifest: dict,
    dist,
    progress: Progress | None,
    stagers: dict | None = None,
) -> EncodeResult:
    """Complete the view store when asked (rank 0), then describe the complete cache."""
    cache = open_cache(cfg.cache_dir)
    for stager in (stagers or {}).values():  # what encode kept; a split it could not fill is built
        stager.finish(cache)
    built = False
    # Every process takes the same branch (it holds a barrier). Rank 0 builds the store, so a
    # process that looked after it had would find it built and skip the barrier: decide together.
    if all_reduce_sum(int(cfg.store_views and not has_store(cache.dir, cache.manifest)), dist):
        if dist.is_main:
            gb = store_bytes(cache.manifest) / 1e9
            report = (lambda task, done, total: progress(f"{task} ({gb:.2f} GB)", done, total)) if progress else None
            build_view_store(cache, cfg.workers, report)
            built = True
        barrier(dist)
        cache = open_cache(cfg.cache_dir)
    return EncodeResult(
        cfg.cache_dir,
        up_to_date and not built,
        views,
        time.perf_counter() - t0,
        cache.size_bytes(),
        cache.zero_shot_top1(),
        sum(len(s["skipped"]) for s in manifest["splits"].values()),
    )


def _load_datasets(cfg: EncodeConfig, progress: Progress | None = None) -> dict[str, ImageDataset]:
    dist = current()
    # Each machine's first process fetches (a --data-root shared by machines gets the first
    # complete copy; the others are dropped). A collective would time out on a long download
    # (NCCL's 10 minutes): the other processes watch for the folder it renames into place, and
    # torchrun stops them if the fetching process fails.
    fetches = cfg.download and dist.local_rank == 0
    if cfg.download and not fetches:
        wait_for_download(cfg.dataset, cfg.data_root)
    datasets = {
        s: load_dataset(cfg.dataset, cfg.data_root, s, download=fetches, progress=progress) for s in ("train", "test")
    }
    for ds in datasets.values():
        ds.crop_bottom = aircraft.BANNER_PX if cfg.crop_banner else 0
        ds.exif_orientation = cfg.exif_orientation
    return datasets


def _ready_vlm(cfg: EncodeConfig, vlm: VLM | None, manifest: dict) -> VLM:
    """The VLM of ``cfg`` (loaded unless passed in, then checked against the settings), shown to
    take the views' size."""
    if vlm is None:
        vlm = load_vlm(cfg.vlm, cfg.pretrained, cfg.device)
    elif (vlm.name, vlm.weights_id) != (cfg.vlm, manifest["vlm"]["weights_id"]):
        raise DaitError(
            f"the VLM passed in is {vlm.name} ({vlm.weights_id}), but the settings ask for "
            f"{cfg.vlm} ({manifest['vlm']['weights_id']})"
        )
    _probe_input_size(vlm, cfg.image_size)
    return vlm


def _start(cfg: EncodeConfig, vlm: VLM, manifest: dict, datasets: dict, text_ok: bool, dist) -> VLM:
    """The ready VLM (:func:`_ready_vlm`) compiled if asked, the text embeddings and the
    manifest's first version."""
    if cfg.compile:
        vlm.compile()
    manifest["vlm"].update(logit_scale=vlm.logit_scale, embed_dim=vlm.embed_dim, mean=list(vlm.mean), std=list(vlm.std))
    cache_dir = cfg.cache_dir
    if dist.is_main:
        cache_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(cache_dir, recursive=True)  # writes that never reached their rename
        save_config({**to_jsonable(cfg), "provenance": provenance(cfg.workdir, str(vlm.device))}, cache_dir)
        if not text_ok:
            fp = manifest["fingerprint"]
            _encode_text(vlm, cache_dir, datasets["train"].class_names, manifest["prompts"]["templates"], fp)
        manifest["text"] = {"path": TEXT_FILE, "sha256": sha256_file(cache_dir / TEXT_FILE), "state": "complete"}
        write_manifest(cache_dir, manifest)
    barrier(dist)
    return vlm


def _stagers(cfg: EncodeConfig, datasets: dict, plan: dict, manifest: dict, dist) -> dict[str, StoreStager]:
    """The view store kept while encoding, for each split encoded whole by this one process;
    other splits (a resumed encode, several ranks) are rendered again once the cache is done."""
    stagers: dict[str, StoreStager] = {}
    if not cfg.store_views or dist.multi:
        return stagers
    try:
        for split, ds in datasets.items():
            if len(plan[split]) == -(-len(ds) // cfg.shard_size):
                views = manifest["splits"][split]["num_views"]
                stagers[split] = StoreStager(cfg.cache_dir, split, len(ds), views, cfg.image_size)
    except BaseException:  # e.g. no room for the next split's store
        for stager in stagers.values():
            stager.discard()
        raise
    return stagers


def _encode_shards(
    vlm: VLM,
    cfg: EncodeConfig,
    datasets: dict,
    plan: dict,
    manifest: dict,
    dist,
    progress: Progress | None,
    stagers: dict | None = None,
) -> int:
    """Encode this rank's shards (a background thread writes them); rank 0 records every rank's
    shards in the manifest. Returns the views this rank encoded."""
    cache_dir = cfg.cache_dir

    def on_shard(split, k, start, end, skipped):
        if not dist.multi:  # one writer: keep the manifest current for resume
            record_shard(cache_dir, manifest, split, k, start, end)
            write_manifest(cache_dir, manifest)

    encoded = 0
    writer = ShardWriter()
    try:
        for split, ds in datasets.items():
            mine = [p for p in plan[split] if p[0] % dist.world == dist.rank]
            num_views = manifest["splits"][split]["num_views"]
            encoded += _encode_split(
                vlm, ds, cfg, split, mine, num_views, manifest["fingerprint"], writer, on_shard, progress,
                (stagers or {}).get(split),
            )  # fmt: skip
    finally:
        writer.close()
    barrier(dist)
    if dist.multi and dist.is_main:
        for split in datasets:
            for k, s, e in plan[split]:
                record_shard(cache_dir, manifest, split, k, s, e)
        write_manifest(cache_dir, manifest)
    barrier(dist)
    return encoded


def encode(cfg: EncodeConfig, progress: Progress | None = None, vlm: VLM | None = None) -> EncodeResult:
    """Encode (or resume, or confirm) the cache of ``cfg.dataset`` under ``cfg.workdir``.

    Phases: validate -> reconcile the manifest and plan the shards -> the VLM and the text
    embeddings -> encode the shards -> finish (verify, zero-shot, view store).
    ``vlm``: an already loaded :class:`~dait_cache.vlm.VLM` for ``cfg.vlm`` / ``cfg.pretrained``
    (to encode several datasets with one model); loaded here when None.
    Under torchrun, the caller owns the process group (:func:`dait_cache.dist.process_group`);
    shards are dealt round-robin to ranks and rank 0 writes the manifest.
    """
    cfg = _validate(resolve_encode_config(cfg))
    t0 = time.perf_counter()
    datasets = _load_datasets(cfg, progress)
    manifest = manifest_for(cfg, datasets)
    cache_dir, dist = cfg.cache_dir, current()
    _check_same_rendering(dist, cfg.image_cache)
    # --overwrite may delete the cache it finds: not for a VLM that then fails to load, or that
    # is not the one the settings name
    ready = cfg.overwrite and (cache_dir / MANIFEST).exists()
    if ready:
        vlm = _ready_vlm(cfg, vlm, manifest)
    with exclusive(encode_lock(cache_dir), f"cache {cache_dir}", held=dist.is_main):
        old = reconcile(cache_dir, manifest, cfg, datasets, dist)
        plan = plan_shards(cache_dir, manifest, datasets, cfg.shard_size, dist)
        refuse_repair_elsewhere(cache_dir, old, plan)
        text_ok = text_complete(cache_dir, old)
        if text_ok and not any(plan.values()):  # nothing to do
            if dist.is_main and manifest["splits"] != old["splits"]:
                write_manifest(cache_dir, manifest)
            barrier(dist)
            return _finish(cfg, True, 0, t0, manifest, dist, progress)
        vlm = _start(cfg, vlm if ready else _ready_vlm(cfg, vlm, manifest), manifest, datasets, text_ok, dist)
        stagers = _stagers(cfg, datasets, plan, manifest, dist)
        try:
            encoded = _encode_shards(vlm, cfg, datasets, plan, manifest, dist, progress, stagers)
        except BaseException:
            for stager in stagers.values():  # a rerun resumes from the shards and renders the store
                stager.discard()
            raise
        return _finish(cfg, False, all_reduce_sum(encoded, dist), t0, manifest, dist, progress, stagers)
