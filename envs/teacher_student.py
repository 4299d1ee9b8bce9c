"""Teacher selects the student's training samples (thesis ch. 3): the teacher stack's core (``envs.selection``)
as a PettingZoo parallel env:

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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces

from agents.teacher_student import student
from envs.base import TruncatingParallelEnv, aec, episode_length, given_whole, trains
from envs.selection import MEASURES, TARGETS, EpochStacks, Stack, cross_entropy, euclidean, select_hardest, target_loss

MAX_CE = float(np.log(1e12))  # the cross-entropy the teacher sees is clipped here (a finite observation bound)


PROGRESS_UPDATES = 50_000  # student updates that count as training progress 1 in the teacher's observation


def features(teacher_probs: torch.Tensor, student_probs: torch.Tensor, updates: int = 0,
             labels: torch.Tensor | None = None) -> torch.Tensor:
    """What the teacher sees of each stack sample: both distributions, their cross-entropy (clipped at
    ``MAX_CE``) and distance, and the student's training progress (its updates so far over
    ``PROGRESS_UPDATES``, at most 1), so that a learned teacher can select differently late in training; with
    ``labels``, also the teacher's and the student's probability of each sample's given label (what a
    mislabelled sample betrays: a teacher confident elsewhere)."""
    g, stack = torch.Generator(), Stack(teacher_probs, student_probs)
    ce, dist = cross_entropy(stack, g), euclidean(stack, g)
    progress = torch.full_like(ce, min(1.0, updates / PROGRESS_UPDATES))
    columns = [ce.clamp(max=MAX_CE), dist, progress]
    if labels is not None:
        columns += [p.gather(-1, labels.unsqueeze(-1)).squeeze(-1) for p in (teacher_probs, student_probs)]
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
        observe_labels: bool = False,
    ):
        """``images``/``labels``/``teacher_logits``: the training set and the frozen teacher's logits on it
        (``trainers.teacher_student.load_or_train_teachers`` + ``predict`` make a trained one); validation images for
        the reward. Without them the env reads ``dataset`` (as ``envs.data.load_splits``) with the oracle
        teacher (``oracle_logits``: it predicts every true label), so building it trains nothing; pass a
        trained teacher's logits for the thesis' setting. ``observe_labels``: the teacher also sees both models'
        probability of each stack sample's given label (``features``)."""
        max_steps = episode_length(max_cycles, max_steps)
        data = {"images": images, "labels": labels, "teacher_logits": teacher_logits, "val_images": val_images,
                "val_labels": val_labels}
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
        self.observe_labels = observe_labels
        self.classes = teacher_logits.shape[-1]
        self.render_mode = render_mode
        self.possible_agents = list(AGENTS)
        self.agents: list[str] = []
        self._generator, self._reference = torch.Generator(), torch.Generator()  # data order; advantage's draws
        self._seed = 0

    @functools.cache
    def observation_space(self, agent: str) -> spaces.Box:
        if agent == "teacher":
            labels = [1.0, 1.0] if self.observe_labels else []
            high = np.concatenate([np.ones(2 * self.classes), [MAX_CE, np.sqrt(2.0), 1.0], labels]).astype(np.float32)
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
        labels = self.labels[self._stack] if self.observe_labels else None
        seen = features(self.teacher_probs[self._stack], student_probs, self._updates, labels)
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
               targets: torch.Tensor) -> None:
    loss = target_loss(model(images), targets).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


raw_env = aec(parallel_env)
env = raw_env
