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

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from agents.network import MODELS, node_model, stack
from envs.data import Split, Splits
from envs.network import CONTENTS, SUPERVISED_CONTENTS, collective_decision, every_node, supervised_losses
from envs.routing import Minibatch, Network, from_pixels, to_pixels
from trainers.base import Trainer, generator, option, restore_generators, run_rows
from trainers.network_objectives import UNSUPERVISED, NodeProbes, bigan_step, vae_losses

CONTENT_NAMES = ("none", "logits", "labels", "features")


@dataclass(frozen=True)
class NetworkConfig:
    nodes: int = option(10, "nodes of the network")
    neighbours: int | None = option(None, "k nearest nodes on the ring each node broadcasts to",
                                    default_text="all others")  # fmt: skip
    content: str = option("labels", "what travels with an image", choices=CONTENT_NAMES)
    p_broadcast: float | None = option(None, "probability that a node broadcasts its minibatch",
                                       default_text="p-consume / neighbours: balanced inboxes")  # fmt: skip
    p_consume: float = option(0.5, "expected fraction of a minibatch taken from the inbox")
    temperature: float = option(1.0, "temperature of received logits")
    comm_weight: float = option(1.0, "scale of the loss on received samples")
    capacity: int | None = option(None, "inbox size in samples", default_text="10 minibatches")
    batch_size: int = option(32, "minibatch size of every node")
    lr: float = option(1e-3, "Adam learning rate (Adam's default, as in the thesis)")
    steps: int = option(5000, "training steps per node")
    eval_every: int = option(250, "steps between evaluations", default_text="250; 1000 with --unsupervised, "
                             "where each evaluation trains linear probes")  # fmt: skip
    model: str = option("dcgan-small", "node model", choices=tuple(MODELS),
                        default_text="dcgan for cifar10, else dcgan-small")  # fmt: skip
    unsupervised: str | None = option(None, "Table 2.3 with VAE or BiGAN nodes", choices=UNSUPERVISED,
                                      default_text="classifiers")  # fmt: skip

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


