"""Node models of the network of nodes (thesis ch. 2) and their batched form.

A node model is an ``nn.ModuleDict`` of ``nn.Sequential`` parts built from Conv2d, ConvTranspose2d,
Linear, Flatten, Unflatten and elementwise activations: a classifier has a ``trunk`` (image -> top
hidden features) and a ``head`` (features -> logits); a VAE an ``encoder`` (-> mean and log-variance)
and a ``decoder``; a BiGAN an ``encoder``, a ``generator`` and a discriminator (``critic_x`` on the
image, ``critic`` on its features joined with the code). Following DCGAN: strided convolutions, no
pooling, LeakyReLU(0.2); ``dcgan-bn`` adds DCGAN's batch normalisation after every convolution but the
first (and every transposed convolution but the last), per node: stacked, a node's channels are channels of
their own, so one batch norm over the grouped layout is N batch norms.

``Stacked`` runs the same part of N nodes as one computation: a convolution becomes one grouped
convolution over channels-last activations ``[batch, N*C, H, W]``, a linear layer one batched matmul
over ``[N, batch, D]``. On this 2-core CPU, for ``dcgan-small`` at N=20, grouped channels-last
convolutions ran 3.3x faster than a loop, NCHW grouped 2.2x, im2col + bmm 0.8x (``benchmarks.throughput``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CHUNK_BYTES = 10 * 2**20  # activations per grouped convolution call: about what stays in this CPU's caches
ELEMENTWISE = (nn.LeakyReLU, nn.ReLU, nn.Sigmoid, nn.Tanh, nn.Identity, nn.Flatten, nn.Unflatten)
BN_MOMENTUM = 0.1  # torch's default: running statistics of each node's channels


@dataclass(frozen=True)
class ModelSpec:
    """Widths of a DCGAN-style node: channels double at each of three stride-2 convolutions; ``width`` 0 is
    an MLP classifier instead (the image flattened, one hidden layer of ``features``). ``batch_norm``: DCGAN's
    batch normalisation between the convolutions."""

    width: int
    features: int
    batch_norm: bool = False


MODELS = {
    "dcgan": ModelSpec(width=32, features=256),  # the thesis' CIFAR-10 scale, without batch norm (earlier tables)
    "dcgan-bn": ModelSpec(width=32, features=256, batch_norm=True),  # the thesis' nodes with DCGAN's batch norm
    "dcgan-bn-wide": ModelSpec(width=64, features=256, batch_norm=True),  # twice the channels: 4x the compute
    "dcgan-small": ModelSpec(width=8, features=64),  # sized down for 28x28 grey images on a CPU
    "mlp": ModelSpec(width=0, features=256),  # 784-256-10 on MNIST: for networks of a thousand nodes
}
KINDS = ("classifier", "vae", "bigan")


def _kernels(side: int) -> list[tuple[int, int]]:
    """(kernel, side after) of three stride-2 convolutions: 4x4 halves an even side, 3x3 rounds up an odd one."""
    out = []
    for _ in range(3):
        kernel = 4 if side % 2 == 0 else 3
        side = (side + 2 - kernel) // 2 + 1
        out.append((kernel, side))
    return out


def _norm(channels: int, on: bool) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)] if on else []


def _convs(shape: Sequence[int], spec: ModelSpec) -> tuple[list[nn.Module], int]:
    layers, channels, kernels = [], shape[0], _kernels(shape[1])
    for i, (kernel, _) in enumerate(kernels):
        out = spec.width * 2**i
        layers += [nn.Conv2d(channels, out, kernel, 2, 1), *_norm(out, spec.batch_norm and i > 0), nn.LeakyReLU(0.2)]
        channels = out
    return [*layers, nn.Flatten()], channels * kernels[-1][1] ** 2


def _deconvs(shape: Sequence[int], spec: ModelSpec) -> nn.Sequential:
    """The encoder's mirror: code -> image in [0, 1]."""
    kernels = _kernels(shape[1])
    channels, side = spec.width * 4, kernels[-1][1]
    layers: list[nn.Module] = [nn.Linear(spec.features, channels * side * side), nn.LeakyReLU(0.2)]
    layers.append(nn.Unflatten(1, (channels, side, side)))
    for i, (kernel, _) in reversed(list(enumerate(kernels))):
        out = shape[0] if i == 0 else spec.width * 2 ** (i - 1)
        layers.append(nn.ConvTranspose2d(channels, out, kernel, 2, 1))
        layers += [nn.Sigmoid()] if i == 0 else [*_norm(out, spec.batch_norm), nn.LeakyReLU(0.2)]
        channels = out
    return nn.Sequential(*layers)


