"""Training data from the cache: replay cached views in DataLoader workers.

Policy: each epoch visits every training row once, in an order and through one of its K
augmented views (1..K) drawn from ``SeedSequence([seed, 7, epoch])``; evaluation uses view 0.
Workers only render pixels; labels and VLM embeddings are looked up on the device by the
``(split, row, view)`` index that travels with each batch.

One loader, one pool of workers for the whole run: the batches it serves (an epoch's plan, the
validation or the test rows) are set on its batch sampler before each pass, so workers stay alive
across epochs and across training and evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

from ..cache.reader import PixelSource
from ..data.workers import worker_options

_EPOCH_STREAM = 7
SPLITS = ("train", "test")  # split codes in a batch index: 0 = train, 1 = test


class ReplayedViews(Dataset):
    """Item ``(split, row, view)`` -> (uint8 pixels of that view, int64 tensor [split, row, view])."""

    def __init__(self, sources: Sequence[PixelSource]):
        self.sources = list(sources)

    def __len__(self) -> int:  # only batch samplers index this dataset
        return sum(len(s.params) for s in self.sources)

    def __getitem__(self, item):
        split, row, view = (int(v) for v in item)
        return self.sources[split].render(row, view), torch.tensor([split, row, view])

    def __getitems__(self, items: list) -> Batch | list:
        """A whole batch at once: from a view store, copied straight into one (shared) tensor."""
        index = torch.as_tensor(np.asarray(items, dtype=np.int64))
        source = self.sources[int(index[0, 0])]
        if source.store is None or not bool((index[:, 0] == index[0, 0]).all()):
            return [self[item] for item in items]
        pixels = torch.empty((len(items),) + source.store.shape[2:], dtype=torch.uint8)
        if get_worker_info() is not None:
            pixels.share_memory_()  # what default_collate does: no second copy on the way out
        out = pixels.numpy()
        for j, (row, view) in enumerate(index[:, 1:].tolist()):
            out[j] = source.store[row, view]
        return Batch(pixels, index)


class Batch(NamedTuple):
    pixels: torch.Tensor
    index: torch.Tensor


def collate(data):
    """Batches fetched whole pass through; lists of items are stacked as usual."""
    return tuple(data) if isinstance(data, Batch) else default_collate(data)


class PlannedBatches(Sampler):
    """Batches of ``(split, row, view)`` triples; the plan is replaced before each pass."""

    def __init__(self):
        self.batches: list[np.ndarray] = []

    def set_plan(
        self, split: int, rows: np.ndarray, views: np.ndarray, batch_size: int, drop_last: bool = False
    ) -> None:
        """Batches of the plan, in order."""
        triples = np.stack([np.full(len(rows), split), rows, views], axis=1).astype(np.int64)
        n = len(triples)
        stop = n - n % batch_size if drop_last and n > batch_size else n
        self.batches = [triples[i : min(i + batch_size, stop)] for i in range(0, stop, batch_size)]

    def __iter__(self) -> Iterator[list]:
        return iter([list(map(tuple, b)) for b in self.batches])

    def __len__(self) -> int:
        return len(self.batches)


def epoch_plan(
    rows: np.ndarray, num_views: int, seed: int, epoch: int, rank: int = 0, world: int = 1, skip: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's (rows, views) for this rank: a seeded permutation, one augmented view each,
    shared out to the ranks interleaved (so that the first n batches of every rank are a prefix
    of the plan). ``skip``: the plan's first ``skip`` images were trained already (by a saved
    part of the epoch, in any number of processes), and the rest is shared."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _EPOCH_STREAM, epoch]))
    order = rng.permutation(rows)
    k = num_views - 1
    views = rng.integers(1, k + 1, size=len(order)) if k > 0 else np.zeros(len(order), dtype=np.int64)
    order, views = order[skip:], views[skip:]
    usable = len(order) // world * world  # equal shares, or DDP ranks wait on each other forever
    return order[:usable][rank::world], views[:usable][rank::world]


def make_loader(sources: Sequence[PixelSource], workers: int, pin: bool) -> DataLoader:
    """The run's one loader; set its plan with ``loader.batch_sampler.set_plan(...)``.

    Its own generator keeps worker seeding off the global RNG, so a resumed run draws the same
    random numbers as an uninterrupted one whether or not the workers were already running.
    """
    return DataLoader(
        ReplayedViews(sources),
        batch_sampler=PlannedBatches(),
        collate_fn=collate,
        pin_memory=pin,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
        prefetch_factor=4 if workers > 0 else None,
        **worker_options(workers),
    )