class NetworkTrainer(Trainer):
    """Every seed's network of ``config.nodes`` nodes, trained as one stacked model; one run per seed.

    Routing (shards, inboxes, who broadcasts) is integer bookkeeping on the CPU with each seed's own
    generator; models, data and their noise (drawn from the same generators) live on ``device``."""

    def __init__(self, config: NetworkConfig, splits: Splits, seeds: Sequence[int], device: torch.device | str = "cpu"):
        if not splits.shape:
            raise ValueError("the node models need image shapes; load the data with envs.data.load_splits")
        self._args = (config, splits, seeds)
        self.device = torch.device(device)
        self.config, self.splits, self.seeds = config, splits.to(device), list(seeds)
        self.runs = self.seeds
        self.eval_every = self.log_every = config.eval_every
        self.classes = int(splits.train.labels.max()) + 1
        c, self.n = config, len(self.seeds) * config.nodes
        kind = c.unsupervised or "classifier"
        features = MODELS[c.model].features
        self.content = CONTENTS[c.wire_content]
        dim = self.content.size(self.classes, features)
        self.generators = [generator(s) for s in self.seeds]
        pixels = to_pixels(splits.train.images)  # what nodes train on and send (routing, on the CPU)
        self.networks = []
        models = []
        for seed, g in zip(self.seeds, self.generators, strict=True):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                models += [node_model(kind, splits.shape, MODELS[c.model], self.classes) for _ in range(c.nodes)]
            capacity = c.capacity or 10 * c.batch_size
            self.networks.append(Network(pixels, c.nodes, c.k, c.batch_size, dim, capacity, g))
        self.parts = stack(models).to(device)
        if kind == "bigan":  # DCGAN's Adam for adversarial pairs
            critic = [*self.parts["critic_x"].parameters(), *self.parts["critic"].parameters()]
            players = [*self.parts["encoder"].parameters(), *self.parts["generator"].parameters()]
            self.optimizers = {k: torch.optim.Adam(p, lr=c.lr, betas=(0.5, 0.999))
                               for k, p in (("critic", critic), ("players", players))}  # fmt: skip
        else:
            self.optimizers = {"nodes": torch.optim.Adam(self.parts.parameters(), lr=c.lr)}
        self.wire_bytes = self.content.wire_bytes(splits.train.images.shape[1], self.classes, features)
        self.probes = NodeProbes(self) if c.unsupervised else None
        self.history = [NetworkResult() for _ in self.seeds]
        self.best: list[dict[str, torch.Tensor]] = [{} for _ in self.seeds]
        self.step = 0

    def noise(self, *shape: int) -> torch.Tensor:
        """Standard normal noise ``[nodes of all seeds, *shape]``, drawn from each seed's own generator."""
        noise = torch.cat([torch.randn(self.config.nodes, *shape, generator=g) for g in self.generators])
        return noise.to(self.device)

    def minibatches(self) -> Minibatch:
        c, b = self.config, self.config.batch_size
        parts = []
        for net, g in zip(self.networks, self.generators, strict=True):
            p = torch.full((c.nodes,), c.p_consume if c.communicates else 0.0)
            parts.append(net.minibatch(torch.binomial(torch.full((c.nodes,), float(b)), p, generator=g).long()))
        return Minibatch.cat(parts)

    def _per_seed(self, per_node: torch.Tensor) -> torch.Tensor:
        return per_node.detach().view(len(self.seeds), -1).mean(1)

    def train_step(self) -> dict[str, torch.Tensor]:
        """One training step of every node; returns each seed's mean loss over its nodes."""
        c, train = self.config, self.splits.train
        routed = self.minibatches()  # on the CPU, where routing lives
        batch = routed.to(self.device)
        content = self.content if c.communicates else None
        if c.unsupervised:
            x = from_pixels(batch.pixels).view(*batch.index.shape, *self.splits.shape)
        if c.unsupervised == "bigan":
            critic, players, payload = bigan_step(self.parts, x, self.noise, batch, content, c.comm_weight,
                                                  self.optimizers["critic"], self.optimizers["players"])  # fmt: skip
            metrics = {"train/critic_loss": self._per_seed(critic), "train/loss": self._per_seed(players)}
        else:
            if c.unsupervised == "vae":
                losses, payload = vae_losses(self.parts, x, self.noise, batch, content, c.comm_weight)
            else:
                losses, logits, features, y = supervised_losses(
                    self.parts, train.labels, batch, self.content, self.splits.shape,
                    c.temperature, c.comm_weight,
                )  # fmt: skip
                payload = self.content.send(logits, features, y)
            loss = losses.mean(1).sum()  # summed over nodes: every node gets its own gradient
            self.optimizers["nodes"].zero_grad(set_to_none=True)
            loss.backward()
            self.optimizers["nodes"].step()
            metrics = {"train/loss": self._per_seed(losses.mean(1))}
        if c.communicates:
            payload = payload.cpu()
            for r, (net, g) in enumerate(zip(self.networks, self.generators, strict=True)):
                rows = slice(r * c.nodes, (r + 1) * c.nodes)
                senders = torch.rand(c.nodes, generator=g) < c.broadcast_probability
                net.broadcast(senders, routed.rows(rows), payload[rows])
        self.step += 1
        return metrics

    def total_steps(self) -> int:
        return self.config.steps

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

    def evaluate(self, split: Split) -> dict[str, torch.Tensor]:
        """Classifiers: node-average and collective accuracy (%) per seed on ``split``."""
        scores = self.accuracies(self.predict(split.images), split.labels)
        return {"average_accuracy": run_rows([s[0] for s in scores]),
                "collective_accuracy": run_rows([s[1] for s in scores])}  # fmt: skip

    def evaluation(self) -> dict[str, torch.Tensor]:
        """Validation curves; classifiers are tested after the last step, unsupervised nodes at the stage
        whose linear probes were best on validation (their weights then are the ones kept)."""
        final = self.step >= self.config.steps
        if self.probes is None:
            val = self.accuracies(self.predict(self.splits.val.images), self.splits.val.labels)
            test = self.accuracies(self.predict(self.splits.test.images), self.splits.test.labels) if final else None
        else:
            val, test = self.probes.evaluate()
        for r, (average, collective, _) in enumerate(val):
            res = self.history[r]
            res.steps.append(self.step)
            res.val_average.append(average)
            res.val_collective.append(collective)
            best = self.probes is not None and collective > max(res.val_collective[:-1], default=-1.0)
            if best or (self.probes is None and final):
                res.best_step = self.step
                res.test_average, res.test_collective, res.test_nodes = test[r]
                self.best[r] = self._seed_weights(r)
        return {"val/average_accuracy": run_rows([v[0] for v in val]),
                "val/collective_accuracy": run_rows([v[1] for v in val])}  # fmt: skip

    def _seed_weights(self, r: int) -> dict[str, torch.Tensor]:
        """Seed ``r``'s nodes (stacked as in ``agents.network.Stacked``), CPU copies."""
        return {k: v.detach().chunk(len(self.seeds))[r].cpu().clone() for k, v in self.parts.state_dict().items()}

    def result(self, run: int) -> NetworkResult:
        c, res, net = self.config, dataclasses.replace(self.history[run]), self.networks[run]
        res.samples_sent = int(net.sent.sum())
        res.bytes_sent_per_node_step = res.samples_sent * self.wire_bytes / (c.nodes * max(self.step, 1))
        consumed = net.consumed_received.sum() + net.consumed_local.sum()
        res.consumed_from_inbox = float(net.consumed_received.sum() / consumed) if consumed else 0.0
        res.dropped = int(net.inbox.dropped.sum())
        return res

    def best_weights(self, run: int) -> dict[str, torch.Tensor]:
        return self.best[run]

    def parameters_by_name(self) -> dict[str, torch.Tensor]:
        return dict(self.parts.named_parameters())

    def _state(self) -> dict:
        return {
            "parts": self.parts.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "generators": [g.get_state() for g in self.generators],
            "networks": [net.state_dict() for net in self.networks],
            "history": [dataclasses.asdict(h) for h in self.history],
            "best": self.best,
        }

    def _load_state(self, state: dict) -> None:
        self.parts.load_state_dict(state["parts"])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        restore_generators(self.generators, state["generators"])
        for net, s in zip(self.networks, state["networks"], strict=True):
            net.load_state_dict(s)
        self.history = [NetworkResult(**h) for h in state["history"]]
        self.best = state["best"]