def node_model(kind: str, shape: Sequence[int], spec: ModelSpec, classes: int = 10) -> nn.ModuleDict:
    """One node: ``classifier`` (trunk, head), ``vae`` (encoder, decoder) or ``bigan`` (encoder,
    generator, critic_x, critic); codes of ``spec.features`` dimensions."""
    if not spec.width:
        if kind != "classifier":
            raise ValueError(f"the MLP node model is a classifier; {kind} nodes need a DCGAN model")
        trunk = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), spec.features), nn.LeakyReLU(0.2))
        return nn.ModuleDict({"trunk": trunk, "head": nn.Sequential(nn.Linear(spec.features, classes))})
    convs, flat = _convs(shape, spec)
    z = spec.features
    if kind == "classifier":
        trunk = nn.Sequential(*convs, nn.Linear(flat, z), nn.LeakyReLU(0.2))
        return nn.ModuleDict({"trunk": trunk, "head": nn.Sequential(nn.Linear(z, classes))})
    if kind == "vae":
        return nn.ModuleDict(
            {"encoder": nn.Sequential(*convs, nn.Linear(flat, 2 * z)), "decoder": _deconvs(shape, spec)}
        )
    if kind == "bigan":
        critic_convs, _ = _convs(shape, spec)
        return nn.ModuleDict({
            "encoder": nn.Sequential(*convs, nn.Linear(flat, z)),
            "generator": _deconvs(shape, spec),
            "critic_x": nn.Sequential(*critic_convs),
            "critic": nn.Sequential(nn.Linear(flat + z, spec.features), nn.LeakyReLU(0.2), nn.Linear(spec.features, 1)),
        })
    raise ValueError(f"unknown node model kind {kind!r}; choose from {', '.join(KINDS)}")


def seeded_models(kind: str, shape: Sequence[int], spec: ModelSpec, classes: int, seeds: Sequence[int]) -> list:
    """One node model per seed, each initialised from its own seed alone (not from what was built before it),
    so a node starts the same whichever nodes are built beside it."""
    models = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            models.append(node_model(kind, shape, spec, classes))
    return models


