"""The thesis' ch. 3 models: a big dropout-regularised teacher and a small student, both ReLU MLPs."""

from __future__ import annotations

from torch import nn


def mlp(inputs: int, hidden: tuple[int, ...], classes: int = 10, dropout: float = 0.0) -> nn.Sequential:
    """``inputs -> hidden... -> classes`` with ReLU, and dropout after each hidden layer if ``dropout``."""
    layers: list[nn.Module] = []
    width = inputs
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), *([nn.Dropout(dropout)] if dropout else [])]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, classes))


def teacher(inputs: int = 784, hidden: tuple[int, ...] = (1200, 1200), dropout: float = 0.5) -> nn.Sequential:
    """784-1200-1200-10 with dropout on each hidden layer (thesis 3.2.2)."""
    return mlp(inputs, hidden, dropout=dropout)


def student(inputs: int = 784, hidden: tuple[int, ...] = (32, 32)) -> nn.Sequential:
    """784-32-32-10 without dropout (thesis 3.2.2)."""
    return mlp(inputs, hidden)


class TeacherPolicy(nn.Module):
    """An RL teacher's scorer: one score per stack sample from what the env's teacher observes of it
    (both predictive distributions, their cross-entropy and distance, the student's training progress:
    ``2 * classes + 3`` numbers)."""

    def __init__(self, classes: int = 10, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * classes + 3, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, features):
        return self.net(features).squeeze(-1)
