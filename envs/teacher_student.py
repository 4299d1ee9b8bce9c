"""Teacher selects the student's training samples (thesis ch. 3): the teacher stack's core and env.

The student sends ``stack_size`` minibatches with its predictions; the teacher adds its own, scores
every sample by a difficulty measure and returns the ``batch_size`` hardest, with its own predictions
as soft labels or with the true labels. Everything here is shape-generic over leading dimensions (the
trainer runs many students at once) and is what the scripted teachers and the env share.

A new difficulty measure is a ``Measure`` wrapping one function ``(stack, generator) -> scores`` (a
``Stack`` holds both predictive distributions, the labels, an irreducible loss and the training step),
added to ``MEASURES``, saying what it reads (the student's predictions cost forward passes). A ``Rule``
turns a measure's scores into the samples sent: the hardest (the thesis), or a draw by rank with a
selection pressure, an annealing schedule and a floor. A new target is one function added to
``TARGETS``. ``EpochStacks`` is the one sampler of stacks, used by the env and the batched trainer alike.

The same world as a PettingZoo parallel env:

| Import             | ``from envs import teacher_student as ts; env = ts.parallel_env(...)``    |
|--------------------|-------------------------------------------------------------------------------|
| AEC API            | ``ts.env()`` (= ``raw_env()``, via ``parallel_to_aec``)                       |
| Agents             | ``["teacher", "student"]``                                                    |
| teacher observes   | ``(stack, 2 * classes + 3)``: per stack sample, the teacher's and the student's |
|                    | predictive distributions, their cross-entropy and Euclidean distance, and the |
|                    | student's training progress (updates / ``PROGRESS_UPDATES``, at most 1)       |
| teacher acts       | ``Box(-1, 1, stack + 1)``: a score per stack sample (the ``batch_size`` highest are  |
|                    | sent), then the target kind (>= 0: the teacher's soft labels, < 0: true labels)|
| student observes   | ``(batch_size, pixels + classes)``: what it was last given to train on        |
| student acts       | ``Discrete(2)``: 1 takes the Adam step on what it is given, 0 skips it        |

The env is the student's classroom: it holds the student network (784-32-32-10 by default, trained
with Adam inside the env) and the frozen teacher's logits for every training image. Each step the
student's next ``stack_size`` minibatches (epoch-wise shuffled) are scored by the teacher's action; the
chosen samples, with their targets, are what the student trains on (if it chooses to). With ``warmup``,
each episode starts from a partly trained student: ``reset`` first gives it a uniformly drawn number of
updates, up to ``warmup``, on random minibatches, so a teacher learns late training too.

Reward (shared, both agents): the drop of the student's cross-entropy on a fixed validation subset
(``reward_samples`` images) caused by this step's update, so a teacher that picks useful samples earns
more. With ``reward="advantage"`` the drop is measured against plain training: minus the drop that an
update on a uniformly drawn minibatch of the same stack gives a copy of the student from the same state,
so the reward no longer depends on how far training has gone (a fresh student's every update drops the
loss far more than a trained one's), only on what the teacher chose.
Episodes truncate after ``max_steps``; ``reset(seed)`` re-initialises the student and data order.
``scripted_teacher(measure)`` turns any entry of ``MEASURES`` into a teacher policy for the env.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces

from agents.teacher_student import student
from envs.base import TruncatingParallelEnv, aec, episode_length, given_whole, trains

Target = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class Stack:
    """What a selection rule knows of a stack of samples (any leading dimensions, e.g. runs): both
    predictive distributions ``[..., S, classes]``, the true labels ``[..., S]``, an irreducible-loss
    model's loss on each sample's true label ``[..., S]`` (RHO-LOSS; None without such a model) and the
    student's backward passes so far (what schedules read)."""

    teacher_probs: torch.Tensor
    student_probs: torch.Tensor
    labels: torch.Tensor | None = None
    irreducible: torch.Tensor | None = None
    step: int = 0


def cross_entropy(stack: Stack, generator: torch.Generator) -> torch.Tensor:
    """``H(p_teacher, p_student) = -sum_y p_teacher(y) log p_student(y)``: high where the student is wrong."""
    return -(stack.teacher_probs * torch.log(stack.student_probs.clamp_min(1e-12))).sum(-1)


