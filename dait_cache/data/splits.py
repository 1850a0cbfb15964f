"""Stratified, seeded subsets of a training set: train fractions and validation splits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import DaitError

# Distinct streams so that a fraction and a validation split with the same seed are independent.
_FRACTION_STREAM, _VAL_STREAM = 1, 2


def _per_class(labels: Sequence[int]) -> dict[int, np.ndarray]:
    labels = np.asarray(labels)
    return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}


def _take(n: int, fraction: float) -> int:
    """Round to nearest, keeping at least one per class when the fraction is positive."""
    return max(1, int(round(fraction * n))) if fraction > 0 else 0


def official_fraction(
    labels: Sequence[int], candidates: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, int]:
    """``fraction`` of the official training set, per class, drawn from ``candidates`` (the rows
    left after the validation split): class c keeps round(fraction x n_c) rows, n_c counted over
    all of ``labels``, capped at what ``candidates`` hold. Returns (sorted rows, rows requested).

    Draws are prefixes of one seeded permutation per class, so a smaller fraction's rows are a
    subset of a larger one's.
    """
    if not 0 < fraction <= 1:
        raise DaitError(f"train fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _FRACTION_STREAM]))
    keep, requested = [], 0
    for c, idx in _per_class(labels[candidates]).items():
        want = _take(int((labels == c).sum()), fraction)
        requested += want
        keep.append(candidates[rng.permutation(idx)[:want]])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64), requested


def train_val_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices; each class gives ``val_fraction`` of its images to val,
    but never its last one."""
    if not 0 <= val_fraction < 1:
        raise DaitError(f"validation fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, _VAL_STREAM]))
    train, val = [], []
    for idx in _per_class(labels).values():
        perm = rng.permutation(idx)
        n_val = min(_take(len(idx), val_fraction), len(idx) - 1)
        val.append(perm[:n_val])
        train.append(perm[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
