"""The network of nodes trained as one batched computation (thesis ch. 2).

The nodes of every seed of one configuration are stacked (``agents.network.stack``): one grouped
convolution per layer for all of them, one Adam over the stacked parameters (elementwise, so exactly one
Adam per node), losses summed over nodes. Routing runs per seed on the world's core (``envs.network``)
with the seed's own generator, so a seed's numbers do not depend on which seeds run beside it.

Each step every node draws ``Binomial(batch, p_consume)`` samples from its inbox (as many as it holds),
fills the rest of its minibatch from its shard, takes one step on it, and with probability
``p_broadcast`` sends the minibatch with its content to its neighbours. The default ``p_broadcast`` is
``p_consume / neighbours``: a node then receives on average as much as it consumes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from agents.network import MODELS, node_model, stack
from envs.data import Splits
from envs.network import (
    SUPERVISED_CONTENTS,
    Minibatch,
    Network,
    collective_decision,
    every_node,
    message_bytes,
    outgoing,
    payload_size,
    supervised_losses,
)
from trainers.network_objectives import UNSUPERVISED, NodeProbes, bigan_step, vae_losses


@dataclass(frozen=True)
class NetworkConfig:
    nodes: int = 10
    neighbours: int | None = None  # nodes each node broadcasts to; default all others
    content: str = "labels"  # none, logits, labels, features (unsupervised: none, features)
    p_broadcast: float | None = None  # default p_consume / neighbours (balanced inboxes)
    p_consume: float = 0.5
    temperature: float = 1.0  # of received logits
    comm_weight: float = 1.0  # scale of the loss on received samples
    capacity: int | None = None  # inbox size in samples; default 10 minibatches
    batch_size: int = 32
    lr: float = 1e-3  # Adam's default, as in the thesis
    steps: int = 5000
    eval_every: int = 250
    model: str = "dcgan-small"
    unsupervised: str | None = None  # None (classifiers), "vae" or "bigan"

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"--nodes must be >= 1, got {self.nodes}")
        if not 0 <= self.k < self.nodes:
            raise ValueError(f"--neighbours must be in 0..nodes-1 = {self.nodes - 1}, got {self.neighbours}")
        for name in ("p_broadcast", "p_consume"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} is a probability in [0, 1], got {value}")
        allowed = ("none", "features") if self.unsupervised else SUPERVISED_CONTENTS
        if self.content not in allowed:
            raise ValueError(f"unknown content {self.content!r}; choose from {', '.join(allowed)}")
        if self.unsupervised not in (None, *UNSUPERVISED):
            raise ValueError(f"unknown unsupervised model {self.unsupervised!r}; choose from {', '.join(UNSUPERVISED)}")
        if self.model not in MODELS:
            raise ValueError(f"unknown node model {self.model!r}; choose from {', '.join(MODELS)}")
        for name in ("batch_size", "steps", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0 or self.lr <= 0 or (self.capacity is not None and self.capacity < 1):
            raise ValueError("--temperature and --lr must be > 0 and --capacity >= 1")

    @property
    def k(self) -> int:
        return self.nodes - 1 if self.neighbours is None else self.neighbours

    @property
    def communicates(self) -> bool:
        return self.content != "none" and self.k > 0

    @property
    def broadcast_probability(self) -> float:
        if not self.communicates:
            return 0.0
        return self.p_consume / self.k if self.p_broadcast is None else self.p_broadcast

    @property
    def wire_content(self) -> str:
        """What travels: a VAE's features are Gaussians (mean, log-variance)."""
        return "gaussian" if self.unsupervised == "vae" and self.content == "features" else self.content

    @property
    def name(self) -> str:
        base = "1node" if self.nodes == 1 else f"{self.nodes}nodes-{self.content}"
        return f"{self.unsupervised}-{base}" if self.unsupervised else base


