"""Language channel between two agents (thesis ch. 4), as a torch core and a PettingZoo env.

| Import             | ``from envs import language; env = language.parallel_env()``            |
| AEC API            | ``language.env()`` (= ``raw_env()``, via ``parallel_to_aec``)           |
|--------------------|-------------------------------------------------------------------------|
| Actions            | MultiDiscrete ``[vocab_size] * (batch_size * message_length)``          |
| Parallel API       | Yes                                                                     |
| Agents             | ``agents = ["teacher", "student"]`` (the thesis' A and B)               |
| Observation shape  | ``(batch_size, pixels + message_length)`` float32                       |
| Observation values | view pixels in [0, 1], then received tokens in [0, vocab_size - 1]     |

Both agents see the same batch of images, each through its own fixed inversion mask (every pixel
inverted with probability ``noise``; masks are drawn once from ``seed`` and kept for the env's life),
and never the clean image nor the other's view. Each step both send one message per image:
``message_length`` tokens over ``vocab_size`` symbols, flattened row-major as ``[image, token]``.

Observation: the agent's view of the current images, followed by the tokens the other agent sent at
the previous step (zeros after ``reset``). Messages travel while both act, so a message is received one
step after it was sent; agents that want to use it keep their own memory.

Reward (per agent, per step): ``agreement + diversity_weight * diversity`` where ``agreement`` is the
fraction of tokens equal to the other agent's tokens for the same images (the env's counterpart of the
trainer's communication likelihood), and ``diversity`` the mean entropy of each token position over the
batch, in units of ``log(vocab_size)`` (so a constant language scores 0 and cannot win by agreeing).
Episodes never terminate; they truncate after ``max_steps``.

The core below (masks, views, ``exchange``, ``agreement``, ``communication_loss``) is the one the
differentiable trainer calls: it is shape-generic over leading dimensions and keeps autograd graphs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import torch
from gymnasium import spaces

from envs.base import TruncatingParallelEnv, aec
from envs.data import load_splits

AGENTS = ("teacher", "student")


# ----------------------------------------------------------------------------------- torch core
def draw_masks(noise: float, pixels: int, seed: int) -> torch.Tensor:
    """Fixed inversion masks ``[len(AGENTS), pixels]`` (1.0 = invert), Bernoulli(noise) per pixel."""
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be a probability in [0, 1], got {noise}")
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(len(AGENTS), pixels, generator=generator) < noise).float()


def apply_mask(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """An agent's partial observation: pixels under the mask are inverted (x -> 1 - x)."""
    return images + mask * (1.0 - 2.0 * images)


def views(images: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each agent's view of the same images; ``masks[..., i, :]`` belongs to ``AGENTS[i]``."""
    return {agent: apply_mask(images, masks[..., i, :].unsqueeze(-2)) for i, agent in enumerate(AGENTS)}


def exchange(messages: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Route each agent's message to the other: ``received[a]`` is the other agent's message, unchanged
    (same tensor, graph included), so a loss on what is received reaches the sender."""
    teacher, student = AGENTS
    return {teacher: messages[student], student: messages[teacher]}


def agreement(own: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
    """Fraction of tokens that agree, per message (``[..., L, V]`` one-hot or soft -> ``[...]``);
    on soft messages it is the expected agreement, so it is differentiable."""
    return (own * received).sum(-1).mean(-1)


def communication_loss(received: torch.Tensor, own_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the received message under the receiver's own token distribution (eq. 4.2.5's
    likelihood term ``-log p(s_other | x_own)``), averaged over tokens like PyTorch's default reduction
    (the scale the thesis' weights 0.01 / 0.005 were set for), per message ``[...]``."""
    return -(received * torch.log_softmax(own_logits, dim=-1)).sum(-1).mean(-1)


def diversity(messages: torch.Tensor) -> torch.Tensor:
    """Mean entropy of each token position over the batch (dim -3), in units of log(vocab_size)."""
    p = messages.mean(-3)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
    return entropy.mean(-1) / np.log(messages.shape[-1])


# --------------------------------------------------------------------------------- PettingZoo env
class parallel_env(TruncatingParallelEnv):
    metadata: ClassVar[dict] = {"name": "language_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(
        self,
        noise: float = 0.1,
        message_length: int = 32,
        vocab_size: int = 2,
        batch_size: int = 8,
        max_steps: int = 100,
        diversity_weight: float = 1.0,
        seed: int = 0,
        dataset: str = "mnist",
        data_dir: str | None = None,
        images: torch.Tensor | None = None,
        render_mode: str | None = None,
    ):
        """``images`` (``[n, pixels]`` in [0, 1]) replaces the dataset's training split, e.g. in tests."""
        if message_length < 1 or vocab_size < 2 or batch_size < 1 or max_steps < 1:
            raise ValueError("message_length, batch_size and max_steps must be >= 1 and vocab_size >= 2")
        self.images = images if images is not None else load_splits(dataset, data_dir).train.images
        self.masks = draw_masks(noise, self.images.shape[1], seed)
        self.message_length, self.vocab_size, self.batch_size = message_length, vocab_size, batch_size
        self.max_steps, self.diversity_weight = max_steps, diversity_weight
        self.render_mode = render_mode
        self.possible_agents = list(AGENTS)
        self.agents: list[str] = []
        self._generator = torch.Generator()

    @functools.cache
    def observation_space(self, agent: str) -> spaces.Box:
        high = np.concatenate([np.ones(self.images.shape[1]), np.full(self.message_length, self.vocab_size - 1)])
        high = np.broadcast_to(high, (self.batch_size, high.size)).astype(np.float32)
        return spaces.Box(low=np.zeros_like(high), high=high, dtype=np.float32)

    @functools.cache
    def action_space(self, agent: str) -> spaces.MultiDiscrete:
        return spaces.MultiDiscrete(np.full(self.batch_size * self.message_length, self.vocab_size))

    def _observe(self, received: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        idx = torch.randint(len(self.images), (self.batch_size,), generator=self._generator)
        seen = views(self.images[idx], self.masks)
        return {a: torch.cat([seen[a], received[a].float()], -1).numpy() for a in self.agents}

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._generator.manual_seed(seed)
        self.agents = list(self.possible_agents)
        self._steps = 0
        silence = torch.zeros(self.batch_size, self.message_length, dtype=torch.long)
        return self._observe(dict.fromkeys(self.agents, silence)), {a: {} for a in self.agents}

    def step(self, actions: Mapping[str, np.ndarray]):
        tokens = {}
        for a in self.agents:
            action = np.asarray(actions[a])
            if not self.action_space(a).contains(action.astype(np.int64)):
                raise ValueError(
                    f"action of {a} must be {self.batch_size * self.message_length} tokens in "
                    f"[0, {self.vocab_size}), got shape {action.shape}"
                )
            tokens[a] = torch.as_tensor(action, dtype=torch.long).reshape(self.batch_size, -1)
        one_hot = {a: torch.nn.functional.one_hot(t, self.vocab_size).float() for a, t in tokens.items()}
        received = exchange(one_hot)
        rewards = {
            a: float(agreement(one_hot[a], received[a]).mean() + self.diversity_weight * diversity(one_hot[a]))
            for a in self.agents
        }
        return self._end_step(self._observe(exchange(tokens)), rewards, {a: {} for a in self.agents})


raw_env = aec(parallel_env)
env = raw_env
