"""Teacher selects the student's training samples (thesis ch. 3): the torch core of the teacher stack.

The student sends ``stack_size`` minibatches with its predictions; the teacher adds its own, scores
every sample by a difficulty measure and returns the ``batch_size`` hardest, with its own predictions
as soft labels or with the true labels. Everything here is shape-generic over leading dimensions (the
trainer runs many students at once) and is what the scripted teachers and the env share.

A new difficulty measure is one function ``(teacher_probs, student_probs, generator) -> scores``
added to ``MEASURES``; a new target is one function added to ``TARGETS``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Measure = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
Target = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def cross_entropy(teacher_probs: torch.Tensor, student_probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``H(p_teacher, p_student) = -sum_y p_teacher(y) log p_student(y)``: high where the student is wrong."""
    return -(teacher_probs * torch.log(student_probs.clamp_min(1e-12))).sum(-1)


def euclidean(teacher_probs: torch.Tensor, student_probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``||p_teacher - p_student||_2``: a true distance, every class weighted equally."""
    return (teacher_probs - student_probs).norm(dim=-1)


def random(teacher_probs: torch.Tensor, student_probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform scores: the selection baseline (ignores both predictions)."""
    return torch.rand(teacher_probs.shape[:-1], generator=generator)


MEASURES: dict[str, Measure] = {"cross_entropy": cross_entropy, "euclidean": euclidean, "random": random}
USES_STUDENT = {"cross_entropy", "euclidean"}  # measures that need the student's predictions on the stack


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
