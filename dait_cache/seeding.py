"""Seeded work that leaves the caller's random state alone."""

from __future__ import annotations

import functools

import torch

from .errors import DaitError


def check_seed(seed: int) -> None:
    """numpy's SeedSequence takes integers of 0 or more: refuse another seed before any work."""
    if seed < 0:
        raise DaitError(f"--seed {seed} cannot seed numpy's generators: give an integer of 0 or more")


def own_rng(fn):
    """Run ``fn`` on a private copy of torch's random state: the runs seed it for reproducible
    numbers, and the caller's state is as it was afterwards."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            return fn(*args, **kwargs)

    return wrapper
