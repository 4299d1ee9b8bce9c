"""Unsupervised node objectives (thesis ch. 2, Table 2.3) and their evaluation by linear probes.

VAE nodes minimise the negative ELBO (Bernoulli reconstruction summed over pixels + KL to N(0, I)); a
received sample adds ``comm_weight * KL(sender's Gaussian || mine)``. BiGAN nodes play the BiGAN game
(critic on (image, code) pairs: real images with their encoding vs generated images with their noise;
non-saturating losses); a received sample adds ``comm_weight * MSE(my encoding, sender's)``.
Each node's features (the VAE's mean, the BiGAN's encoding) are judged by a linear classifier trained
on the full training set with early stopping on validation; the collective decision combines them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from envs.network import Content
from envs.routing import Minibatch, node_seed

if TYPE_CHECKING:
    from trainers.network import NetworkTrainer

UNSUPERVISED = ("vae", "bigan")
PROBE = 2  # node_seed(seed, node, PROBE, step): the stream of a node's probe at an evaluation
Noise = Callable[..., torch.Tensor]
"""``noise(*shape)``: standard normal noise ``[nodes, *shape]`` from each seed's own generator."""


def received_loss(content: Content | None, weight: float, batch: Minibatch, own: torch.Tensor) -> torch.Tensor:
    """``weight`` times the content's loss where a sample came from the inbox, else 0 (``content`` None:
    the nodes do not communicate)."""
    if content is None:
        return own.new_zeros(batch.received.shape)
    return torch.where(batch.received, weight * content.loss(own, batch.payload), 0.0)


def vae_losses(parts: nn.ModuleDict, x: torch.Tensor, noise: Noise, batch: Minibatch, content: Content | None,
               weight: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Per-sample losses ``[N, B]`` on images ``x`` and what is sent (the Gaussian: mean and log-variance)."""
    stats = parts["encoder"](x)
    mean, logvar = stats.chunk(2, -1)
    code = mean + (0.5 * logvar).exp() * noise(*mean.shape[1:])
    reconstruction = F.binary_cross_entropy(parts["decoder"](code), x, reduction="none").flatten(2).sum(-1)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
    return reconstruction + kl + received_loss(content, weight, batch, stats), stats.detach()


def bigan_step(parts: nn.ModuleDict, x: torch.Tensor, noise: Noise, batch: Minibatch, content: Content | None,
               weight: float, critic_opt: torch.optim.Optimizer, players_opt: torch.optim.Optimizer,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """One critic step, then one encoder + generator step; returns each node's critic and players losses
    ``[N]`` and what is sent (the encoding)."""
    p = parts

    def critic(images: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return p["critic"](torch.cat([p["critic_x"](images), code], -1)).squeeze(-1)

    encoded = p["encoder"](x)
    z = noise(*encoded.shape[1:])
    fake = p["generator"](z)
    critic_losses = (F.softplus(-critic(x, encoded.detach())) + F.softplus(critic(fake.detach(), z))).mean(1)
    critic_opt.zero_grad(set_to_none=True)
    critic_losses.sum().backward()
    critic_opt.step()
    players = F.softplus(critic(x, encoded)) + F.softplus(-critic(fake, z))
    players = players + received_loss(content, weight, batch, encoded)
    players_losses = players.mean(1)
    players_opt.zero_grad(set_to_none=True)
    players_losses.sum().backward()
    players_opt.step()
    return critic_losses.detach(), players_losses.detach(), encoded.detach()


class NodeProbes:
    """One linear classifier per node on its frozen features, all trained at once (batched matmuls); each
    starts from its node's own stream and all share one minibatch order, so placement changes nothing."""

    def __init__(self, trainer: NetworkTrainer, max_epochs: int = 30, patience: int = 3, batch_size: int = 256):
        self.t, self.max_epochs, self.patience, self.batch_size = trainer, max_epochs, patience, batch_size

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Every node's features ``[nodes, n, dim]``: the VAE's mean, the BiGAN's encoding."""
        vae = self.t.config.unsupervised == "vae"
        encoder = self.t.parts["encoder"]
        return self.t.on_shared(images, lambda x: encoder(x).chunk(2, -1)[0] if vae else encoder(x))

    def evaluate(self) -> tuple[list, list]:
        """Train the probes; per seed ``(average, collective, per node)`` accuracies on validation and test."""
        t, s = self.t, self.t.splits
        train, val, test = (self.features(split.images) for split in (s.train, s.val, s.test))
        mean, std = train.mean(1, keepdim=True), train.std(1, keepdim=True).clamp_min(1e-6)
        train, val, test = ((f - mean) / std for f in (train, val, test))
        dim = train.shape[-1]
        inits = [torch.Generator().manual_seed(node_seed(s, i, PROBE, t.step)) for s in t.seeds for i in t.owned]
        weight = torch.stack([torch.randn(dim, t.classes, generator=g) for g in inits]) / dim**0.5
        weight = weight.to(t.device).requires_grad_()
        generator = torch.Generator().manual_seed(node_seed(t.seeds[0], t.config.nodes, PROBE, t.step))  # the order
        bias = torch.zeros(t.n, 1, t.classes, requires_grad=True, device=t.device)
        optimizer = torch.optim.Adam([weight, bias], lr=1e-3)
        best = torch.full((t.n,), -1.0, device=t.device)
        best_w, best_b = weight.detach().clone(), bias.detach().clone()
        waited = torch.zeros(t.n, device=t.device)
        for _ in range(self.max_epochs):
            for idx in torch.randperm(train.shape[1], generator=generator).split(self.batch_size):
                logits = torch.baddbmm(bias, train[:, idx], weight)
                loss = F.cross_entropy(logits.flatten(0, 1), s.train.labels[idx].repeat(t.n), reduction="sum")
                optimizer.zero_grad(set_to_none=True)
                (loss / len(idx)).backward()
                optimizer.step()
            with torch.no_grad():
                accuracy = (torch.baddbmm(bias, val, weight).argmax(-1) == s.val.labels).float().mean(1)
                better = accuracy > best
                best = torch.where(better, accuracy, best)
                best_w[better], best_b[better] = weight[better], bias[better]
                waited = torch.where(better, 0.0, waited + 1)
            if not t.group.any(bool((waited < self.patience).any())):  # every node of every process is done
                break
        with torch.no_grad():
            probs = [torch.softmax(torch.baddbmm(best_b, f, best_w), -1) for f in (val, test)]
        return t.accuracies(probs[0], s.val.labels), t.accuracies(probs[1], s.test.labels)
