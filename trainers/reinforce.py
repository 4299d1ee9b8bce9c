"""REINFORCE: the score-function gradient estimator, shared by every chapter's discrete decisions.

For a sampled action ``a ~ pi(.|x)`` with reward ``R``, ``(R - b) * grad log pi(a|x)`` is an unbiased
estimate of ``grad E[R]`` whenever the baseline ``b`` does not depend on ``a``. Ours is a running mean of
past rewards (bias-corrected, as Adam's moments; 0 before the first update), computed *before* the
current batch is folded in, so it never sees the actions it scores. An entropy bonus keeps the policy
from collapsing early. Rewards and baselines are per run, so batched runs do not share baselines.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Reinforce:
    entropy_weight: float = 0.01
    baseline_decay: float = 0.99

    def __post_init__(self) -> None:
        if not 0.0 <= self.baseline_decay < 1.0 or self.entropy_weight < 0:
            raise ValueError(
                f"need 0 <= baseline_decay < 1 and entropy_weight >= 0, "
                f"got {self.baseline_decay} and {self.entropy_weight}"
            )
        self.mean: torch.Tensor | None = None  # the running mean, before bias correction
        self.updates = 0

    def baseline(self, runs: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The current baseline per run (0 before any reward was seen)."""
        if self.mean is None:
            return torch.zeros(runs, device=device)
        return self.mean.to(device) / (1 - self.baseline_decay**self.updates)

    def loss(self, log_prob: torch.Tensor, reward: torch.Tensor, entropy: torch.Tensor | None = None) -> torch.Tensor:
        """Surrogate loss ``[runs]`` whose gradient is ``-mean((R - b) grad log pi) - entropy_weight grad H``.

        ``log_prob``, ``reward`` (and ``entropy``): ``[runs, samples]``; rewards are treated as constants.
        Updates the baseline with this batch's mean reward afterwards.
        """
        reward = reward.detach()
        advantage = reward - self.baseline(reward.shape[0], reward.device).unsqueeze(-1)
        loss = -(advantage * log_prob).mean(-1)
        if entropy is not None:
            loss = loss - self.entropy_weight * entropy.mean(-1)
        batch_mean = reward.mean(-1)
        previous = torch.zeros_like(batch_mean) if self.mean is None else self.mean.to(batch_mean.device)
        self.mean = self.baseline_decay * previous + (1 - self.baseline_decay) * batch_mean
        self.updates += 1
        return loss

    def state_dict(self) -> dict:
        return {"mean": self.mean, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.updates = state["mean"], state["updates"]
