"""The thesis' ch. 3 models: a big dropout-regularised teacher and a small student, both ReLU MLPs; on CIFAR-10,
chapter 2's DCGAN-style classifiers (without batch norm), where a backward pass is expensive; and Loshchilov &
Hutter's MNIST CNN for their preset."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from agents.network import MODELS, node_model

CONV_MODELS = tuple(name for name, spec in MODELS.items() if spec.width and not spec.batch_norm)


def mlp(inputs: int, hidden: tuple[int, ...], classes: int = 10, dropout: float = 0.0) -> nn.Sequential:
    """``inputs -> hidden... -> classes`` with ReLU, and dropout after each hidden layer if ``dropout``."""
    layers: list[nn.Module] = []
    width = inputs
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), *([nn.Dropout(dropout)] if dropout else [])]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, classes))


def lh_cnn(shape: Sequence[int], classes: int = 10) -> nn.Sequential:
    """Loshchilov & Hutter's (2016) network, as their reference code builds it (Lasagne's MNIST CNN with batch norm):
    two 5x5 convolutions of 32 filters, each followed by batch norm (epsilon 1e-4, running averages with momentum
    0.15), ReLU and 2x2 max-pooling; then 50% dropout, 256 ReLU units and the output layer; Glorot-uniform weights
    and zero biases (Lasagne's defaults). The ReLU runs after the pooling: the same function and gradients (a ReLU
    is monotone, so it commutes with a max), on a quarter of the values (a training step 12% faster)."""
    channels, height, width = shape
    layers: list[nn.Module] = [nn.Unflatten(1, tuple(shape))]
    for c_in in (channels, 32):
        layers += [nn.Conv2d(c_in, 32, 5), nn.BatchNorm2d(32, eps=1e-4, momentum=0.15), nn.MaxPool2d(2), nn.ReLU()]
    side = lambda s: ((s - 4) // 2 - 4) // 2  # noqa: E731 (two valid 5x5 convolutions, each pooled by 2)
    model = nn.Sequential(*layers, nn.Flatten(), nn.Dropout(0.5), nn.Linear(32 * side(height) * side(width), 256),
                          nn.ReLU(), nn.Linear(256, classes))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


CLASSIFIERS = ("mlp", *CONV_MODELS, "lh-cnn")  # what ``classifier`` builds


def classifier(shape: Sequence[int], model: str = "mlp", hidden: tuple[int, ...] = (32, 32), classes: int = 10,
               dropout: float = 0.0) -> nn.Sequential:
    """A classifier of flattened images of ``shape``: the ReLU ``mlp`` with ``hidden`` widths, one of chapter 2's
    convolutional classifiers (``CONV_MODELS``: no dropout, no batch norm) or Loshchilov & Hutter's ``lh-cnn`` (its
    own dropout and batch norm), the image unflattened first."""
    if model == "mlp":
        return mlp(math.prod(shape), hidden, classes, dropout)
    if model not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {model!r}; choose one of {', '.join(CLASSIFIERS)}")
    if dropout or len(shape) != 3:
        raise ValueError(f"the {model} classifier takes images (channels, height, width) and has no dropout; got "
                         f"shape {tuple(shape)} and dropout {dropout}")
    if model == "lh-cnn":
        return lh_cnn(shape, classes)
    parts = node_model("classifier", shape, MODELS[model], classes)
    return nn.Sequential(nn.Unflatten(1, tuple(shape)), *parts["trunk"], *parts["head"])


@torch.no_grad()
def multiply_adds(model: nn.Module, shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass of ``model`` on one image of ``shape`` (convolutions and linear layers:
    the cost unit that compares a teacher's forward with a student's)."""
    total = 0

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
            total += output[0].numel() * per_output
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        model.eval()(torch.zeros(1, math.prod(shape)))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def student(inputs: int = 784, hidden: tuple[int, ...] = (32, 32)) -> nn.Sequential:
    """784-32-32-10 without dropout (thesis 3.2.2)."""
    return mlp(inputs, hidden)


class TeacherPolicy(nn.Module):
    """An RL teacher's scorer: one score per stack sample from what the env's teacher observes of it
    (both predictive distributions, their cross-entropy and distance, the student's training progress:
    ``2 * classes + 3`` numbers, and with ``observe_labels`` both models' probability of the sample's given label),
    read through class-blind features (``class_blind``): with the raw distributions as inputs, REINFORCE learned to
    prefer the samples of two or three classes (their probability columns), and the students it taught collapsed
    to 39% accuracy."""

    def __init__(self, classes: int = 10, hidden: int = 32, observe_labels: bool = False):
        super().__init__()
        self.classes = classes
        inputs = CLASS_BLIND + 2 * observe_labels
        self.net = nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, observed):
        return self.net(class_blind(observed, self.classes)).squeeze(-1)


CLASS_BLIND = 10  # features per sample of ``class_blind``


def class_blind(observed: torch.Tensor, classes: int) -> torch.Tensor:
    """Features of the teacher's observation that no relabelling of the classes changes: each
    distribution's top probability and entropy, the student's probability of the teacher's top class and
    the teacher's of the student's, whether their top classes agree, then the observation's cross-entropy,
    distance and training progress."""
    t, s, rest = observed[..., :classes], observed[..., classes : 2 * classes], observed[..., 2 * classes :]
    t_top, s_top = t.argmax(-1, keepdim=True), s.argmax(-1, keepdim=True)

    def entropy(p: torch.Tensor) -> torch.Tensor:
        return -(p * torch.log(p.clamp_min(1e-12))).sum(-1, keepdim=True)

    return torch.cat([t.gather(-1, t_top), s.gather(-1, s_top), s.gather(-1, t_top), t.gather(-1, s_top),
                      (t_top == s_top).float(), entropy(t), entropy(s), rest], -1)
