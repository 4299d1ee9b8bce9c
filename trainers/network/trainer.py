"""The network of nodes trained as one batched computation (thesis ch. 2), in one process or spread over many.

The nodes of every seed of one configuration are stacked (``agents.network.stack``): one grouped
convolution per layer for all of them, one Adam over the stacked parameters (elementwise, so exactly one
Adam per node), losses summed over nodes. Routing runs per seed on the world's core (``envs.routing``);
every node has its own random stream and its own initialisation, so no number depends on which seeds or
nodes are batched beside it, nor on which process holds it.

With a ``DistributedGroup`` each process trains the nodes ``envs.routing.placement`` gives it; posts to
nodes of other processes travel through ``Group.exchange`` as bytes (``envs.routing.pack``), node counters,
losses and the collective decision are summed over processes.

Each step every node draws ``Binomial(batch, p_consume)`` samples from its inbox (as many as it holds),
fills the rest of its minibatch from its shard, takes one step on it, and with probability
``p_broadcast`` sends the minibatch with its content to its neighbours. The default ``p_broadcast`` is
``p_consume / neighbours``: a node then receives on average as much as it consumes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Sequence

import torch

from agents.network import MODELS, seeded_models, stack
from envs.data import Split, Splits
from envs.network import (
    CONTENTS,
    crop_and_flip,
    decide,
    decision_sums,
    every_node,
    supervised_losses,
)
from envs.routing import (
    INIT,
    Minibatch,
    Network,
    from_pixels,
    links,
    node_seed,
    pack,
    placement,
    ring_neighbours,
    to_pixels,
    unpack,
)
from trainers.base import Trainer, adam, lr_factor, run_rows
from trainers.group import Group
from trainers.network.config import NetworkConfig, NetworkResult
from trainers.network.objectives import PROBE, bigan_step, node_probes, vae_losses


class NetworkTrainer(Trainer):
    """Every seed's network of ``config.nodes`` nodes, trained as one stacked model; one run per seed.

    Routing (shards, inboxes, who broadcasts) is integer bookkeeping on the CPU with each node's own
    random stream; models, data and their noise (drawn from the same streams) live on ``device``. With a
    ``group`` of several processes this process trains its share of every seed's nodes."""

    def __init__(self, config: NetworkConfig, splits: Splits, seeds: Sequence[int], device: torch.device | str = "cpu",
                 group: Group | None = None):
        if not splits.shape:
            raise ValueError("the node models need image shapes; load the data with envs.data.load_splits")
        super().__init__((config, splits, seeds), seeds, device, config.eval_every, group=group)
        self.config, self.splits, self.seeds = config, splits.to(device), list(seeds)
        self.classes = int(splits.train.labels.max()) + 1
        c = config
        self.processes = placement(c.nodes, self.group.world)
        self.owned = self.processes[self.group.rank]
        self.n = len(self.seeds) * len(self.owned)  # nodes trained here, of all seeds
        kind = c.unsupervised or "classifier"
        features = MODELS[c.model].features
        self.content = CONTENTS[c.wire_content]
        self.payload_dim = self.content.size(self.classes, features)
        pixels = to_pixels(splits.train.images)  # what nodes train on and send (routing, on the CPU)
        capacity = c.capacity or 10 * c.batch_size
        self.networks = [Network(pixels, c.nodes, c.k, c.batch_size, self.payload_dim, capacity, s, self.owned,
                                 c.shard_size) for s in self.seeds]
        inits = [node_seed(s, i, INIT) for s in self.seeds for i in self.owned]
        self.parts = stack(seeded_models(kind, splits.shape, MODELS[c.model], self.classes, inits)).to(device)
        if kind == "bigan":  # DCGAN's Adam for adversarial pairs
            critic = [*self.parts["critic_x"].parameters(), *self.parts["critic"].parameters()]
            players = [*self.parts["encoder"].parameters(), *self.parts["generator"].parameters()]
            self.optimizers = {k: adam(p, device, lr=c.lr, betas=(0.5, 0.999))
                               for k, p in (("critic", critic), ("players", players))}
        else:
            decay = c.weight_decay or 0.0
            self.optimizers = {"nodes": adam(self.parts.parameters(), device, lr=c.lr, weight_decay=decay)}
        self.wire_bytes = self.content.wire_bytes(splits.train.images.shape[1], self.classes, features)
        edges = links(c.nodes, c.k, self.processes) if c.communicates else set()
        self.destinations = sorted(q for p, q in edges if p == self.group.rank)
        self.sources = sorted(p for p, q in edges if q == self.group.rank)
        self.wire = torch.zeros(len(self.seeds), dtype=torch.float64)  # bytes this process handed over, per seed
        mixing = torch.eye(c.nodes, dtype=torch.float64)  # gossip: node i averages itself and its ring neighbours
        mixing.scatter_(1, ring_neighbours(c.nodes, c.k), 1.0)
        self.mixing = (mixing / mixing.sum(1, keepdim=True))[self.owned.start : self.owned.stop]
        self.averaged_bytes = sum(t.numel() * t.element_size() for t in self._averaged()) / self.n  # one node's
        if c.average:  # every node starts as node 0, as DDP broadcasts rank 0's and FedAvg its global model:
            self._mix(self._averaged(), "first")  # averaging unrelated initialisations mixes unmatched units
        self.history = [NetworkResult() for _ in self.seeds]
        self.best: list[dict[str, torch.Tensor]] = [{} for _ in self.seeds]

    def header(self) -> dict:
        """A checkpoint resumes only on the same placement (and after the per-node streams of routing 2)."""
        return {**super().header(), "routing": 2, "rank": self.group.rank, "processes": self.group.world}

    def _streams(self) -> list[torch.Generator]:
        """Every node's own random stream, in the order of the stacked nodes (seed by seed)."""
        return [g for net in self.networks for g in net.generators]

    def noise(self, *shape: int) -> torch.Tensor:
        """Standard normal noise ``[nodes here, *shape]``, drawn from each node's own stream."""
        return torch.stack([torch.randn(*shape, generator=g) for g in self._streams()]).to(self.device)

    def minibatches(self) -> Minibatch:
        """Each node draws ``Binomial(batch, p_consume)`` samples to take from its inbox, from its own stream."""
        c, b = self.config, float(self.config.batch_size)
        p = torch.tensor([c.p_consume if c.communicates else 0.0])
        draws = [torch.cat([torch.binomial(torch.tensor([b]), p, generator=g) for g in net.generators]).long()
                 for net in self.networks]
        return Minibatch.cat([net.minibatch(d) for net, d in zip(self.networks, draws, strict=True)])

    def _per_seed(self, per_node: torch.Tensor) -> torch.Tensor:
        """Each seed's mean over all its nodes (on every process) of a per-node value of the nodes here."""
        local = per_node.detach().double().cpu().view(len(self.seeds), -1).sum(1)
        return (self.group.sum(local) / self.config.nodes).float()

    def train_step(self) -> dict[str, torch.Tensor]:
        """One training step of every node; returns each seed's mean loss over its nodes."""
        c, train = self.config, self.splits.train
        routed = self.minibatches()  # on the CPU, where routing lives
        batch = routed.to(self.device)
        content = self.content if c.communicates else None
        handed = self.group.handed
        if c.unsupervised:
            x = from_pixels(batch.pixels).view(*batch.index.shape, *self.splits.shape)
        if c.unsupervised == "bigan":
            critic, players, payload = bigan_step(self.parts, x, self.noise, batch, content, c.comm_weight,
                                                  self.optimizers["critic"], self.optimizers["players"])
            metrics = {"train/critic_loss": self._per_seed(critic), "train/loss": self._per_seed(players)}
        else:
            if c.unsupervised == "vae":
                losses, payload = vae_losses(self.parts, x, self.noise, batch, content, c.comm_weight)
            else:
                augment = functools.partial(crop_and_flip, generators=self._streams()) if c.augment else None
                losses, logits, features, y = supervised_losses(
                    self.parts, train.labels, batch, self.content, self.splits.shape, c.temperature, c.comm_weight,
                    augment,
                )
                payload = self.content.send(logits, features, y)
            loss = losses.mean(1).sum()  # summed over nodes: every node gets its own gradient
            for group in self.optimizers["nodes"].param_groups:
                group["lr"] = c.lr * lr_factor(c.lr_schedule, self.step / c.steps)
            self.optimizers["nodes"].zero_grad(set_to_none=True)
            loss.backward()
            if c.average == "allreduce":
                self._mix([p.grad for p in self.parts.parameters()], "all")
            self.optimizers["nodes"].step()
            metrics = {"train/loss": self._per_seed(losses.mean(1))}
        data = self._broadcast(routed, payload.cpu()) if c.communicates else torch.zeros(len(self.seeds))
        if c.average in ("gossip", "local-sgd") and (self.step + 1) % c.average_every == 0:
            self._mix(self._averaged(), "ring" if c.average == "gossip" else "all")
        elif c.average == "allreduce":
            self._mix(list(self.parts.buffers()), "all")  # batch-norm statistics, like DDP's buffers: one for all
        self.wire += data + (self.group.handed - handed - data.sum()) / len(self.seeds)  # byte counts and sums: shared
        self.step += 1
        return metrics

    def _averaged(self) -> list[torch.Tensor]:
        """What parameter averaging averages: every parameter and batch-norm statistic (Adam's moments stay each
        node's own, as in local SGD)."""
        return [*self.parts.parameters(), *self.parts.buffers()]

    @torch.no_grad()
    def _mix(self, tensors: list[torch.Tensor], how: str) -> None:
        """Each node's rows of ``tensors`` become the mean of its own and its ring neighbours' (``ring``: gossip),
        the mean of every node's (``all``: local SGD, and gradients under allreduce) or node 0's (``first``). Across
        processes the rows meet in one all-reduce (``Group.sum``), in float64 so the sum is the same whatever the
        placement."""
        if not tensors:
            return
        c, seeds, here = self.config, len(self.seeds), len(self.owned)
        rows = torch.cat([t.reshape(seeds, here, -1).double().cpu() for t in tensors], -1)  # [seeds, here, P]
        if how == "all":
            mixed = (self.group.sum(rows.sum(1)) / c.nodes).unsqueeze(1).expand_as(rows)
        else:
            every = torch.zeros(seeds, c.nodes, rows.shape[-1], dtype=torch.float64)
            every[:, self.owned.start : self.owned.stop] = rows
            every = self.group.sum(every)
            mixed = self.mixing @ every if how == "ring" else every[:, :1].expand_as(rows)
        start = 0
        for t in tensors:
            size = t.numel() // (seeds * here)
            t.copy_(mixed[..., start : start + size].reshape(t.shape))
            start += size

    def _broadcast(self, routed: Minibatch, payload: torch.Tensor) -> torch.Tensor:
        """Every node that draws a broadcast sends its minibatch; posts to other processes travel as bytes (their
        number per seed is returned)."""
        c, local = self.config, len(self.owned)
        posts = []
        for r, net in enumerate(self.networks):
            senders = torch.cat([torch.rand(1, generator=g) for g in net.generators]) < c.broadcast_probability
            rows = slice(r * local, (r + 1) * local)
            posts.append(net.post(senders, routed.rows(rows), payload[rows]))
        if not self.destinations and not self.sources:
            for net, post in zip(self.networks, posts, strict=True):
                net.deliver([post])
            return torch.zeros(len(self.seeds), dtype=torch.float64)
        pairs = list(zip(self.networks, posts, strict=True))
        outgoing = {q: [pack(net.outbound(post, self.processes[q]), self.content.encode) for net, post in pairs]
                    for q in self.destinations}
        incoming = self.group.exchange(outgoing, self.sources, len(self.networks))
        px, size = routed.pixels.shape[-1], self.payload_dim
        cb = self.content.content_bytes(self.classes, MODELS[c.model].features)
        for r, (net, post) in enumerate(zip(self.networks, posts, strict=True)):
            arrived = [unpack(incoming[p][r], c.batch_size, px, cb, lambda raw: self.content.decode(raw, size))
                       for p in self.sources]
            net.deliver([post, *arrived])
        sizes = [[len(buf) for buf in bufs] for bufs in outgoing.values()]
        return torch.tensor(sizes, dtype=torch.float64).sum(0) if sizes else torch.zeros(len(self.seeds))

    def total_steps(self) -> int:
        return self.config.steps

    @torch.no_grad()
    def on_shared(self, images: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], chunk: int = 1000):
        """``fn`` of every node here on the same images, in chunks: ``[nodes here, n, ...]``; in eval mode, so
        batch norms read their running statistics (not the evaluation batch's) and leave them alone."""
        self.parts.eval()
        try:
            return torch.cat([fn(every_node(x, self.n, self.splits.shape)) for x in images.split(chunk)], 1)
        finally:
            self.parts.train()

    def _probe_accuracies(self) -> tuple[list, list]:
        """Unsupervised nodes: a linear probe per node on its features (the VAE's mean, the BiGAN's encoding),
        each started from its node's own stream at this step; per seed ``(average, collective, per node)``."""
        vae, encoder, step = self.config.unsupervised == "vae", self.parts["encoder"], self.step
        encode = (lambda x: encoder(x).chunk(2, -1)[0]) if vae else encoder
        features = lambda images: self.on_shared(images, encode)  # noqa: E731
        inits = [torch.Generator().manual_seed(node_seed(s, i, PROBE, step)) for s in self.seeds for i in self.owned]
        order = torch.Generator().manual_seed(node_seed(self.seeds[0], self.config.nodes, PROBE, self.step))
        val, test = node_probes(features, self.splits, inits, order, self.group.any)
        return self.accuracies(val, self.splits.val.labels), self.accuracies(test, self.splits.test.labels)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Every node's predictive distribution ``[nodes here, n, classes]`` on shared images."""
        return self.on_shared(images, lambda x: torch.softmax(self.parts["head"](self.parts["trunk"](x)), -1))

    def accuracies(self, probs: torch.Tensor, labels: torch.Tensor) -> list[tuple[float, float, list[float]]]:
        """Per seed: (node-average accuracy, collective-decision accuracy, per-node accuracies), in %, over all
        nodes: each process's share summed by ``group`` (one reduction of the decision's sums)."""
        seeds, nodes = len(self.seeds), self.config.nodes
        sums = self.collective_sums(probs)
        probs = probs.view(seeds, len(self.owned), *probs.shape[1:])
        correct = torch.zeros(seeds, nodes, dtype=torch.float64)
        correct[:, self.owned.start : self.owned.stop] = (probs.argmax(-1) == labels).double().mean(-1).cpu()
        correct = self.group.sum(correct)
        collective = [(decide(s, nodes).argmax(-1) == labels).double().mean().item() for s in sums]
        return [(100.0 * correct[r].mean().item(), 100.0 * collective[r], (100.0 * correct[r]).tolist())
                for r in range(seeds)]

    def collective_sums(self, probs: torch.Tensor) -> torch.Tensor:
        """Per seed, the collective decision's entropy-weighted sums over all nodes (``decision_sums``), from the
        predictive distributions of the nodes here ``[nodes here, n, classes]``: one reduction across processes,
        so they agree with one process's to float rounding (summed in another order), not bit for bit."""
        probs = probs.view(len(self.seeds), len(self.owned), *probs.shape[1:])
        return self.group.sum(torch.stack([decision_sums(p) for p in probs]))

    def evaluate(self, split: Split) -> dict[str, torch.Tensor]:
        """Classifiers: node-average and collective accuracy (%) per seed on ``split``."""
        scores = self.accuracies(self.predict(split.images), split.labels)
        return {"average_accuracy": run_rows([s[0] for s in scores]),
                "collective_accuracy": run_rows([s[1] for s in scores])}

    def evaluation(self) -> dict[str, torch.Tensor]:
        """Validation curves; classifiers are tested after the last step, unsupervised nodes at the stage
        whose linear probes were best on validation (their weights then are the ones kept)."""
        final = self.step >= self.config.steps
        probed = self.config.unsupervised is not None
        if not probed:
            val = self.accuracies(self.predict(self.splits.val.images), self.splits.val.labels)
            test = self.accuracies(self.predict(self.splits.test.images), self.splits.test.labels) if final else None
        else:
            val, test = self._probe_accuracies()
        for r, (average, collective, _) in enumerate(val):
            res = self.history[r]
            res.steps.append(self.step)
            res.val_average.append(average)
            res.val_collective.append(collective)
            best = probed and collective > max(res.val_collective[:-1], default=-1.0)
            if best or (not probed and final):
                res.best_step = self.step
                res.test_average, res.test_collective, res.test_nodes = test[r]
                self.best[r] = self._seed_weights(r)
        return {"val/average_accuracy": run_rows([v[0] for v in val]),
                "val/collective_accuracy": run_rows([v[1] for v in val])}

    def _seed_weights(self, r: int) -> dict[str, torch.Tensor]:
        """Seed ``r``'s nodes here (stacked as in ``agents.network.Stacked``), CPU copies."""
        return {k: v.detach().chunk(len(self.seeds))[r].cpu().clone() for k, v in self.parts.state_dict().items()}

    def result(self, run: int) -> NetworkResult:
        c, res, net = self.config, dataclasses.replace(self.history[run]), self.networks[run]
        counts = self.group.sum(torch.stack([t.sum() for t in (net.sent, net.consumed_received, net.consumed_local,
                                                               net.inbox.dropped)]))
        sent, received, local, dropped = counts.tolist()
        res.samples_sent, res.dropped = sent, dropped
        steps = c.nodes * max(self.step, 1)
        res.bytes_sent_per_node_step = sent * self.wire_bytes / steps
        if c.average:  # a node hands its tensors to each ring neighbour (gossip) or once to the all-reduce
            fanout = c.k if c.average == "gossip" else 1  # allreduce: every step, gradients the size of parameters
            res.bytes_sent_per_node_step = self.averaged_bytes * fanout * (self.step // c.average_every) / max(
                self.step, 1)
        res.wire_bytes_per_node_step = self.group.sum(self.wire[run : run + 1]).item() / steps
        res.consumed_from_inbox = received / (received + local) if received + local else 0.0
        digests = torch.zeros(c.nodes, dtype=torch.long)
        digests[self.owned.start : self.owned.stop] = net.digest
        res.routing = hashlib.blake2b(self.group.sum(digests).numpy().tobytes(), digest_size=8).hexdigest()
        return res

    def best_weights(self, run: int) -> dict[str, torch.Tensor]:
        """All nodes' weights of seed ``run`` (gathered from every process in node order, on rank 0)."""
        parts = self.group.gather(self.best[run])
        if parts is None:
            return {}
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}  # Stacked parameters stack along dim 0

    def parameters_by_name(self) -> dict[str, torch.Tensor]:
        return dict(self.parts.named_parameters())

    def _state(self) -> dict:
        return {
            "parts": self.parts.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "networks": [net.state_dict() for net in self.networks],
            "history": [dataclasses.asdict(h) for h in self.history],
            "best": self.best,
            "wire": self.wire,
        }

    def _load_state(self, state: dict) -> None:
        self.parts.load_state_dict(state["parts"])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for net, s in zip(self.networks, state["networks"], strict=True):
            net.load_state_dict(s)
        self.history = [NetworkResult(**h) for h in state["history"]]
        self.best = state["best"]
        self.wire = state["wire"].clone()
