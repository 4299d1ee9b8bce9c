"""Example plug-in speakers (``--agent agents.speakers:GRUSpeaker``): one MLP, one CNN, one recurrent.

Each follows the speaker protocol of agents/language.py. The MLP and CNN run batched under vmap; the GRU
cannot (vmap has no batching rule for ``aten::gru``), so the trainer runs its copies one per run.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _square(view_dim: int) -> int:
    side = math.isqrt(view_dim)
    if side * side != view_dim:
        raise ValueError(f"this speaker reads square images; view_dim={view_dim} is not a square")
    return side


class _Heads(nn.Module):
    """Body features -> ``message_length`` heads of ``vocab_size`` logits; returns (logits, features)."""

    def __init__(self, width: int, message_length: int, vocab_size: int):
        super().__init__()
        self.linear = nn.Linear(width, message_length * vocab_size)
        self.shape = (message_length, vocab_size)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear(features).unflatten(-1, self.shape), features


class MLPSpeaker(nn.Module):
    """Two ReLU layers on the flat view (the thesis' speaker with 128 units)."""

    def __init__(self, view_dim: int, message_length: int, vocab_size: int, hidden: int = 128):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(view_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.heads = _Heads(hidden, message_length, vocab_size)

    def forward(self, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.body(view))


class ConvSpeaker(nn.Module):
    """One strided convolution on the image, then a ReLU layer."""

    def __init__(self, view_dim: int, message_length: int, vocab_size: int, hidden: int = 128):
        super().__init__()
        side = _square(view_dim)
        out = (side - 5) // 2 + 1
        self.body = nn.Sequential(
            nn.Unflatten(-1, (1, side, side)),
            nn.Conv2d(1, 16, 5, 2),
            nn.ReLU(),
            nn.Flatten(-3),
            nn.Linear(16 * out * out, hidden),
            nn.ReLU(),
        )
        self.heads = _Heads(hidden, message_length, vocab_size)

    def forward(self, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.body(view))


class GRUSpeaker(nn.Module):
    """A GRU reads the image row by row; its last hidden state is the features."""

    def __init__(self, view_dim: int, message_length: int, vocab_size: int, hidden: int = 128):
        super().__init__()
        self.side = _square(view_dim)
        self.gru = nn.GRU(self.side, hidden, batch_first=True)
        self.heads = _Heads(hidden, message_length, vocab_size)

    def forward(self, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, last = self.gru(view.unflatten(-1, (self.side, self.side)))
        return self.heads(last[-1])