class Stacked(nn.Module):
    """The same ``nn.Sequential`` part of ``len(models)`` nodes, called on per-node inputs ``[N, batch, ...]``.

    Parameters are the nodes' own, concatenated (convolutions, along output channels; transposed
    convolutions, along input channels; batch norms, along channels, with their running statistics as
    buffers) or stacked (linear layers), so one Adam over them is N Adams. ``train()``/``eval()`` switch the
    batch norms between batch and running statistics, as for one node.
    """

    def __init__(self, models: Sequence[nn.Sequential]):
        super().__init__()
        self.n = len(models)
        self.layers = list(models[0])
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, layer in enumerate(self.layers):
            parts = [m[i] for m in models]
            if isinstance(layer, nn.Linear):
                self.weights.append(torch.stack([p.weight.detach() for p in parts]).transpose(1, 2).contiguous())
                self.biases.append(torch.stack([p.bias.detach() for p in parts]).unsqueeze(1))
            elif isinstance(layer, nn.Conv2d | nn.ConvTranspose2d | nn.BatchNorm2d):
                self.weights.append(torch.cat([p.weight.detach() for p in parts]))
                self.biases.append(torch.cat([p.bias.detach() for p in parts]))
                if isinstance(layer, nn.BatchNorm2d):
                    self.register_buffer(f"running_mean{i}", torch.cat([p.running_mean for p in parts]))
                    self.register_buffer(f"running_var{i}", torch.cat([p.running_var for p in parts]))
            elif not isinstance(layer, ELEMENTWISE):
                raise TypeError(f"Stacked cannot batch {type(layer).__name__}; use the layers listed in agents.network")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[N, batch, C, H, W]`` or ``[N, batch, D]``; the output keeps the leading ``[N, batch]``."""
        params = dict(zip((i for i, layer in enumerate(self.layers) if _weighted(layer)),
                          zip(self.weights, self.biases, strict=True), strict=True))
        i = 0
        while i < len(self.layers):
            if x.dim() == 5 and isinstance(self.layers[i], nn.Flatten):  # an MLP: images in, no convolution
                x, i = x.flatten(2), i + 1
            elif x.dim() == 5 or isinstance(self.layers[i], nn.Unflatten):  # convolutions, up to a Flatten
                end = next((j + 1 for j in range(i, len(self.layers)) if isinstance(self.layers[j], nn.Flatten)),
                           len(self.layers))
                x, i = self._grid(x, i, end, params), end
            else:
                layer = self.layers[i]
                x = torch.baddbmm(params[i][1], x, params[i][0]) if isinstance(layer, nn.Linear) else layer(x)
                i += 1
        return x

    def _grid(self, x: torch.Tensor, start: int, end: int, params: dict) -> torch.Tensor:
        """Layers ``start:end`` (convolutions between an Unflatten and a Flatten) on ``x`` ``[N, batch, ...]``,
        in chunks of nodes whose largest activation fits ``CHUNK_BYTES``: one grouped convolution over 20
        ``dcgan`` nodes (20 MB activations at batch 32) ran 18% slower than two over 10 (cache-sized); a whole
        ``dcgan-small`` stack (4 MB) is one chunk (``benchmarks.throughput``)."""
        n, batch = x.shape[:2]
        largest = batch * max(_sizes(self.layers[start:end], x.shape[2:])) * x.element_size()
        chunks = math.ceil(n / max(1, CHUNK_BYTES // max(largest, 1)))
        size = math.ceil(n / chunks)
        tensors = {i: (*wb, *self._statistics(i)) for i, wb in params.items() if start <= i < end}
        pieces = {i: [t.split(len(t) // n * size) for t in ts] for i, ts in tensors.items()}
        outs = []
        for c, part in enumerate(x.split(size)):  # statistics' pieces are views: their updates reach the buffers
            outs.append(self._run(part, start, end, {i: tuple(t[c] for t in ts) for i, ts in pieces.items()}))
        return torch.cat(outs)

    def _statistics(self, i: int) -> tuple[torch.Tensor, ...]:
        """Layer ``i``'s running mean and variance (a batch norm), else nothing."""
        return (getattr(self, f"running_mean{i}"), getattr(self, f"running_var{i}")) if isinstance(
            self.layers[i], nn.BatchNorm2d) else ()

    def _run(self, x: torch.Tensor, start: int, end: int, params: dict) -> torch.Tensor:
        """Layers ``start:end`` on one chunk of nodes: grouped channels-last convolutions."""
        n, batch = x.shape[:2]
        if x.dim() == 5:
            x = x.transpose(0, 1).reshape(batch, -1, *x.shape[3:]).contiguous(memory_format=torch.channels_last)
        for i in range(start, end):
            layer = self.layers[i]
            if isinstance(layer, nn.Conv2d):
                w, b = params[i]
                x = F.conv2d(x, w, b, layer.stride, layer.padding, groups=n)
            elif isinstance(layer, nn.ConvTranspose2d):
                w, b = params[i]
                x = F.conv_transpose2d(x, w, b, layer.stride, layer.padding, layer.output_padding, groups=n)
            elif isinstance(layer, nn.BatchNorm2d):  # [batch, n*C, H, W]: each node's channels on their own
                w, b, mean, var = params[i]
                x = F.batch_norm(x, mean, var, w, b, self.training, layer.momentum, layer.eps)
            elif isinstance(layer, nn.Flatten):
                return x.reshape(batch, n, -1).transpose(0, 1)
            elif isinstance(layer, nn.Unflatten):
                x = x.transpose(0, 1).reshape(batch, -1, *layer.unflattened_size[1:])
                x = x.contiguous(memory_format=torch.channels_last)
            else:
                x = layer(x)
        return x.reshape(batch, n, -1, *x.shape[2:]).transpose(0, 1)


def _weighted(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Linear | nn.Conv2d | nn.ConvTranspose2d | nn.BatchNorm2d)


def _sizes(layers: Sequence[nn.Module], shape: Sequence[int]) -> list[int]:
    """Per-sample sizes of the input and of every convolution's output of ``layers`` on one node's ``shape``."""
    if len(shape) == 1:  # an Unflatten first
        shape = layers[0].unflattened_size
    c, side = shape[-3], shape[-1]  # square images
    sizes = [c * side * side]
    for layer in layers:
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            k, s, p = layer.kernel_size[0], layer.stride[0], layer.padding[0]
            if isinstance(layer, nn.Conv2d):
                side = (side + 2 * p - k) // s + 1
            else:
                side = (side - 1) * s - 2 * p + k + layer.output_padding[0]
            sizes.append(layer.out_channels * side * side)
    return sizes


def stack(models: Sequence[nn.ModuleDict]) -> nn.ModuleDict:
    """Every part of ``models`` (nodes of one kind), stacked: ``stack(models)[part](x)``."""
    return nn.ModuleDict({name: Stacked([m[name] for m in models]) for name in models[0]})
