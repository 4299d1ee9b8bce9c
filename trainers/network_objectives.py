"""Unsupervised node objectives (thesis ch. 2, Table 2.3) and their evaluation by linear probes.

VAE nodes minimise the negative ELBO (Bernoulli reconstruction summed over pixels + KL to N(0, I)); a
received sample adds ``comm_weight * KL(sender's Gaussian || mine)``. BiGAN nodes play the BiGAN game
(critic on (image, code) pairs: real images with their encoding vs generated images with their noise;
non-saturating losses); a received sample adds ``comm_weight * MSE(my encoding, sender's)``.
Each node's features (the VAE's mean, the BiGAN's encoding) are judged by a linear classifier trained
on the full training set with early stopping on validation; the collective decision combines them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from envs.network import Minibatch, content_loss

if TYPE_CHECKING:
    from trainers.network import NetworkTrainer

UNSUPERVISED = ("vae", "bigan")


def _images(t: NetworkTrainer, batch: Minibatch) -> torch.Tensor:
    return t.splits.train.images[batch.index].view(*batch.index.shape, *t.splits.shape)


def _received(t: NetworkTrainer, batch: Minibatch, own: torch.Tensor) -> torch.Tensor:
    """``comm_weight`` times the content loss where a sample came from the inbox, else 0."""
    c = t.config
    if not c.communicates:
        return own.new_zeros(batch.received.shape)
    return torch.where(batch.received, c.comm_weight * content_loss(c.wire_content, own, batch.payload), 0.0)


def vae_losses(t: NetworkTrainer, batch: Minibatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample losses ``[N, B]`` and what is sent (the Gaussian: mean and log-variance)."""
    x = _images(t, batch)
    stats = t.parts["encoder"](x)
    mean, logvar = stats.chunk(2, -1)
    code = mean + (0.5 * logvar).exp() * t._noise(*mean.shape[1:])
    reconstruction = F.binary_cross_entropy(t.parts["decoder"](code), x, reduction="none").flatten(2).sum(-1)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
    return reconstruction + kl + _received(t, batch, stats), stats.detach()


def bigan_step(t: NetworkTrainer, batch: Minibatch) -> tuple[dict[str, float], torch.Tensor]:
    """One critic step, then one encoder + generator step; returns metrics and what is sent (the encoding)."""
    p, x = t.parts, _images(t, batch)

    def critic(images: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return p["critic"](torch.cat([p["critic_x"](images), code], -1)).squeeze(-1)

    encoded = p["encoder"](x)
    noise = t._noise(*encoded.shape[1:])
    fake = p["generator"](noise)
    critic_loss = (F.softplus(-critic(x, encoded.detach())) + F.softplus(critic(fake.detach(), noise))).mean(1).sum()
    critic_opt, players_opt = t.optimizers
    critic_opt.zero_grad(set_to_none=True)
    critic_loss.backward()
    critic_opt.step()
    players = F.softplus(critic(x, encoded)) + F.softplus(-critic(fake, noise)) + _received(t, batch, encoded)
    players_loss = players.mean(1).sum()
    players_opt.zero_grad(set_to_none=True)
    players_loss.backward()
    players_opt.step()
    return {"train/critic_loss": critic_loss.item() / t.n, "train/loss": players_loss.item() / t.n}, encoded.detach()


class NodeProbes:
    """One linear classifier per node on its frozen features, all trained at once (batched matmuls)."""

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
        generator = torch.Generator().manual_seed(t.seeds[0] * 100_003 + t.step_count)
        weight = (torch.randn(t.n, dim, t.classes, generator=generator) / dim**0.5).requires_grad_()
        bias = torch.zeros(t.n, 1, t.classes, requires_grad=True)
        optimizer = torch.optim.Adam([weight, bias], lr=1e-3)
        best = torch.full((t.n,), -1.0)
        best_w, best_b = weight.detach().clone(), bias.detach().clone()
        waited = torch.zeros(t.n)
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
            if bool((waited >= self.patience).all()):
                break
        with torch.no_grad():
            probs = [torch.softmax(torch.baddbmm(best_b, f, best_w), -1) for f in (val, test)]
        return t.accuracies(probs[0], s.val.labels), t.accuracies(probs[1], s.test.labels)
