"""Gumbel-Softmax messages with caller-supplied noise (so each run draws from its own generator), the
thesis' annealing schedule ``max(floor, start * factor ** (step // every))``, and exact samples from
the same noise for the REINFORCE estimator."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from envs.base import above, at_least
from trainers.base import check_fields, option


def gumbel_noise(uniform: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise from uniform noise (clamped away from 0 and 1, where it is infinite)."""
    return -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))


def gumbel_softmax(logits: torch.Tensor, temperature: float, uniform: torch.Tensor, hard: bool = False) -> torch.Tensor:
    """Relaxed one-hot sample of ``softmax(logits)`` from uniform noise of the same shape; ``hard``
    gives one-hot values with the relaxed sample's gradient (straight-through)."""
    soft = torch.softmax((logits + gumbel_noise(uniform)) / temperature, dim=-1)
    if not hard:
        return soft
    return hard_message(soft) - soft.detach() + soft


def sampled_message(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """An exact one-hot sample of ``softmax(logits)`` (Gumbel-max), without a gradient: REINFORCE's message."""
    return hard_message((logits + gumbel_noise(uniform)).detach())


def hard_message(logits: torch.Tensor) -> torch.Tensor:
    """The one-hot message used at evaluation: the most likely token of each head."""
    return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)


@dataclass(frozen=True)
class TemperatureSchedule:
    start: float = option(1.0, "Gumbel-Softmax temperature at step 0")
    factor: float = option(0.8, "temperature multiplier every --temperature-every steps")
    every: int = option(1000, "steps between temperature decays")
    floor: float = option(0.1, "lowest temperature")

    def __post_init__(self) -> None:
        check_fields(self)
        above(0, temperature_start=self.start, temperature_floor=self.floor)
        if not 0 < self.factor <= 1:
            raise ValueError(f"temperature factor must be in (0, 1], got {self.factor}")
        at_least(1, temperature_every=self.every)

    def __call__(self, step: int) -> float:
        return max(self.floor, self.start * self.factor ** (step // self.every))
