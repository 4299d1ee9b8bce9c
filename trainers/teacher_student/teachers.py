"""Train (or load from cache) the frozen teachers of ch. 3, one per seed, as one batched computation.

A teacher is trained once with early stopping on validation accuracy and then never changes, so its
predictions on the training set are computed once and looked up by the student trainer afterwards.
Every random draw of its training (initial weights, data order, dropout masks) comes from its seed, so
one seed gives bit-identical weights, whoever trains beside it. Cached files hold only tensors and are
loaded with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from agents.teacher_student import CLASSIFIERS, classifier, multiply_adds
from envs.base import at_least
from envs.data import Split, Splits
from trainers.base import Events, check_fields, option
from trainers.files import CheckpointError, load_checked, save_atomic, write_atomic
from trainers.teacher_student.student import Selection, StudentConfig, StudentTrainer, image_shape

VERSION = "seeded-dropout-1"  # in the cache key: teachers trained before their dropout was seeded differ


@dataclass(frozen=True)
class TeacherConfig:
    model: str = option("mlp", "teacher classifier: the ReLU MLP of --teacher-hidden widths, one of chapter 2's "
                        "CNNs (CIFAR-10), or Loshchilov & Hutter's MNIST CNN (lh-cnn)", choices=CLASSIFIERS)
    hidden: tuple[int, ...] = option((1200, 1200), "teacher hidden widths (784-1200-1200-10 in the thesis)",
                                     read_with={"model": ("mlp",)})
    dropout: float | None = option(None, "teacher dropout after each hidden layer", default_text="0.5 with the mlp; "
                                   "the CNNs have none")
    batch_size: int = option(128, "teacher minibatch (the thesis used 32; 128 trains 4x faster on a CPU)")
    lr: float = option(1e-3, "teacher Adam learning rate")
    patience: int = option(5, "teacher epochs without validation gain before it stops")
    max_epochs: int = option(50, "teacher epochs at most")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.dropout is None:  # frozen: the default follows the model
            object.__setattr__(self, "dropout", 0.5 if self.model == "mlp" else 0.0)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"teacher dropout must be in [0, 1), got {self.dropout}")
        at_least(1, batch_size=self.batch_size, patience=self.patience, max_epochs=self.max_epochs)

    def as_student(self, n_train: int) -> StudentConfig:
        """The teacher is trained as a student with dropout on true labels, evaluated once an epoch."""
        return StudentConfig(model=self.model, hidden=self.hidden, batch_size=self.batch_size, lr=self.lr,
                             patience=self.patience, max_epochs=self.max_epochs,
                             eval_every=max(1, n_train // self.batch_size), dropout=self.dropout)


QUICK_TEACHER = TeacherConfig(hidden=(256, 256), max_epochs=1, patience=1)  # seconds to train: smoke runs, env defaults


IRREDUCIBLE = TeacherConfig(hidden=(256, 256))  # RHO-LOSS's small model, trained on a holdout of the training split


def irreducible_config(model: str = "mlp", hidden: tuple[int, ...] = IRREDUCIBLE.hidden) -> TeacherConfig:
    """``IRREDUCIBLE`` as ``model`` (``hidden`` widths for the MLP), its dropout that model's default (the MLP's
    0.5; the CNNs have none)."""
    return replace(IRREDUCIBLE, model=model, hidden=hidden, dropout=None)


def cache_path(cache_dir: Path, config: TeacherConfig, train: Split, seed: int, kind: str = "teacher") -> Path:
    """One file per kind of model, configuration, training data (the images' count and size, and the labels
    themselves: a corrupted or another dataset's labels train another model), training version and seed."""
    labels = hashlib.sha1(train.labels.cpu().numpy().tobytes()).hexdigest()
    key = hashlib.sha1(repr((asdict(config), tuple(train.images.shape), labels, VERSION, kind)).encode())
    return cache_dir / f"{kind}-{key.hexdigest()[:10]}-seed{seed}.pt"


def carve_holdout(splits: Splits, size: int) -> tuple[Splits, Split]:
    """The last ``size`` training images as a holdout of their own (the irreducible-loss model's data, a
    learned teacher's reward), and the splits whose training pool is the rest: every row of a table trains
    on that pool, so none of them sees the holdout and the students' validation split stays untouched."""
    if not 0 <= size < len(splits.train.images):
        raise ValueError(f"a holdout of {size} images must leave training images (the split has "
                         f"{len(splits.train.images)})")
    keep = len(splits.train.images) - size
    train = splits.train
    pool = Split(train.images[:keep], train.labels[:keep])
    return replace(splits, train=pool), Split(train.images[keep:], train.labels[keep:])


def forward_cost(config: TeacherConfig | StudentConfig, shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass of ``config``'s model, per image (what a forward pass of a minibatch costs,
    up to the batch size): the unit that makes the teacher's forwards comparable with the student's."""
    return multiply_adds(classifier(shape, config.model, config.hidden), shape)


def training_cost(path: Path) -> dict | None:
    """What training the cached model of ``path`` cost (``{"backward_passes", "batch_size"}``), if it was
    trained by this version (older caches did not record it)."""
    record = path.with_suffix(".json")
    return json.loads(record.read_text()) if record.exists() else None


def load_or_train_teachers(
    splits: Splits,
    seeds: Sequence[int],
    config: TeacherConfig,
    cache_dir: Path,
    retrain: bool = False,
    events: Events | None = None,
    device: torch.device | str = "cpu",
    kind: str = "teacher",
) -> dict[int, torch.nn.Module]:
    """The best-validation teacher of each seed, in eval mode; cached under ``cache_dir`` with a record
    of its training cost beside it (``training_cost``). Missing teachers train together
    (``StudentTrainer``), resumable from a checkpoint in ``cache_dir``. ``kind`` names other models
    trained the same way (the irreducible-loss model)."""
    shape = image_shape(splits)
    paths = {seed: cache_path(cache_dir, config, splits.train, seed, kind) for seed in seeds}
    missing = [s for s in seeds if retrain or not paths[s].exists()]
    fix = "delete it (or pass --retrain-teacher) to train it again"
    states = {s: load_checked(paths[s], "teacher cache file", fix) for s in seeds if s not in missing}
    if missing:
        trainer = StudentTrainer(config.as_student(len(splits.train.images)), splits,
                                 [(Selection(), s) for s in missing], device=device)
        checkpoint = paths[missing[0]].with_name(f"{paths[missing[0]].stem}-{'-'.join(map(str, missing))}.ckpt.pt")
        results = trainer.fit(events, checkpoint)
        for r, seed in enumerate(missing):
            save_atomic(paths[seed], trainer.best_weights(r))
            cost = {"backward_passes": results[r].stopped_step, "batch_size": config.batch_size}
            write_atomic(paths[seed].with_suffix(".json"), lambda tmp, cost=cost: tmp.write_text(json.dumps(cost)))
            states[seed] = trainer.best_weights(r)
        checkpoint.unlink(missing_ok=True)
    teachers = {}
    for seed in seeds:
        model = classifier(shape, config.model, config.hidden, dropout=config.dropout)
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


def _irreducible_model(holdout: Split, test: Split, config: TeacherConfig,
                       shape: tuple[int, ...] = ()) -> tuple[TeacherConfig, Splits]:
    """The irreducible-loss model's config (``config``, its batch no larger than half the holdout) and data (images
    of ``shape``): trained on the first half of ``holdout``, stopped early on its second half."""
    half = len(holdout.images) // 2
    if half < 1:
        raise ValueError("the irreducible-loss model needs a holdout of at least 2 images (--holdout)")
    held = Splits(Split(holdout.images[:half], holdout.labels[:half]),
                  Split(holdout.images[half:], holdout.labels[half:]), test, shape=shape)
    return replace(config, batch_size=min(config.batch_size, half)), held  # a tiny split trains too


def irreducible_models(
    splits: Splits,
    holdout: Split,
    seeds: Sequence[int],
    cache_dir: Path,
    config: TeacherConfig = IRREDUCIBLE,
    retrain: bool = False,
    events: Events | None = None,
    device: torch.device | str = "cpu",
) -> dict[int, torch.nn.Module]:
    """RHO-LOSS's irreducible-loss models: ``config`` (by default a small MLP) trained on the first half of
    ``holdout`` (``carve_holdout``), stopped early on its second half, one per seed, cached. They see neither the
    students' training pool nor their validation split."""
    config, held = _irreducible_model(holdout, splits.test, config, splits.shape)
    return load_or_train_teachers(held, seeds, config, cache_dir, retrain, events, device, "irreducible")


def irreducible_losses(splits: Splits, models: dict[int, torch.nn.Module]) -> dict[int, torch.Tensor]:
    """RHO-LOSS's irreducible losses: each of the ``irreducible_models``' cross-entropy on every training image's
    true label, ``{seed: [n_train]}``."""
    train = splits.train
    return {k: F.cross_entropy(predict(m, train.images), train.labels, reduction="none") for k, m in models.items()}


def irreducible_training_cost(cache_dir: Path, holdout: Split, seed: int,
                              config: TeacherConfig = IRREDUCIBLE) -> tuple[TeacherConfig, dict | None]:
    """The irreducible-loss model's config and what training it cost (``training_cost``)."""
    config, held = _irreducible_model(holdout, holdout, config)
    return config, training_cost(cache_path(cache_dir, config, held.train, seed, "irreducible"))
