"""Network of communicating nodes (thesis ch. 2): shards, ring neighbours, inboxes, collective decision.

| | |
|---|---|
| agents | ``node_0`` .. ``node_{N-1}``, each training its own classifier on its exclusive shard |
| action | ``MultiDiscrete([2, batch_size + 1])``: broadcast my minibatch (0/1); samples to take from my inbox |
| observation | ``[inbox fill, local loss, received loss, validation loss, episode done]``, losses clipped at 100 |
| reward | drop of the node's own loss on ``reward_samples`` validation images over the step |

The world (torch, batched over the nodes of one network; the trainer runs the same functions), with
its routing in ``envs.routing``:
- ``shards``: an exclusive random part of the training set per node, independent of the class.
- ``ring_neighbours``: node ``i`` broadcasts to its ``k`` nearest nodes on a ring (+1, -1, +2, ...).
- ``Inbox``: a bounded FIFO queue per node. Overflow policy: **drop oldest** (a full inbox overwrites
  its oldest samples; ``dropped`` counts them). Consumption reads the oldest first. A received sample
  is its 8-bit pixels (what the wire carries) and the sender's content.
- What travels with an image (``CONTENTS``): ``logits`` (the receiver trains on their softmax at
  temperature T), ``labels`` (true labels, as one-hot), ``features`` (top hidden layer, MSE),
  ``gaussian`` (a VAE's mean and log-variance, KL), or ``none``. A consumed sample is re-broadcast
  with what the consuming node has: its own logits or features, the true label it received.
- ``collective_decision``: the entropy-weighted average of the nodes' predictive distributions.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces

from envs.base import TruncatingParallelEnv, aec, episode_length, given_whole, trains
from envs.data import load_splits
from envs.routing import (
    INIT,
    Minibatch,
    Network,
    check_shard_size,
    from_pixels,
    node_seed,
    ring_neighbours,
    to_pixels,
)


def collective_decision(probs: torch.Tensor) -> torch.Tensor:
    """Combine ``[nodes, ..., classes]`` distributions into one ``[..., classes]``.

    A node's confidence on a sample is its negative Shannon entropy shifted to be >= 0:
    ``w_i = log(C) - H(p_i)`` (0 for a uniform prediction, ``log C`` for a one-hot one). The decision is
    ``sum_i w_i p_i / sum_i w_i``; where every node is uniform (all ``w_i = 0``) it is the plain mean.
    """
    return decide(decision_sums(probs), len(probs))


def decision_sums(probs: torch.Tensor) -> torch.Tensor:
    """What the decision needs of some nodes ``[nodes, ..., classes]``, summed over them: ``[..., 2 C + 1]`` =
    (sum of ``w_i p_i``, sum of ``p_i``, sum of ``w_i``). Sums of disjoint groups of nodes add up, so
    processes holding different nodes reduce them with one all-reduce (``decide`` does the rest)."""
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1, keepdim=True)
    weights = (math.log(probs.shape[-1]) - entropy).clamp_min(0)
    return torch.cat([(weights * probs).sum(0), probs.sum(0), weights.sum(0)], -1)


def decide(sums: torch.Tensor, nodes: int) -> torch.Tensor:
    """The collective decision ``[..., classes]`` from ``decision_sums`` over all ``nodes`` nodes."""
    classes = (sums.shape[-1] - 1) // 2
    weighted, plain, total = sums.split([classes, classes, 1], -1)
    return torch.where(total > 0, weighted / total.clamp_min(1e-12), plain / nodes)


def every_node(images: torch.Tensor, nodes: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Flat images ``[n, C*H*W]`` as the same input to every node: ``[nodes, n, C, H, W]`` (a view, no copy)."""
    return images.view(1, len(images), *shape).expand(nodes, *([-1] * (len(shape) + 1)))


