"""Train (or load from cache) the frozen teachers of ch. 3, one per seed, as one batched computation.

A teacher is trained once with early stopping on validation accuracy and then never changes, so its
predictions on the training set are computed once and looked up by the student trainer afterwards.
Every random draw of its training (initial weights, data order, dropout masks) comes from its seed, so
one seed gives bit-identical weights, whoever trains beside it. Cached files hold only tensors and are
loaded with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from agents.teacher_student import teacher
from envs.data import Splits
from trainers.base import CheckpointError, Events, load_checked, option, save_atomic
from trainers.teacher_student import Selection, StudentConfig, StudentTrainer

VERSION = "seeded-dropout-1"  # in the cache key: teachers trained before their dropout was seeded differ


@dataclass(frozen=True)
class TeacherConfig:
    hidden: tuple[int, ...] = option((1200, 1200), "teacher hidden widths (784-1200-1200-10 in the thesis)")
    dropout: float = option(0.5, "teacher dropout after each hidden layer")
    batch_size: int = option(128, "teacher minibatch (the thesis used 32; 128 trains 4x faster on a CPU)")
    lr: float = option(1e-3, "teacher Adam learning rate")
    patience: int = option(5, "teacher epochs without validation gain before it stops")
    max_epochs: int = option(50, "teacher epochs at most")

    def __post_init__(self) -> None:
        if not 0 <= self.dropout < 1 or self.batch_size < 1 or self.patience < 1 or self.max_epochs < 1:
            raise ValueError("teacher dropout must be in [0, 1); batch size, patience and epochs >= 1")

    def as_student(self, n_train: int) -> StudentConfig:
        """The teacher is trained as a student with dropout on true labels, evaluated once an epoch."""
        return StudentConfig(hidden=self.hidden, batch_size=self.batch_size, lr=self.lr, patience=self.patience,
                             max_epochs=self.max_epochs, eval_every=max(1, n_train // self.batch_size),
                             dropout=self.dropout)  # fmt: skip


QUICK_TEACHER = TeacherConfig(hidden=(256, 256), max_epochs=1, patience=1)  # seconds to train: smoke runs, env defaults


def cache_path(cache_dir: Path, config: TeacherConfig, pixels: int, seed: int) -> Path:
    """One file per teacher configuration (and input size), training version and seed."""
    key = hashlib.sha1(repr((asdict(config), pixels, VERSION)).encode()).hexdigest()[:10]
    return cache_dir / f"teacher-{key}-seed{seed}.pt"


def load_or_train_teachers(
    splits: Splits,
    seeds: Sequence[int],
    config: TeacherConfig,
    cache_dir: Path,
    retrain: bool = False,
    events: Events | None = None,
    device: torch.device | str = "cpu",
) -> dict[int, torch.nn.Module]:
    """The best-validation teacher of each seed, in eval mode; cached under ``cache_dir``. Missing
    teachers train together (``StudentTrainer``), resumable from a checkpoint in ``cache_dir``."""
    pixels = splits.train.images.shape[1]
    paths = {seed: cache_path(cache_dir, config, pixels, seed) for seed in seeds}
    missing = [s for s in seeds if retrain or not paths[s].exists()]
    fix = "delete it (or pass --retrain-teacher) to train it again"
    states = {s: load_checked(paths[s], "teacher cache file", fix) for s in seeds if s not in missing}
    if missing:
        trainer = StudentTrainer(config.as_student(len(splits.train.images)), splits,
                                 [(Selection(), s) for s in missing], device=device)  # fmt: skip
        checkpoint = paths[missing[0]].with_name(f"{paths[missing[0]].stem}-{'-'.join(map(str, missing))}.ckpt.pt")
        trainer.fit(events, checkpoint)
        for r, seed in enumerate(missing):
            save_atomic(paths[seed], trainer.best_weights(r))
            states[seed] = trainer.best_weights(r)
        checkpoint.unlink(missing_ok=True)
    teachers = {}
    for seed in seeds:
        model = teacher(pixels, config.hidden, config.dropout)
        try:
            model.load_state_dict(states[seed])
        except (RuntimeError, KeyError) as e:
            first = str(e).splitlines()[0][:80]
            raise CheckpointError(f"{paths[seed]} does not hold a teacher of this shape ({first}); {fix}") from None
        teachers[seed] = model.eval()
    return teachers


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, chunk: int = 5000) -> torch.Tensor:
    """Logits of a frozen model for every image (computed once, looked up afterwards)."""
    return torch.cat([model(x) for x in images.split(chunk)])