@dataclass
class NetworkResult:
    """One seed: validation curves (node average and collective decision, %), final test accuracies and traffic."""

    steps: list[int] = field(default_factory=list)
    val_average: list[float] = field(default_factory=list)
    val_collective: list[float] = field(default_factory=list)
    test_average: float = 0.0
    test_collective: float = 0.0
    test_nodes: list[float] = field(default_factory=list)
    samples_sent: int = 0  # per receiver, summed over nodes
    bytes_sent_per_node_step: float = 0.0
    consumed_from_inbox: float = 0.0  # fraction of all training samples
    dropped: int = 0  # inbox overflow
    best_step: int = 0  # unsupervised: the stage whose probes were best on validation

    def steps_to_reach(self, accuracy: float, collective: bool = True) -> int | None:
        curve = self.val_collective if collective else self.val_average
        return next((s for s, a in zip(self.steps, curve, strict=True) if a >= accuracy), None)


class NetworkTrainer:
    """Every seed's network of ``config.nodes`` nodes, trained as one stacked model."""

    def __init__(self, config: NetworkConfig, splits: Splits, seeds: Sequence[int]):
        if not splits.shape:
            raise ValueError("the node models need image shapes; load the data with envs.data.load_splits")
        self.config, self.splits, self.seeds = config, splits, list(seeds)
        self.classes = int(splits.train.labels.max()) + 1
        c, self.n = config, len(self.seeds) * config.nodes
        kind = c.unsupervised or "classifier"
        features = MODELS[c.model].features
        dim = payload_size(c.wire_content, self.classes, features)
        self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]
        self.networks = []
        models = []
        for seed, g in zip(self.seeds, self.generators, strict=True):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                models += [node_model(kind, splits.shape, MODELS[c.model], self.classes) for _ in range(c.nodes)]
            capacity = c.capacity or 10 * c.batch_size
            self.networks.append(Network(len(splits.train.images), c.nodes, c.k, c.batch_size, dim, capacity, g))
        self.parts = stack(models)
        if kind == "bigan":  # DCGAN's Adam for adversarial pairs
            critic = [*self.parts["critic_x"].parameters(), *self.parts["critic"].parameters()]
            players = [*self.parts["encoder"].parameters(), *self.parts["generator"].parameters()]
            self.optimizers = [torch.optim.Adam(p, lr=c.lr, betas=(0.5, 0.999)) for p in (critic, players)]
        else:
            self.optimizers = [torch.optim.Adam(self.parts.parameters(), lr=c.lr)]
        self.wire_bytes = message_bytes(c.wire_content, splits.train.images.shape[1], self.classes, features)
        self.step_count = 0

    def _noise(self, *shape: int) -> torch.Tensor:
        """Standard normal noise ``[nodes of all seeds, *shape]``, drawn from each seed's own generator."""
        return torch.cat([torch.randn(self.config.nodes, *shape, generator=g) for g in self.generators])

    def minibatches(self) -> Minibatch:
        c, b = self.config, self.config.batch_size
        parts = []
        for net, g in zip(self.networks, self.generators, strict=True):
            p = torch.full((c.nodes,), c.p_consume if c.communicates else 0.0)
            parts.append(net.minibatch(torch.binomial(torch.full((c.nodes,), float(b)), p, generator=g).long()))
        return Minibatch(*(torch.cat([getattr(m, f) for m in parts]) for f in ("index", "received", "payload")))

    def step(self) -> dict[str, float]:
        """One training step of every node; returns training metrics."""
        c, train = self.config, self.splits.train
        batch = self.minibatches()
        if c.unsupervised == "bigan":
            metrics, payload = bigan_step(self, batch)
        else:
            if c.unsupervised == "vae":
                losses, payload = vae_losses(self, batch)
            else:
                losses, logits, features, y = supervised_losses(
                    self.parts, train.images, train.labels, batch, c.content, self.splits.shape,
                    c.temperature, c.comm_weight,
                )  # fmt: skip
                payload = outgoing(c.content, logits, features, y)
            loss = losses.mean(1).sum()  # summed over nodes: every node gets its own gradient
            self.optimizers[0].zero_grad(set_to_none=True)
            loss.backward()
            self.optimizers[0].step()
            metrics = {"train/loss": loss.item() / self.n}
        if c.communicates:
            for r, (net, g) in enumerate(zip(self.networks, self.generators, strict=True)):
                rows = slice(r * c.nodes, (r + 1) * c.nodes)
                senders = torch.rand(c.nodes, generator=g) < c.broadcast_probability
                net.broadcast(senders, batch.index[rows], payload[rows])
        self.step_count += 1
        return metrics

    @torch.no_grad()
    def on_shared(self, images: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], chunk: int = 1000):
        """``fn`` of every node on the same images, in chunks: ``[nodes of all seeds, n, ...]``."""
        return torch.cat([fn(every_node(x, self.n, self.splits.shape)) for x in images.split(chunk)], 1)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Every node's predictive distribution ``[nodes of all seeds, n, classes]`` on shared images."""
        return self.on_shared(images, lambda x: torch.softmax(self.parts["head"](self.parts["trunk"](x)), -1))

    def accuracies(self, probs: torch.Tensor, labels: torch.Tensor) -> list[tuple[float, float, list[float]]]:
        """Per seed: (node-average accuracy, collective-decision accuracy, per-node accuracies), in %."""
        out = []
        for r in range(len(self.seeds)):
            p = probs[r * self.config.nodes : (r + 1) * self.config.nodes]
            nodes = (100.0 * (p.argmax(-1) == labels).float().mean(1)).tolist()
            collective = 100.0 * (collective_decision(p).argmax(-1) == labels).float().mean().item()
            out.append((sum(nodes) / len(nodes), collective, nodes))
        return out

    def fit(
        self,
        progress: Callable[[int], None] | None = None,
        logger: Callable[[int, dict[str, list[float]]], None] | None = None,
    ) -> list[NetworkResult]:
        """Train ``config.steps`` steps; evaluate on validation every ``eval_every`` steps and on test at the end
        (unsupervised: at the stage whose linear probes were best on validation)."""
        c = self.config
        results = [NetworkResult() for _ in self.seeds]
        probes = NodeProbes(self) if c.unsupervised else None
        best = [-1.0] * len(self.seeds)
        while self.step_count < c.steps:
            metrics = self.step()
            if progress:
                progress(1)
            if self.step_count % c.eval_every and self.step_count != c.steps:
                continue
            if probes is None:
                val = self.accuracies(self.predict(self.splits.val.images), self.splits.val.labels)
            else:
                val, test = probes.evaluate()
            for r, (average, collective, _) in enumerate(val):
                res = results[r]
                res.steps.append(self.step_count)
                res.val_average.append(average)
                res.val_collective.append(collective)
                if probes is not None and collective > best[r]:
                    best[r], res.best_step = collective, self.step_count
                    res.test_average, res.test_collective, res.test_nodes = test[r]
            if logger:
                logger(self.step_count, {
                    **{k: [v] * len(self.seeds) for k, v in metrics.items()},
                    "val/average_accuracy": [v[0] for v in val],
                    "val/collective_accuracy": [v[1] for v in val],
                })  # fmt: skip
        if probes is None:
            test = self.accuracies(self.predict(self.splits.test.images), self.splits.test.labels)
            for res, (average, collective, nodes) in zip(results, test, strict=True):
                res.test_average, res.test_collective, res.test_nodes = average, collective, nodes
                res.best_step = c.steps
        for res, net in zip(results, self.networks, strict=True):
            res.samples_sent = int(net.sent.sum())
            res.bytes_sent_per_node_step = res.samples_sent * self.wire_bytes / (c.nodes * c.steps)
            consumed = net.consumed_received.sum() + net.consumed_local.sum()
            res.consumed_from_inbox = float(net.consumed_received.sum() / consumed)
            res.dropped = int(net.inbox.dropped.sum())
        return results
