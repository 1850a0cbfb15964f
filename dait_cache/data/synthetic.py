"""The ``synthetic`` dataset: the world's 24-class task, drawn in process, no files."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import world
from .base import ImageDataset

WORLD_SEED = 20261126  # fixed: the dataset is part of the tool, not a per-run choice
PER_CLASS = {"train": 40, "test": 20}
_SPLIT_CODE = {"train": 0, "test": 1}


@dataclass
class SyntheticDataset(ImageDataset):
    """Sample ``i`` is class ``i % C``, drawn from a generator seeded by (world, split, i)."""

    def load_image(self, i: int) -> Image.Image:
        label = self.samples[i][1]
        rng = np.random.default_rng(np.random.SeedSequence([WORLD_SEED, _SPLIT_CODE[self.split], i]))
        return world.render(world.task_classes()[label], rng)


def load_synthetic(split: str) -> SyntheticDataset:
    """The embedded synthetic world's ``split``: images are drawn on demand from their index."""
    classes = world.task_classes()
    n = PER_CLASS[split] * len(classes)
    samples = [(f"synthetic:{split}/{i:05d}", i % len(classes)) for i in range(n)]
    return SyntheticDataset("synthetic", split, [world.class_name(c) for c in classes], samples, root="synthetic:")
