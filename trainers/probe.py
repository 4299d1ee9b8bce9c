"""Offline linear probes: how much a fixed feature map tells about the labels (reference rows and the
language analysis). Many probes train as one batched model, each exactly as if trained alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


def train_linear_probes(
    features: Sequence[Splits],
    seeds: Sequence[int],
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 1e-3,
    by: str = "accuracy",
) -> list[torch.nn.Linear]:
    """Train a linear classifier on each ``features[i].train`` with Adam, seeded by ``seeds[i]``
    (initial weights and minibatch order as if it trained alone); return each as it was at its epoch of
    best validation accuracy (the protocol of the language runs' online probe) or, ``by="loss"``, of
    lowest validation cross-entropy (what an information bound needs). The probes train as one batched
    model (a lone probe's step is mostly per-call overhead: 20 probes of 256 features take ~5 ms a step
    here against ~1 ms for one; Table 4.1's analysis and references 226 s against ~580 s). Each trains on
    features standardised with its training split's statistics (trained ReLU features are badly scaled:
    on raw ones Adam needs several times the epochs) and is returned as the equivalent classifier of raw
    features. Every entry needs the same split sizes and feature width."""
    if len(features) != len(seeds):
        raise ValueError(f"{len(features)} feature sets but {len(seeds)} seeds: give one seed per probe")
    shapes = {tuple(s.images.shape for s in f.named().values()) for f in features}
    if len(shapes) != 1:
        raise ValueError(f"probes trained together need equal split shapes; got {sorted(shapes)}")
    mean = torch.stack([f.train.images.mean(0) for f in features])  # [P, d]
    std = torch.stack([f.train.images.std(0) for f in features])
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant input stays as it is
    x_train, x_val = (torch.stack([(getattr(f, s).images - m) / d for f, m, d in zip(features, mean, std, strict=True)])
                      for s in ("train", "val"))
    y_train, y_val = (torch.stack([getattr(f, s).labels for f in features]) for s in ("train", "val"))
    width, classes = x_train.shape[-1], int(max(f.train.labels.max() for f in features)) + 1
    initial = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            initial.append(torch.nn.Linear(width, classes))
    weight = torch.stack([m.weight.detach() for m in initial]).requires_grad_()  # [P, classes, d]
    bias = torch.stack([m.bias.detach() for m in initial]).unsqueeze(-1).requires_grad_()  # [P, classes, 1]
    optimizer = torch.optim.Adam([weight, bias], lr=lr)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    # class scores come out [P, classes, batch]: the softmax then runs over a strided dimension with the
    # batch contiguous, and the weight gradient is a wide matmul: half the time of [P, batch, classes]
    offsets = torch.arange(len(features)).unsqueeze(1) * x_train.shape[1]
    flat_x, flat_y = x_train.flatten(0, 1), y_train.flatten()
    best_val = torch.full((len(features),), -torch.inf)
    best_weight, best_bias = weight.detach().clone(), bias.detach().clone()
    for _ in range(epochs):
        order = torch.stack([torch.randperm(x_train.shape[1], generator=g) for g in generators]) + offsets
        for idx in order.split(batch_size, dim=1):
            rows = idx.flatten()  # one row gather from every probe's own data
            x = flat_x.index_select(0, rows).view(*idx.shape, -1)
            scores = torch.baddbmm(bias, weight, x.transpose(1, 2))
            loss = F.cross_entropy(scores, flat_y.index_select(0, rows).view(idx.shape), reduction="none")
            optimizer.zero_grad(set_to_none=True)
            loss.mean(1).sum().backward()  # each probe's gradient is that of its own mean loss
            optimizer.step()
        with torch.no_grad():
            scores = torch.baddbmm(bias, weight, x_val.transpose(1, 2))
            if by == "accuracy":
                val = 100.0 * (scores.argmax(1) == y_val).float().sum(1) / y_val.shape[1]
            else:
                val = -F.cross_entropy(scores, y_val, reduction="none").mean(1)
            better = val > best_val
            best_val = torch.where(better, val, best_val)
            best_weight[better], best_bias[better] = weight[better], bias[better]
    probes = []
    for w, b, m, s in zip(best_weight, best_bias.squeeze(-1), mean, std, strict=True):
        probe = torch.nn.Linear(width, classes)  # w (x - m) / s + b  ==  (w / s) x + (b - w (m / s))
        with torch.no_grad():
            probe.weight.copy_(w / s)
            probe.bias.copy_(b - w @ (m / s))
        probes.append(probe)
    return probes


def fit_linear_probes(
    features: Sequence[Splits], seeds: Sequence[int], epochs: int = 10, batch_size: int = 256, lr: float = 1e-3
) -> list[float]:
    """Test accuracy (%) of each of ``train_linear_probes``."""
    probes = train_linear_probes(features, seeds, epochs, batch_size, lr)
    return [accuracy(probe, f.test).item() for probe, f in zip(probes, features, strict=True)]


@torch.no_grad()
def map_splits(splits: Splits, fn, chunk: int = 5000) -> Splits:
    """Apply a feature map to every split's images (in chunks), keeping the labels."""

    def one(split: Split) -> Split:
        return Split(torch.cat([fn(x) for x in split.images.split(chunk)]), split.labels)

    return Splits(one(splits.train), one(splits.val), one(splits.test))