class Content:
    """What travels with an image (one object per kind, ``CONTENTS``): how many floats an inbox stores
    per sample, the bytes on the wire, what a node sends and the receiver's loss on it. ``reads`` is
    which of the receiver's outputs that loss compares: its ``logits`` or its ``features``."""

    name = "none"
    reads = ""
    chosen = True  # a content a node can be configured to send (False: only how another one travels)

    def size(self, classes: int, features: int) -> int:
        """Floats stored per sample in an inbox."""
        return 0

    def content_bytes(self, classes: int, features: int) -> int:
        """Bytes of the content per sample on the wire (float32 unless said otherwise)."""
        return 4 * self.size(classes, features)

    def wire_bytes(self, pixels: int, classes: int, features: int) -> int:
        """Bytes on the wire per sample sent: the image as uint8 pixels plus the content."""
        return pixels + self.content_bytes(classes, features)

    def encode(self, payload: torch.Tensor) -> torch.Tensor:
        """Payloads ``[..., size]`` as the ``content_bytes`` that travel (``envs.routing.pack``)."""
        return payload.float().contiguous().view(torch.uint8)

    def decode(self, raw: torch.Tensor, size: int) -> torch.Tensor:
        """``encode``'s inverse: ``[..., content_bytes]`` back into payloads ``[..., size]``."""
        return raw.contiguous().view(torch.float32)

    def send(self, logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """What a node sends with each sample of its minibatch ``[N, B, size]``."""
        return logits.new_zeros(*logits.shape[:2], 0)

    def loss(self, own: torch.Tensor, payload: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Per-sample loss of the receiver's ``own`` output against what came with the sample."""
        raise ValueError(f"content {self.name!r} carries no training signal; choose from "
                         f"{', '.join(n for n in SUPERVISED_CONTENTS if CONTENTS[n].reads)}")


class Logits(Content):
    """The sender's logits; the receiver's cross-entropy against their softmax at temperature T."""

    name, reads = "logits", "logits"

    def size(self, classes: int, features: int) -> int:
        return classes

    def send(self, logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return logits.detach()

    def loss(self, own: torch.Tensor, payload: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return -(torch.softmax(payload / temperature, -1) * F.log_softmax(own, -1)).sum(-1)


class Labels(Logits):
    """The true label: one byte on the wire, a one-hot target in the inbox."""

    name = "labels"

    def content_bytes(self, classes: int, features: int) -> int:
        return 1

    def encode(self, payload: torch.Tensor) -> torch.Tensor:
        return payload.argmax(-1, keepdim=True).to(torch.uint8)

    def decode(self, raw: torch.Tensor, size: int) -> torch.Tensor:
        return F.one_hot(raw[..., 0].long(), size).float()

    def send(self, logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.one_hot(labels, logits.shape[-1]).float()

    def loss(self, own: torch.Tensor, payload: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return -(payload * F.log_softmax(own, -1)).sum(-1)


class Features(Content):
    """The sender's top hidden layer; the receiver's mean squared error to it."""

    name, reads = "features", "features"

    def size(self, classes: int, features: int) -> int:
        return features

    def send(self, logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return features.detach()

    def loss(self, own: torch.Tensor, payload: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return (own - payload).pow(2).mean(-1)


class Gaussian(Features):
    """A VAE's code as ``[mean, log-variance]``; the receiver's ``KL(sender || receiver)``."""

    name = "gaussian"
    chosen = False  # how a VAE node's "features" travel

    def size(self, classes: int, features: int) -> int:
        return 2 * features

    def loss(self, own: torch.Tensor, payload: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        mu_s, logvar_s = payload.chunk(2, -1)
        mu_r, logvar_r = own.chunk(2, -1)
        return 0.5 * (logvar_r - logvar_s + (logvar_s.exp() + (mu_s - mu_r).pow(2)) / logvar_r.exp() - 1).sum(-1)


CONTENTS: dict[str, Content] = {c.name: c for c in (Content(), Logits(), Labels(), Features(), Gaussian())}
SUPERVISED_CONTENTS = tuple(name for name, c in CONTENTS.items() if c.chosen)  # what a classifier node sends
UNSUPERVISED_CONTENTS = tuple(n for n in SUPERVISED_CONTENTS if CONTENTS[n].reads != "logits")  # no logits there


PAD = 4  # CIFAR-10's standard augmentation: a random 32x32 crop of the image padded by 4, and a flip


def crop_and_flip(x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Each image of ``x`` ``[N, B, C, H, W]`` cropped at a random offset from its zero-padded self and flipped
    left-right with probability 1/2: node ``i``'s draws from ``generators[i]`` (on the CPU, so the same on
    every device and whichever nodes train beside it)."""
    n, b, _, h, w = x.shape
    draws = torch.stack([torch.cat([torch.randint(0, 2 * PAD + 1, (b, 2), generator=g),
                                    torch.randint(0, 2, (b, 1), generator=g)], 1) for g in generators])
    draws = draws.view(n * b, 3).to(x.device)
    rows = draws[:, :1] + torch.arange(h, device=x.device)  # [n*b, h]
    cols = draws[:, 1:2] + torch.arange(w, device=x.device)
    cols = torch.where(draws[:, 2:].bool(), cols.flip(1), cols)
    padded = F.pad(x.flatten(0, 1), (PAD, PAD, PAD, PAD))
    picked = padded[torch.arange(n * b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return picked.permute(0, 3, 1, 2).reshape(x.shape)


def supervised_losses(
    parts: Mapping[str, torch.nn.Module],
    labels: torch.Tensor,
    batch: Minibatch,
    content: Content,
    shape: tuple[int, ...],
    temperature: float = 1.0,
    comm_weight: float = 1.0,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample losses ``[N, B]`` of stacked classifiers (``agents.network.stack``) on their minibatches (their
    pixels, through ``augment`` if given): cross-entropy on local samples, ``comm_weight`` times the content's
    loss on received ones (a received ``features`` sample carries no label). Returns ``(losses, logits, features,
    true labels)``."""
    x = from_pixels(batch.pixels).view(*batch.index.shape, *shape)
    x = augment(x) if augment else x
    features = parts["trunk"](x)
    logits = parts["head"](features)
    y = labels[batch.index]
    local = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
    if not content.reads:
        return local, logits, features, y
    own = features if content.reads == "features" else logits
    received = comm_weight * content.loss(own, batch.payload, temperature)
    return torch.where(batch.received, received, local), logits, features, y


AGENT = "node_{}"
MAX_LOSS = 100.0  # losses are observed clipped to [0, MAX_LOSS]


class parallel_env(TruncatingParallelEnv):
    """Every node trains its own classifier; each step an agent chooses to broadcast and what to consume."""

    metadata: ClassVar[dict] = {"name": "network_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(
        self,
        images: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        val_images: torch.Tensor | None = None,
        val_labels: torch.Tensor | None = None,
        shape: tuple[int, int, int] | None = None,
        nodes: int = 4,
        neighbours: int | None = None,
        content: str = "labels",
        temperature: float = 1.0,
        comm_weight: float = 1.0,
        batch_size: int = 32,
        capacity: int | None = None,
        model: str = "dcgan-small",
        lr: float = 1e-3,
        reward_samples: int = 256,
        max_cycles: int | None = None,  # steps per episode (100); max_steps is its alias
        render_mode: str | None = None,
        max_steps: int | None = None,
        dataset: str = "mnist",
        data_dir: str | Path | None = None,
        shard_size: int | None = None,  # training images per node (None: the training set split evenly)
    ):
        """Images are flat ``[n, C*H*W]`` in [0, 1] (``envs.data.load_splits`` gives them and ``shape``);
        without them the env reads ``dataset`` from ``data_dir`` (else ``$COMMCHANNELS_DATA``, else the cache)."""
        from agents.network import MODELS

        max_steps = episode_length(max_cycles, max_steps)
        if not given_whole(images=images, labels=labels, val_images=val_images, val_labels=val_labels, shape=shape):
            splits = load_splits(dataset, data_dir)
            images, labels, shape = splits.train.images, splits.train.labels, splits.shape
            val_images, val_labels = splits.val.images, splits.val.labels
        if content not in SUPERVISED_CONTENTS:
            raise ValueError(f"unknown content {content!r}; choose from {', '.join(SUPERVISED_CONTENTS)}")
        if model not in MODELS:
            raise ValueError(f"unknown node model {model!r}; choose from {', '.join(MODELS)}")
        self.images, self.labels, self.shape = images, labels, tuple(shape)
        self.pixels = to_pixels(images)  # what nodes train on and send: 8-bit pixels
        self.val_images, self.val_labels = val_images[:reward_samples], val_labels[:reward_samples]
        self.nodes, self.k = nodes, nodes - 1 if neighbours is None else neighbours
        ring_neighbours(nodes, self.k)  # checks nodes and k now, not at reset
        self.content, self.temperature, self.comm_weight = content, temperature, comm_weight
        self.batch_size, self.capacity = batch_size, capacity or 10 * batch_size
        check_shard_size(len(images), nodes, shard_size)  # now, not at reset
        self.shard_size = shard_size
        self.model, self.lr, self.max_steps = model, lr, max_steps
        self.classes = int(labels.max()) + 1
        self.render_mode = render_mode
        self.possible_agents = [AGENT.format(i) for i in range(nodes)]
        self.agents: list[str] = []
        self._seed = 0

    @functools.cache
    def observation_space(self, agent: str) -> spaces.Box:
        high = np.array([1.0, MAX_LOSS, MAX_LOSS, MAX_LOSS, 1.0], dtype=np.float32)
        return spaces.Box(low=np.zeros(5, dtype=np.float32), high=high, dtype=np.float32)

    @functools.cache
    def action_space(self, agent: str) -> spaces.MultiDiscrete:
        return spaces.MultiDiscrete([2, self.batch_size + 1])

    @torch.no_grad()
    def _val_loss(self) -> torch.Tensor:
        logits = self.parts["head"](self.parts["trunk"](every_node(self.val_images, self.nodes, self.shape)))
        return (
            F.cross_entropy(logits.flatten(0, 1), self.val_labels.repeat(self.nodes), reduction="none")
            .view(self.nodes, -1)
            .mean(1)
        )

    def _observe(self, local: torch.Tensor, received: torch.Tensor, steps: int) -> dict[str, np.ndarray]:
        fill = self.network.inbox.count.float() / self.capacity
        done = torch.full_like(fill, steps / self.max_steps)
        losses = torch.stack([local, received, self._last_val], 1).clamp(0, MAX_LOSS)
        obs = torch.cat([fill.unsqueeze(1), losses, done.unsqueeze(1)], 1).numpy().astype(np.float32)
        return {a: obs[i] for i, a in enumerate(self.possible_agents) if a in self.agents}

    @trains
    def reset(self, seed: int | None = None, options: dict | None = None):
        from agents.network import MODELS, seeded_models, stack

        if seed is not None:
            self._seed = seed
        inits = [node_seed(self._seed, i, INIT) for i in range(self.nodes)]
        self.parts = stack(seeded_models("classifier", self.shape, MODELS[self.model], self.classes, inits))
        self.optimizer = torch.optim.Adam(self.parts.parameters(), lr=self.lr)
        dim = CONTENTS[self.content].size(self.classes, MODELS[self.model].features)
        self.network = Network(self.pixels, self.nodes, self.k, self.batch_size, dim, self.capacity, self._seed,
                               shard_size=self.shard_size)
        self.agents, self._steps = list(self.possible_agents), 0
        self._last_val = self._val_loss()
        zeros = torch.zeros(self.nodes)
        return self._observe(zeros, zeros, 0), {a: {} for a in self.agents}

    def action_text(self, agent: str) -> str:
        return f"two integers [broadcast 0/1, samples to consume 0..{self.batch_size}]"

    @trains
    def step(self, actions: Mapping[str, np.ndarray]):
        chosen = torch.from_numpy(np.stack(list(self._actions(actions).values())).astype(np.int64))
        batch = self.network.minibatch(chosen[:, 1])
        losses, logits, features, y = supervised_losses(
            self.parts, self.labels, batch, CONTENTS[self.content], self.shape, self.temperature,
            self.comm_weight,
        )
        self.optimizer.zero_grad(set_to_none=True)
        losses.mean(1).sum().backward()  # summed over nodes: each node gets its own gradient
        self.optimizer.step()
        if self.content != "none":
            self.network.broadcast(chosen[:, 0] == 1, batch, CONTENTS[self.content].send(logits, features, y))
        before, self._last_val = self._last_val, self._val_loss()
        reward = (before - self._last_val).tolist()
        with torch.no_grad():
            mask = batch.received.float()
            received = (losses * mask).sum(1) / mask.sum(1).clamp_min(1)
            local = (losses * (1 - mask)).sum(1) / (1 - mask).sum(1).clamp_min(1)
        observations = self._observe(local.detach(), received.detach(), self._steps + 1)
        rewards = {a: reward[i] for i, a in enumerate(self.possible_agents)}
        infos = {a: {"inbox": int(self.network.inbox.count[i])} for i, a in enumerate(self.possible_agents)}
        return self._end_step(observations, rewards, infos)


raw_env = aec(parallel_env)
env = raw_env
