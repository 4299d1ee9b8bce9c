"""Offline linear probe: how much a fixed feature map tells about the labels (reference rows)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from envs.data import Split, Splits


@torch.no_grad()
def accuracy(model: Callable, split: Split, chunk: int = 5000) -> torch.Tensor:
    """Accuracy (%) of a model or population on a split; populations give one value per member."""
    correct = 0
    for x, y in zip(split.images.split(chunk), split.labels.split(chunk), strict=True):
        correct = correct + (model(x).argmax(-1) == y).float().sum(-1)
    return 100.0 * correct / len(split.images)


def train_linear_probe(
    features: Splits, epochs: int = 10, batch_size: int = 256, lr: float = 1e-3, seed: int = 0, by: str = "accuracy"
) -> torch.nn.Linear:
    """Train a linear classifier on ``features.train`` with Adam; return it as it was at the epoch of
    best validation accuracy (the protocol of the language runs' online probe) or, ``by="loss"``, of
    lowest validation cross-entropy (what an information bound needs). It trains on features
    standardised with the training split's statistics (trained ReLU features are badly scaled: on raw
    ones Adam needs several times the epochs) and returns the equivalent classifier of raw features."""
    mean, std = features.train.images.mean(0), features.train.images.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant input stays as it is
    scaled = map_splits(features, lambda x: (x - mean) / std)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        linear = torch.nn.Linear(features.train.images.shape[1], int(features.train.labels.max()) + 1)
    optimizer = torch.optim.Adam(linear.parameters(), lr=lr)
    best_val, best = -math.inf, copy.deepcopy(linear)
    n = len(scaled.train.images)
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=generator).split(batch_size):
            loss = F.cross_entropy(linear(scaled.train.images[idx]), scaled.train.labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            val = (
                accuracy(linear, scaled.val).item()
                if by == "accuracy"
                else -F.cross_entropy(linear(scaled.val.images), scaled.val.labels).item()
            )
        if val > best_val:
            best_val, best = val, copy.deepcopy(linear)
    with torch.no_grad():  # w (x - mean) / std + b  ==  (w / std) x + (b - w (mean / std))
        best.bias -= best.weight @ (mean / std)
        best.weight /= std
    return best


def fit_linear_probe(
    features: Splits, epochs: int = 10, batch_size: int = 256, lr: float = 1e-3, seed: int = 0
) -> float:
    """Test accuracy (%) of ``train_linear_probe``."""
    return accuracy(train_linear_probe(features, epochs, batch_size, lr, seed), features.test).item()


@torch.no_grad()
def map_splits(splits: Splits, fn, chunk: int = 5000) -> Splits:
    """Apply a feature map to every split's images (in chunks), keeping the labels."""

    def one(split: Split) -> Split:
        return Split(torch.cat([fn(x) for x in split.images.split(chunk)]), split.labels)

    return Splits(one(splits.train), one(splits.val), one(splits.test))
