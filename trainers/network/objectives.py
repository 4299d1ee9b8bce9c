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

import torch
import torch.nn.functional as F
from torch import nn

from envs.data import Splits
from envs.network import Content
from envs.routing import Minibatch

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
               weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample losses ``[N, B]`` on images ``x`` and what is sent (the Gaussian: mean and log-variance)."""
    stats = parts["encoder"](x)
    mean, logvar = stats.chunk(2, -1)
    code = mean + (0.5 * logvar).exp() * noise(*mean.shape[1:])
    reconstruction = F.binary_cross_entropy(parts["decoder"](code), x, reduction="none").flatten(2).sum(-1)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
    return reconstruction + kl + received_loss(content, weight, batch, stats), stats.detach()


def bigan_step(parts: nn.ModuleDict, x: torch.Tensor, noise: Noise, batch: Minibatch, content: Content | None,
               weight: float, critic_opt: torch.optim.Optimizer, players_opt: torch.optim.Optimizer,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def node_probes(features: Callable[[torch.Tensor], torch.Tensor], splits: Splits, inits: list[torch.Generator],
                order: torch.Generator, any_waiting: Callable[[bool], bool], max_epochs: int = 30, patience: int = 3,
                batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """One linear classifier per node on its frozen ``features`` (``images -> [nodes, n, dim]``), all trained at
    once (batched matmuls) from each node's ``inits`` stream in one minibatch ``order``, with early stopping on
    validation; ``any_waiting`` asks every process whether one of its nodes still improves. Returns each node's
    predictive distributions on validation and test."""
    train, val, test = (features(split.images) for split in (splits.train, splits.val, splits.test))
    mean, std = train.mean(1, keepdim=True), train.std(1, keepdim=True).clamp_min(1e-6)
    train, val, test = ((f - mean) / std for f in (train, val, test))
    nodes, dim, classes = train.shape[0], train.shape[-1], int(splits.train.labels.max()) + 1
    weight = torch.stack([torch.randn(dim, classes, generator=g) for g in inits]) / dim**0.5
    weight = weight.to(train.device).requires_grad_()
    bias = torch.zeros(nodes, 1, classes, requires_grad=True, device=train.device)
    optimizer = torch.optim.Adam([weight, bias], lr=1e-3)
    best = torch.full((nodes,), -1.0, device=train.device)
    best_w, best_b = weight.detach().clone(), bias.detach().clone()
    waited = torch.zeros(nodes, device=train.device)
    for _ in range(max_epochs):
        for idx in torch.randperm(train.shape[1], generator=order).split(batch_size):
            logits = torch.baddbmm(bias, train[:, idx], weight)
            loss = F.cross_entropy(logits.flatten(0, 1), splits.train.labels[idx].repeat(nodes), reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            (loss / len(idx)).backward()
            optimizer.step()
        with torch.no_grad():
            accuracy = (torch.baddbmm(bias, val, weight).argmax(-1) == splits.val.labels).float().mean(1)
            better = accuracy > best
            best = torch.where(better, accuracy, best)
            best_w[better], best_b[better] = weight[better], bias[better]
            waited = torch.where(better, 0.0, waited + 1)
        if not any_waiting(bool((waited < patience).any())):  # every node of every process is done
            break
    with torch.no_grad():
        val_probs, test_probs = (torch.softmax(torch.baddbmm(best_b, f, best_w), -1) for f in (val, test))
    return val_probs, test_probs
