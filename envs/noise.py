"""Symmetric label noise on a training split: the setting where selection rules part ways (RHO-LOSS's own).

Exactly ``round(fraction * n)`` labels are corrupted, each to a class drawn uniformly from the *other*
classes, so the stated fraction is the fraction of wrong labels (noise that may redraw the true class
would leave fewer). Which images and which wrong classes come from ``seed`` alone: the same corruption for
every row and student seed of a table. Validation and test splits are never corrupted.
"""

from __future__ import annotations

import torch

from envs.data import Split


def corrupt_labels(split: Split, fraction: float, seed: int, classes: int) -> tuple[Split, torch.Tensor]:
    """``split`` with ``round(fraction * n)`` labels replaced by another class, and the mask of those labels
    (bool ``[n]``). ``fraction`` 0 returns the split unchanged and an all-false mask."""
    if not 0 <= fraction < 1:
        raise ValueError(f"label noise must be a fraction in [0, 1), got {fraction}")
    if classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got {classes}")
    n = len(split.labels)
    corrupted = torch.zeros(n, dtype=torch.bool)
    count = round(fraction * n)
    if not count:
        return split, corrupted
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(n, generator=generator)[:count]
    shift = torch.randint(1, classes, (count,), generator=generator)  # never 0: never the true class
    labels = split.labels.clone()
    labels[chosen] = (labels[chosen] + shift) % classes
    corrupted[chosen] = True
    return Split(split.images, labels), corrupted
