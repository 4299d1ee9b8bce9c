"""The thesis' ch. 4 models, each one run's worth (trainers stack many runs with ``torch.func``).

Speaker protocol (what ``--agent package.module:ClassName`` must provide):

- ``__init__(self, view_dim: int, message_length: int, vocab_size: int)``, keyword arguments;
- ``forward(view: Tensor[B, view_dim]) -> (logits: Tensor[B, message_length, vocab_size],
  features: Tensor[B, H])`` where ``features`` is the last hidden layer before the message layer
  (the linear probe reads it);
- deterministic, with no in-place change of its input or its parameters. Message sampling
  (Gumbel-Softmax) is the trainer's job, not the speaker's.

The trainer runs many copies at once with ``torch.func.vmap``; a class vmap cannot batch (``nn.GRU``,
``.item()``, Python branching on data) runs one copy at a time instead, slower
(``trainers.language.speaker_check``). Examples: ``agents/speakers.py``.
"""

from __future__ import annotations

import torch
from torch import nn


class Speaker(nn.Module):
    """Message generator: ReLU MLP on the view, then ``message_length`` heads of ``vocab_size`` logits.
    ``layer_norm`` puts a LayerNorm before each ReLU (our addition: it keeps hidden units alive)."""

    def __init__(
        self,
        view_dim: int,
        message_length: int,
        vocab_size: int,
        hidden: tuple[int, ...] = (256, 256),
        layer_norm: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = view_dim
        for h in hidden:
            layers += [nn.Linear(width, h), *([nn.LayerNorm(h)] if layer_norm else []), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.heads = nn.Linear(width, message_length * vocab_size)
        self.message_shape = (message_length, vocab_size)

    def forward(self, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(view)
        return self.heads(features).unflatten(-1, self.message_shape), features


class Critic(nn.Module):
    """MI discriminator: a logit saying whether (view, message) came from the joint distribution."""

    def __init__(self, view_dim: int, message_length: int, vocab_size: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(view_dim + message_length * vocab_size, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, view: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([view, message.flatten(-2)], -1)).squeeze(-1)


class LinearProbe(nn.Module):
    """Linear classifier read out of frozen features: the thesis' measure of what the features know."""

    def __init__(self, features: int, classes: int = 10):
        super().__init__()
        self.linear = nn.Linear(features, classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)
