"""Seeded work that leaves the caller's random state alone."""

from __future__ import annotations

import functools

import torch


def own_rng(fn):
    """Run ``fn`` on a private copy of torch's random state: the runs seed it for reproducible
    numbers, and the caller's state is as it was afterwards."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            return fn(*args, **kwargs)

    return wrapper
