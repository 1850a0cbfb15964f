"""Training data from the cache: replay cached views in DataLoader workers.

Policy: each epoch visits every training row once, in an order and through one of its K
augmented views (1..K) drawn from ``SeedSequence([seed, epoch])``; evaluation uses view 0.
Workers only render pixels; labels and VLM embeddings are looked up in the main process.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..cache.reader import Cache, base_image
from ..data.views import ViewParams, render_view

_EPOCH_STREAM = 7


class PixelSource:
    """Base images of one cache split: the image cache in RAM, or decode + make_base."""

    def __init__(self, cache: Cache, split: str):
        self.images = cache.images(split)
        self.params = cache.view_params(split)
        self.image_size = int(cache.manifest["views"]["image_size"])
        self.base_size = int(cache.manifest["views"]["base_size"])
        self.dataset = cache.source_dataset(split) if self.images is None else None
        self.sample_index = cache.sample_index(split)

    def render(self, row: int, view: int) -> torch.Tensor:
        base = base_image(self.images, self.dataset, self.sample_index, row, self.base_size)
        return render_view(base, ViewParams.from_vector(self.params[row, view]), self.image_size)


class ReplayedViews(Dataset):
    """Item k -> (uint8 pixels of (rows[k], views[k]), k)."""

    def __init__(self, source: PixelSource, rows: np.ndarray, views: np.ndarray):
        self.source, self.rows, self.views = source, rows, views

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int):
        return self.source.render(int(self.rows[k]), int(self.views[k])), k


def epoch_plan(rows: np.ndarray, num_views: int, seed: int, epoch: int, rank: int = 0, world: int = 1
               ) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's (rows, views) for this rank: a seeded permutation, one augmented view each."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _EPOCH_STREAM, epoch]))
    order = rng.permutation(rows)
    k = num_views - 1
    views = rng.integers(1, k + 1, size=len(order)) if k > 0 else np.zeros(len(order), dtype=np.int64)
    usable = len(order) // world * world  # equal shares, or DDP ranks wait on each other forever
    return order[:usable][rank::world], views[:usable][rank::world]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_loader(source: PixelSource, rows: np.ndarray, views: np.ndarray, batch_size: int,
                workers: int, pin: bool, drop_last: bool = False) -> DataLoader:
    return DataLoader(ReplayedViews(source, rows, views), batch_size=batch_size, shuffle=False,
                      num_workers=workers, worker_init_fn=_worker_init, pin_memory=pin,
                      drop_last=drop_last and len(rows) > batch_size)
