"""The teacher stack's core (thesis ch. 3): what a selection rule reads of a stack of samples, the difficulty
measures, the rules that turn scores into the samples sent, the targets, and the one sampler of stacks.

The student sends ``stack_size`` minibatches with its predictions; the teacher adds its own, scores
every sample by a difficulty measure and returns the ``batch_size`` hardest, with its own predictions
as soft labels or with the true labels. Everything here is shape-generic over leading dimensions (the
trainer runs many students at once) and is what the scripted teachers, the env (``envs.teacher_student``)
and the batched trainer share.

A new difficulty measure is a ``Measure`` wrapping one function ``(stack, generator) -> scores`` (a
``Stack`` holds both predictive distributions, the labels, an irreducible loss and the training step),
added to ``MEASURES``, saying what it reads (the student's predictions cost forward passes). A ``Rule``
turns a measure's scores into the samples sent: the hardest (the thesis), or a draw by rank with a
selection pressure, an annealing schedule and a floor. A new target is one function added to
``TARGETS``. ``EpochStacks`` is the one sampler of stacks, used by the env and the batched trainer alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Target = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class Stack:
    """What a selection rule knows of a stack of samples (any leading dimensions, e.g. runs): both
    predictive distributions ``[..., S, classes]``, the true labels ``[..., S]``, an irreducible-loss
    model's loss on each sample's true label ``[..., S]`` (RHO-LOSS; None without such a model), the
    student's backward passes so far (what schedules read) and the student's latest known loss on each sample
    ``[..., S]`` (Loshchilov & Hutter; None where no trainer keeps them)."""

    teacher_probs: torch.Tensor
    student_probs: torch.Tensor
    labels: torch.Tensor | None = None
    irreducible: torch.Tensor | None = None
    step: int = 0
    own_loss: torch.Tensor | None = None


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


def loss(stack: Stack, generator: torch.Generator) -> torch.Tensor:
    """The student's loss on the true label (RHO-LOSS's "train loss" baseline): high where the student is
    wrong, with no teacher, and highest on mislabelled samples."""
    return label_loss(stack.student_probs, stack.labels)


def irreducible(stack: Stack, generator: torch.Generator) -> torch.Tensor:
    """Minus the irreducible-loss model's loss (RHO-LOSS's "irreducible loss" baseline): what the held-out model
    finds easy goes first, whatever the student knows already."""
    return -stack.irreducible


def own_loss(stack: Stack, generator: torch.Generator) -> torch.Tensor:
    """Loshchilov & Hutter's online batch selection: the student's own latest known loss on each sample, from
    the training pass that last sent it (or the last recomputation): no forward pass and no teacher, but stale
    by as long as the sample was last seen (+inf: never seen yet, so sent first)."""
    if stack.own_loss is None:
        raise ValueError("own_loss ranks by the student's latest known losses, which only a trainer keeps")
    return stack.own_loss


def own_reducible(stack: Stack, generator: torch.Generator) -> torch.Tensor:
    """The stale reducible loss: the student's latest known loss (``own_loss``) minus the teacher's on the given
    label (``reducible``'s irreducible loss). Loshchilov & Hutter's ranking costs no forward pass but sends the
    mislabelled samples first, whose own loss stays highest; the teacher's loss on them is high too, so here
    they score low, still without a forward pass of the student."""
    return own_loss(stack, generator) - label_loss(stack.teacher_probs, stack.labels)


@dataclass(frozen=True)
class Measure:
    """A difficulty measure: ``score(stack, generator) -> scores``, and what it reads: the student's
    predictions on the stack (a forward pass per stack minibatch), the teacher's, the true labels (which
    the env's teacher does not observe), the irreducible-loss model of ``reducible_holdout`` and the student's
    latest known losses (``own_loss``: such a measure can rank the whole training set, not only a stack)."""

    score: Callable[[Stack, torch.Generator], torch.Tensor]
    reads_student: bool = True
    reads_teacher: bool = True
    reads_labels: bool = False
    reads_irreducible: bool = False
    reads_own_loss: bool = False

    def __call__(self, stack: Stack, generator: torch.Generator) -> torch.Tensor:
        return self.score(stack, generator)


MEASURES: dict[str, Measure] = {
    "cross_entropy": Measure(cross_entropy),
    "euclidean": Measure(euclidean),
    "random": Measure(random, reads_student=False, reads_teacher=False),
    "reducible": Measure(reducible, reads_labels=True),
    "reducible_holdout": Measure(reducible_holdout, reads_teacher=False, reads_labels=True, reads_irreducible=True),
    "loss": Measure(loss, reads_teacher=False, reads_labels=True),
    "irreducible": Measure(irreducible, reads_student=False, reads_teacher=False, reads_labels=True,
                           reads_irreducible=True),
    "own_loss": Measure(own_loss, reads_student=False, reads_teacher=False, reads_labels=True, reads_own_loss=True),
    "own_reducible": Measure(own_reducible, reads_student=False, reads_labels=True, reads_own_loss=True),
}
# The measures that read the student's latest known losses: the only ones that can rank the whole training set
OWN_LOSS = tuple(name for name, measure in MEASURES.items() if measure.reads_own_loss)


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

    def by_rank(self, n: int, step: int = 0) -> torch.Tensor:
        """The probability of each rank 0..n-1 (0 = hardest) of ``n`` samples, as ``probabilities`` gives it to the
        sample holding that rank: what a sorted whole training set is drawn from."""
        p = torch.softmax(-math.log(self.pressure_at(step)) * torch.arange(n) / n, -1)
        return (1 - self.floor) * p + self.floor / n

    def probabilities(self, scores: torch.Tensor, step: int = 0, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Each sample's probability of being drawn first, ``[..., S]`` (0 on padding, ``valid`` False)."""
        valid = torch.ones_like(scores, dtype=torch.bool) if valid is None else valid
        n = valid.sum(-1, keepdim=True)
        ranks = scores.masked_fill(~valid, float("-inf")).argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
        logits = -math.log(self.pressure_at(step)) * ranks / n
        p = torch.softmax(logits.masked_fill(~valid, float("-inf")), -1)
        return (1 - self.floor) * p + self.floor * valid / n

    def __call__(self, stack: Stack, batch_size: int, generator: torch.Generator,
                 valid: torch.Tensor | None = None) -> torch.Tensor:
        """Indices (along the stack) of the ``batch_size`` samples sent."""
        scores = MEASURES[self.measure](stack, generator)
        if math.isinf(self.pressure):
            return select_hardest(scores, batch_size, valid)
        return draw(self.probabilities(scores, stack.step, valid), batch_size, generator)


def draw(p: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """``batch_size`` indices along the last dim drawn without replacement with probabilities ``p`` (Gumbel
    top-k), in one call for any leading dimensions."""
    uniform = torch.rand(p.shape, generator=generator).clamp_min(1e-20)
    keys = torch.log(p) - torch.log(-torch.log(uniform))
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