def euclidean(stack: Stack, generator: torch.Generator) -> torch.Tensor:
    """``||p_teacher - p_student||_2``: a true distance, every class weighted equally."""
    return (stack.teacher_probs - stack.student_probs).norm(dim=-1)


def random(stack: Stack, generator: torch.Generator) -> torch.Tensor:
    """Uniform scores: the selection baseline (ignores both predictions)."""
    return torch.rand(stack.teacher_probs.shape[:-1], generator=generator)


def label_loss(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a predictive distribution with the true label, per sample."""
    return -torch.log(probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1).clamp_min(1e-12))


def reducible(stack: Stack, generator: torch.Generator) -> torch.Tensor:
    """RHO-LOSS's reducible loss with the teacher as the irreducible-loss model: the student's loss on the
    true label minus the teacher's. High where the student is wrong and the teacher right; a sample the
    teacher also gets wrong (noisy, ambiguous) scores low. The teacher saw these very samples in training,
    so its losses are optimistic (RHO-LOSS trains its model on held-out data: ``reducible_holdout``)."""
    return label_loss(stack.student_probs, stack.labels) - label_loss(stack.teacher_probs, stack.labels)


def reducible_holdout(stack: Stack, generator: torch.Generator) -> torch.Tensor:
    """RHO-LOSS's reducible loss as its paper computes it: the student's loss on the true label minus that
    of a small model trained on held-out data (``Stack.irreducible``, looked up per training image)."""
    return label_loss(stack.student_probs, stack.labels) - stack.irreducible


@dataclass(frozen=True)
class Measure:
    """A difficulty measure: ``score(stack, generator) -> scores``, and what it reads: the student's
    predictions on the stack (a forward pass per stack minibatch), the teacher's, the true labels (which
    the env's teacher does not observe) and the irreducible-loss model of ``reducible_holdout``."""

    score: Callable[[Stack, torch.Generator], torch.Tensor]
    reads_student: bool = True
    reads_teacher: bool = True
    reads_labels: bool = False
    reads_irreducible: bool = False

    def __call__(self, stack: Stack, generator: torch.Generator) -> torch.Tensor:
        return self.score(stack, generator)


MEASURES: dict[str, Measure] = {
    "cross_entropy": Measure(cross_entropy),
    "euclidean": Measure(euclidean),
    "random": Measure(random, reads_student=False, reads_teacher=False),
    "reducible": Measure(reducible, reads_labels=True),
    "reducible_holdout": Measure(reducible_holdout, reads_teacher=False, reads_labels=True, reads_irreducible=True),
}


@dataclass(frozen=True)
class Rule:
    """A selection rule: a difficulty measure and how the ``batch_size`` samples sent are chosen from its
    scores. With ``pressure`` infinite (the thesis' rules) the highest scores are sent. Otherwise the
    samples are drawn without replacement by rank (Loshchilov & Hutter's online batch selection): the
    sample of rank ``i`` (0 = hardest) of ``N`` has probability proportional to ``pressure ** (-i / N)``,
    so the hardest is ``pressure`` times as likely as the easiest (1: uniform). ``anneal`` > 0 lowers the
    pressure geometrically to 1 (uniform) over that many backward passes: hard selection early, plain
    training late. ``floor`` mixes in the uniform distribution, so every sample keeps a probability of
    at least ``floor / N`` (Selective Backprop's minimum selection probability)."""

    measure: str = "random"
    pressure: float = math.inf
    anneal: int = 0
    floor: float = 0.0

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise ValueError(f"unknown measure {self.measure!r}; choose from {', '.join(MEASURES)}")
        if not self.pressure >= 1:
            raise ValueError(f"selection pressure must be >= 1 (1: uniform, inf: the hardest), got {self.pressure}")
        if self.anneal < 0 or not 0 <= self.floor < 1:
            raise ValueError(f"need anneal >= 0 passes and floor in [0, 1); got {self.anneal}, {self.floor}")
        if math.isinf(self.pressure) and (self.anneal or self.floor):
            raise ValueError("anneal and floor shape sampled selection: give a finite --pressure with them")

    def pressure_at(self, step: int) -> float:
        """The selection pressure after ``step`` backward passes."""
        if not self.anneal or math.isinf(self.pressure):
            return self.pressure
        return self.pressure ** max(0.0, 1.0 - step / self.anneal)

    def probabilities(self, scores: torch.Tensor, step: int = 0, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Each sample's probability of being drawn first, ``[..., S]`` (0 on padding, ``valid`` False)."""
        valid = torch.ones_like(scores, dtype=torch.bool) if valid is None else valid
        n = valid.sum(-1, keepdim=True)
        ranks = scores.masked_fill(~valid, float("-inf")).argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
        logits = -math.log(self.pressure_at(step)) * ranks / n
        p = torch.softmax(logits.masked_fill(~valid, float("-inf")), -1)
        return (1 - self.floor) * p + self.floor * valid / n

    def __call__(self, stack: Stack, batch_size: int, generator: torch.Generator,
                 valid: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Indices (along the stack) of the ``batch_size`` samples sent."""
        scores = MEASURES[self.measure](stack, generator)
        if math.isinf(self.pressure):
            return select_hardest(scores, batch_size, valid)
        p = self.probabilities(scores, stack.step, valid)
        uniform = torch.rand(p.shape, generator=generator).clamp_min(1e-20)
        keys = torch.log(p) - torch.log(-torch.log(uniform))  # Gumbel top-k: a draw without replacement
        return keys.topk(batch_size, dim=-1).indices


class EpochStacks:
    """Consecutive stacks of sample indices from epoch-wise shuffled data: a new permutation of all
    ``n`` samples is appended whenever fewer than a stack are left (so every sample is seen once per
    epoch, and a stack may straddle two epochs)."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator
        self.order = torch.empty(0, dtype=torch.long)

    def next(self, size: int) -> torch.Tensor:
        if len(self.order) < size:
            self.order = torch.cat([self.order, torch.randperm(self.n, generator=self.generator)])
        stack, self.order = self.order[:size], self.order[size:]
        return stack


def soft(teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """The teacher's predictive distribution at ``temperature`` (Hinton et al.'s soft labels)."""
    return torch.softmax(teacher_logits / temperature, dim=-1)


def true(teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """The ground-truth labels, one-hot."""
    return F.one_hot(labels, teacher_logits.shape[-1]).to(teacher_logits.dtype)


TARGETS: dict[str, Target] = {"soft": soft, "true": true}


def select_hardest(scores: torch.Tensor, batch_size: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Indices (along the last dim) of the ``batch_size`` highest scores, hardest first; entries where
    ``valid`` is False (padding of smaller stacks) are never chosen."""
    if valid is not None:
        scores = scores.masked_fill(~valid, float("-inf"))
    return scores.topk(batch_size, dim=-1).indices


def target_loss(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student against a target distribution (one-hot or soft), per sample."""
    return -(targets * torch.log_softmax(student_logits, dim=-1)).sum(-1)


# --------------------------------------------------------------------------------- PettingZoo env
MAX_CE = float(np.log(1e12))  # the cross-entropy the teacher sees is clipped here (a finite observation bound)


PROGRESS_UPDATES = 50_000  # student updates that count as training progress 1 in the teacher's observation


def features(teacher_probs: torch.Tensor, student_probs: torch.Tensor, updates: int = 0) -> torch.Tensor:
    """What the teacher sees of each stack sample: both distributions, their cross-entropy (clipped at
    ``MAX_CE``) and distance, and the student's training progress (its updates so far over
    ``PROGRESS_UPDATES``, at most 1), so that a learned teacher can select differently late in training."""
    g, stack = torch.Generator(), Stack(teacher_probs, student_probs)
    ce, dist = cross_entropy(stack, g), euclidean(stack, g)
    progress = torch.full_like(ce, min(1.0, updates / PROGRESS_UPDATES))
    columns = [ce.clamp(max=MAX_CE), dist, progress]
    return torch.cat([teacher_probs, student_probs, torch.stack(columns, -1)], -1)


def scripted_teacher(measure: str, target: str = "soft", seed: int = 0) -> Callable:
    """A teacher policy for the env from a named measure: scores the stack from its observation alone
    (so not with a measure that reads the true labels)."""
    if MEASURES[measure].reads_labels:
        raise ValueError(f"measure {measure!r} reads the true labels, which the env's teacher does not observe")
    generator = torch.Generator().manual_seed(seed)
    flag = 1.0 if target == "soft" else -1.0

    def policy(observation: np.ndarray) -> np.ndarray:
        obs = torch.from_numpy(observation)
        classes = (obs.shape[-1] - 3) // 2  # two distributions, then CE, distance and progress
        scores = MEASURES[measure](Stack(obs[:, :classes], obs[:, classes : 2 * classes]), generator)
        scores = scores / scores.abs().max().clamp_min(1e-12)  # into [-1, 1]; a positive scale keeps the order
        return np.append(scores.numpy(), flag).astype(np.float32)

    return policy


AGENTS = ("teacher", "student")
REWARDS = ("drop", "advantage")  # the validation-loss drop, or its excess over an update on a random minibatch


ORACLE_MARGIN = 10.0  # the oracle teacher's logit of the true class over the others: 0.9996 among 10 classes


def oracle_logits(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """The logits of a teacher that knows every label: what the env uses when it is given no teacher (a
    trained one is the trainer floor's job: ``trainers.teacher_student.load_or_train_teachers`` and ``predict``)."""
    return ORACLE_MARGIN * torch.nn.functional.one_hot(labels, classes).float()


def _default_data(dataset: str, data_dir: str | Path | None) -> tuple[torch.Tensor, ...]:
    """``dataset``'s training and validation splits, and the oracle teacher's logits on the training set."""
    from envs.data import load_splits

    splits = load_splits(dataset, data_dir)
    train = splits.train
    logits = oracle_logits(train.labels, int(train.labels.max()) + 1)
    return train.images, train.labels, logits, splits.val.images, splits.val.labels


class parallel_env(TruncatingParallelEnv):
    metadata: ClassVar[dict] = {"name": "teacher_student_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(
        self,
        images: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
        val_images: torch.Tensor | None = None,
        val_labels: torch.Tensor | None = None,
        stack_size: int = 5,
        batch_size: int = 32,
        temperature: float = 1.0,
        hidden: tuple[int, ...] = (32, 32),
        lr: float = 1e-3,
        reward_samples: int = 1000,
        max_cycles: int | None = None,  # steps per episode (100); max_steps is its alias
        render_mode: str | None = None,
        max_steps: int | None = None,
        dataset: str = "mnist",
        data_dir: str | Path | None = None,
        warmup: int = 0,
        reward: str = "drop",
    ):
        """``images``/``labels``/``teacher_logits``: the training set and the frozen teacher's logits on it
        (``trainers.teacher_student.load_or_train_teachers`` + ``predict`` make a trained one); validation images for
        the reward. Without them the env reads ``dataset`` (as ``envs.data.load_splits``) with the oracle
        teacher (``oracle_logits``: it predicts every true label), so building it trains nothing; pass a
        trained teacher's logits for the thesis' setting."""
        max_steps = episode_length(max_cycles, max_steps)
        data = {"images": images, "labels": labels, "teacher_logits": teacher_logits, "val_images": val_images,
                "val_labels": val_labels}  # fmt: skip
        if not given_whole(**data):
            images, labels, teacher_logits, val_images, val_labels = _default_data(dataset, data_dir)
        if stack_size < 1 or batch_size < 1 or stack_size * batch_size > len(images):
            raise ValueError("need stack_size, batch_size >= 1 and a stack that fits in the data")
        if warmup < 0:
            raise ValueError(f"warmup is a number of student updates >= 0, got {warmup}")
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {', '.join(REWARDS)}, got {reward!r}")
        self.images, self.labels, self.teacher_probs = images, labels, torch.softmax(teacher_logits, -1)
        self.teacher_logits = teacher_logits
        self.val_images, self.val_labels = val_images[:reward_samples], val_labels[:reward_samples]
        self.stack_size, self.batch_size, self.temperature = stack_size, batch_size, temperature
        self.hidden, self.lr, self.max_steps, self.warmup, self.reward = hidden, lr, max_steps, warmup, reward
        self.classes = teacher_logits.shape[-1]
        self.render_mode = render_mode
        self.possible_agents = list(AGENTS)
        self.agents: list[str] = []
        self._generator, self._reference = torch.Generator(), torch.Generator()  # data order; advantage's draws
        self._seed = 0

    @functools.cache
    def observation_space(self, agent: str) -> spaces.Box:
        if agent == "teacher":
            high = np.concatenate([np.ones(2 * self.classes), [MAX_CE, np.sqrt(2.0), 1.0]]).astype(np.float32)
            high = np.broadcast_to(high, (self.stack_size * self.batch_size, high.size))
        else:
            high = np.ones((self.batch_size, self.images.shape[1] + self.classes), dtype=np.float32)
        return spaces.Box(low=np.zeros_like(high), high=np.array(high), dtype=np.float32)

    @functools.cache
    def action_space(self, agent: str) -> spaces.Space:
        if agent == "teacher":
            return spaces.Box(-1.0, 1.0, (self.stack_size * self.batch_size + 1,), dtype=np.float32)
        return spaces.Discrete(2)

    @torch.no_grad()
    def _val_loss(self, model: torch.nn.Module | None = None) -> float:
        model = self.student if model is None else model
        return F.cross_entropy(model(self.val_images), self.val_labels).item()

    def _observe(self, given: torch.Tensor) -> dict[str, np.ndarray]:
        self._stack = self._stacks.next(self.stack_size * self.batch_size)
        with torch.no_grad():
            student_probs = torch.softmax(self.student(self.images[self._stack]), -1)
        seen = features(self.teacher_probs[self._stack], student_probs, self._updates)
        return {"teacher": seen.numpy().astype(np.float32), "student": given.numpy().astype(np.float32)}

    @trains
    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._seed = seed
        self._generator.manual_seed(self._seed)
        self._reference.manual_seed(self._seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed)
            self.student = student(self.images.shape[1], self.hidden)
        self.optimizer = torch.optim.Adam(self.student.parameters(), lr=self.lr)
        self._stacks = EpochStacks(len(self.images), self._generator)
        self.agents, self._steps, self._updates = list(self.possible_agents), 0, 0
        warmup = int(torch.randint(self.warmup + 1, (), generator=self._generator)) if self.warmup else 0
        for _ in range(warmup):  # plain training on the next minibatch of the shuffled data
            batch = self._stacks.next(self.batch_size)
            self._update(batch, self._targets(batch, "true"))
        nothing = torch.zeros(self.batch_size, self.images.shape[1] + self.classes)
        return self._observe(nothing), {a: {} for a in self.agents}

    def _targets(self, samples: torch.Tensor, kind: str) -> torch.Tensor:
        """What the student trains on for ``samples``: the teacher's soft labels or the true ones."""
        return TARGETS[kind](self.teacher_logits[samples], self.labels[samples], self.temperature)

    def _update(self, samples: torch.Tensor, targets: torch.Tensor) -> None:
        """One Adam step of the student on ``samples`` with ``targets``."""
        _adam_step(self.student, self.optimizer, self.images[samples], targets)
        self._updates += 1

    def _plain_drop(self, kind: str, before: float) -> float:
        """The validation-loss drop that an update on a uniformly drawn minibatch of the stack gives a copy of
        the student and its optimizer (the ``advantage`` reward's reference); the student is untouched."""
        picked = self._stack[torch.randperm(len(self._stack), generator=self._reference)[: self.batch_size]]
        model, optimizer = copy.deepcopy((self.student, self.optimizer))  # one deepcopy keeps them paired
        _adam_step(model, optimizer, self.images[picked], self._targets(picked, kind))
        return before - self._val_loss(model)

    def action_text(self, agent: str) -> str:
        if agent == "teacher":
            return f"{self.action_space(agent).shape[0]} scores in [-1, 1]"
        return "0 (skip the batch) or 1 (take the update)"

    @trains
    def step(self, actions: Mapping[str, np.ndarray]):
        actions = self._actions(actions)
        action = actions["teacher"]
        chosen = self._stack[select_hardest(torch.from_numpy(action[:-1]), self.batch_size)]
        kind = "soft" if action[-1] >= 0 else "true"
        targets = self._targets(chosen, kind)
        before, update = self._val_loss(), int(actions["student"]) == 1
        plain = self._plain_drop(kind, before) if update and self.reward == "advantage" else 0.0
        if update:
            self._update(chosen, targets)
        reward = before - self._val_loss() - plain
        observations = self._observe(torch.cat([self.images[chosen], targets], -1))
        return self._end_step(
            observations, dict.fromkeys(self.agents, reward), {a: {"target": kind} for a in self.agents}
        )


def _adam_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               targets: torch.Tensor) -> None:  # fmt: skip
    loss = target_loss(model(images), targets).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


raw_env = aec(parallel_env)
env = raw_env
