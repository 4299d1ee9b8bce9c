"""Train (or load from cache) the frozen teachers of ch. 3, one per seed, as one batched computation.

A teacher is trained once with early stopping on validation accuracy and then never changes, so its
predictions on the training set are computed once and looked up by the student trainer afterwards.
Cached files hold only tensors and are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from agents.teacher_student import teacher
from envs.data import Splits
from trainers.population import Population
from trainers.probe import accuracy


@dataclass(frozen=True)
class TeacherConfig:
    hidden: tuple[int, ...] = (1200, 1200)
    dropout: float = 0.5
    batch_size: int = 128  # the thesis used 32; 128 trains the 3 default teachers 4x faster on a CPU
    lr: float = 1e-3
    patience: int = 5  # epochs without validation improvement
    max_epochs: int = 50

    def __post_init__(self) -> None:
        if not 0 <= self.dropout < 1 or self.batch_size < 1 or self.patience < 1 or self.max_epochs < 1:
            raise ValueError("teacher dropout must be in [0, 1); batch size, patience and epochs >= 1")


def cache_path(cache_dir: Path, config: TeacherConfig, pixels: int, seed: int) -> Path:
    """One file per teacher configuration (and input size) and seed."""
    key = hashlib.sha1(repr((asdict(config), pixels)).encode()).hexdigest()[:10]
    return cache_dir / f"teacher-{key}-seed{seed}.pt"


def _train(splits: Splits, seeds: Sequence[int], config: TeacherConfig, progress: Callable[[str], None] | None):
    pixels = splits.train.images.shape[1]
    models = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            models.append(teacher(pixels, config.hidden, config.dropout))
    population = Population(models)
    optimizer = torch.optim.Adam(population.parameters(), lr=config.lr)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    n = len(splits.train.images)
    best = [(-1.0, None, 0)] * len(seeds)  # (val accuracy, state, epoch)
    for epoch in range(config.max_epochs):
        population.train()
        orders = torch.stack([torch.randperm(n, generator=g) for g in generators])
        for start in range(0, n - config.batch_size + 1, config.batch_size):
            idx = orders[:, start : start + config.batch_size]
            logits = population(splits.train.images[idx])
            loss = F.cross_entropy(logits.flatten(0, 1), splits.train.labels[idx].flatten(), reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            (loss / config.batch_size).backward()
            optimizer.step()
        val = accuracy(population.eval().shared, splits.val)
        state = population.state_dict()
        best = [
            (v, {k: t[i].clone() for k, t in state.items()}, epoch) if v > b[0] else b
            for i, (v, b) in enumerate(zip(val.tolist(), best, strict=True))
        ]
        if progress:
            progress(f"teacher epoch {epoch + 1}: val {', '.join(f'{v:.2f}' for v in val.tolist())}")
        if all(epoch - b[2] >= config.patience for b in best):
            break
    return [b[1] for b in best]


def load_or_train_teachers(
    splits: Splits,
    seeds: Sequence[int],
    config: TeacherConfig,
    cache_dir: Path,
    retrain: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[int, torch.nn.Module]:
    """The best-validation teacher of each seed, in eval mode; cached under ``cache_dir``."""
    pixels = splits.train.images.shape[1]
    paths = {seed: cache_path(cache_dir, config, pixels, seed) for seed in seeds}
    missing = [s for s in seeds if retrain or not paths[s].exists()]
    states = {s: torch.load(paths[s], weights_only=True) for s in seeds if s not in missing}
    if missing:
        for seed, state in zip(missing, _train(splits, missing, config, progress), strict=True):
            paths[seed].parent.mkdir(parents=True, exist_ok=True)
            tmp = paths[seed].with_name(paths[seed].name + ".tmp")
            torch.save(state, tmp)
            tmp.replace(paths[seed])
            states[seed] = state
    teachers = {}
    for seed in seeds:
        model = teacher(pixels, config.hidden, config.dropout)
        model.load_state_dict(states[seed])
        teachers[seed] = model.eval()
    return teachers


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, chunk: int = 5000) -> torch.Tensor:
    """Logits of a frozen model for every image (computed once, looked up afterwards)."""
    return torch.cat([model(x) for x in images.split(chunk)])
