"""What ``encode`` feeds the VLM: each sample's replayable views, rendered in loader workers, in
batches that never cross a shard boundary, and embedded one batch behind the device.

A shard's rows are encoded in batches that start at the shard's first row, so its bytes do not
depend on which other shards are pending (resume) or which rank encodes it (torchrun).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .cache.sources import source_file
from .config import EncodeConfig
from .data.base import ImageDataset
from .data.views import make_base, render_view, sample_view_params
from .data.workers import worker_options
from .errors import BadImageError
from .io import sha256_file


class ViewDataset(Dataset):
    """Sample i -> its base image and the rendered views 0..V-1 (decode + render in workers)."""

    def __init__(self, ds: ImageDataset, cfg: EncodeConfig, num_views: int):
        self.ds, self.cfg, self.num_views = ds, cfg, num_views
        self.crop_fraction = cfg.image_size / cfg.base_size

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        cfg = self.cfg
        params = [
            sample_view_params(cfg.seed, i, v, cfg.view_preset, crop_fraction=self.crop_fraction)
            for v in range(self.num_views)
        ]
        error = ""
        try:
            base = make_base(self.ds.load_image(i), cfg.base_size)
        except BadImageError as exc:  # the main process decides: fail or skip
            base, error = torch.zeros(3, cfg.base_size, cfg.base_size, dtype=torch.uint8), str(exc)
        views = torch.stack([render_view(base, p, cfg.image_size) for p in params])
        path = source_file(self.ds.samples[i][0])
        src = sha256_file(Path(path)) if path and not error else ""  # what the pixels came from
        return {
            "index": i,
            "label": self.ds.samples[i][1],
            "views": views,
            "base": base,
            "params": torch.from_numpy(np.stack([p.to_vector() for p in params])),
            "error": error,
            "src": src,
        }


class ShardBatches(Sampler):
    """Batches of sample indices that never cross a shard boundary."""

    def __init__(self, shards: list[tuple[int, int, int]], per_batch: int):
        self.batches = [
            list(range(s, min(s + per_batch, e))) for _, start, e in shards for s in range(start, e, per_batch)
        ]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def view_loader(
    ds: ImageDataset, cfg: EncodeConfig, shards: list[tuple[int, int, int]], num_views: int, per_batch: int, pin: bool
) -> DataLoader:
    """Batches of ``per_batch`` samples of ``shards`` ``[(k, start, end)]``, in order."""
    return DataLoader(
        ViewDataset(ds, cfg, num_views),
        batch_sampler=ShardBatches(shards, per_batch),
        pin_memory=pin,
        persistent_workers=False,
        prefetch_factor=4 if cfg.workers > 0 else None,
        **worker_options(cfg.workers),
    )


def embedded_batches(loader: DataLoader, vlm, num_views: int) -> Iterator[tuple[dict, np.ndarray]]:
    """(batch, embeddings (b, V, D)) one batch behind the GPU: batch i+1 is queued on the device
    before the host waits for batch i, so the device does not idle while the host collects rows."""
    queued = None
    for batch in loader:
        result = vlm.encode_images_async(batch["views"].flatten(0, 1))
        if queued is not None:
            yield queued[0], queued[1]().view(len(queued[0]["index"]), num_views, -1).numpy()
        queued = (batch, result)
    if queued is not None:
        yield queued[0], queued[1]().view(len(queued[0]["index"]), num_views, -1).numpy()
