"""The baseline the network of nodes is measured against (thesis ch. 2): data-parallel training of one model.

One ``DistributedDataParallel`` replica per process trains on the union of the shards of the nodes that
process holds in the network (``envs.routing.placement``), ``batch_size`` samples a step, and all-reduces
its gradients every step. A communication hook counts what DDP hands to all-reduce (every gradient,
float32: 4 bytes per parameter per step); a ring all-reduce puts ``2 (P - 1) / P`` of that on each
process's wire. Every seed's replica is one part of a stacked model (``agents.network.stack``), so the
seeds of a configuration train together, each all-reduced with its own replicas on the other processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from agents.network import MODELS, seeded_models, stack
from envs.data import Split, Splits
from envs.network import crop_and_flip, every_node
from envs.routing import INIT, from_pixels, node_seed, placement, shards, to_pixels
from trainers.base import Trainer, adam, lr_factor, run_rows
from trainers.distributed import DistributedGroup
from trainers.network.config import NetworkConfig, NetworkResult


class Classifier(nn.Module):
    """The stacked node classifiers as one module (what DDP wraps): ``[seeds, batch, C, H, W] -> logits``."""

    def __init__(self, parts: nn.ModuleDict):
        super().__init__()
        self.parts = parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.parts["head"](self.parts["trunk"](x))


class HookBytes:
    """The state of the counting communication hook: bytes handed to all-reduce so far."""

    def __init__(self):
        self.bytes = 0

    @staticmethod
    def hook(state, bucket):  # no annotations: DDP checks them, and postponed ones (strings) fail its check
        """Count the bucket's bytes, then all-reduce it as DDP's default hook does."""
        buffer = bucket.buffer()
        state.bytes += buffer.numel() * buffer.element_size()
        return default_hooks.allreduce_hook(None, bucket)


class DDPBaseline(Trainer):
    """One DDP replica (per seed) per process of ``group``; one run per seed, named like a network config."""

    def __init__(self, config: NetworkConfig, splits: Splits, seeds: Sequence[int], device: torch.device | str = "cpu",
                 group: DistributedGroup | None = None):
        super().__init__((config, splits, seeds), seeds, device, config.eval_every, group=group or DistributedGroup())
        self.config, self.splits, self.seeds = config, splits.to(device), list(seeds)
        self.classes = int(splits.train.labels.max()) + 1
        owned = placement(config.nodes, self.group.world)[self.group.rank]
        self.pixels = to_pixels(splits.train.images)
        parts = [shards(len(self.pixels), config.nodes, torch.Generator().manual_seed(s), config.shard_size)
                 for s in self.seeds]
        self.union = [torch.cat(p[owned.start : owned.stop]) for p in parts]
        self.generators = [torch.Generator().manual_seed(node_seed(s, config.nodes + self.group.rank)) for s in seeds]
        self.order = [u[torch.randperm(len(u), generator=g)] for u, g in zip(self.union, self.generators, strict=True)]
        self.cursor = [0] * len(self.seeds)
        inits = [node_seed(s, config.nodes, INIT) for s in self.seeds]  # the same replica on every process
        parts = stack(seeded_models("classifier", splits.shape, MODELS[config.model], self.classes, inits))
        parts = parts.to(device, memory_format=torch.channels_last)  # as the gradients come: buckets match them
        self.model = DistributedDataParallel(Classifier(parts), gradient_as_bucket_view=True)
        self.counter = HookBytes()
        self.model.register_comm_hook(self.counter, HookBytes.hook)
        self.optimizer = adam(self.model.parameters(), device, lr=config.lr, weight_decay=config.weight_decay or 0.0)
        self.history = [NetworkResult() for _ in self.seeds]
        self.hook_bytes = 0.0  # what the hook counted, over the whole run (resumes with it)

    def header(self) -> dict:
        return {**super().header(), "rank": self.group.rank, "processes": self.group.world}

    def _minibatch(self) -> torch.Tensor:
        """Each seed's next ``batch_size`` samples of this process's union of shards (a new shuffle per pass)."""
        b, rows = self.config.batch_size, []
        for r, g in enumerate(self.generators):
            if self.cursor[r] + b > len(self.order[r]):
                self.order[r], self.cursor[r] = self.union[r][torch.randperm(len(self.union[r]), generator=g)], 0
            rows.append(self.order[r][self.cursor[r] : self.cursor[r] + b])
            self.cursor[r] += b
        return torch.stack(rows)

    def train_step(self) -> dict[str, torch.Tensor]:
        index = self._minibatch()
        x = from_pixels(self.pixels[index]).to(self.device).view(*index.shape, *self.splits.shape)
        x = crop_and_flip(x, self.generators) if self.config.augment else x
        y = self.splits.train.labels[index.to(self.device)]
        before = self.counter.bytes
        logits = self.model(x)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y).mean(1)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * lr_factor(self.config.lr_schedule, self.step / self.config.steps)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # DDP averages each gradient over the processes here
        self.optimizer.step()
        self.hook_bytes += self.counter.bytes - before
        self.step += 1
        return {"train/loss": self.group.sum(losses.detach().cpu()) / self.group.world}

    def total_steps(self) -> int:
        return self.config.steps

    @torch.no_grad()
    def accuracy(self, split: Split) -> list[float]:
        """Each seed's replica's accuracy (%) on ``split`` (the replicas are equal on every process), in eval mode
        as the nodes are evaluated: batch norms read their running statistics."""
        correct = torch.zeros(len(self.seeds), device=self.device)
        self.model.module.eval()
        try:
            for x, y in zip(split.images.split(1000), split.labels.split(1000), strict=True):
                logits = self.model.module(every_node(x, len(self.seeds), self.splits.shape))
                correct += (logits.argmax(-1) == y).float().sum(1)
        finally:
            self.model.module.train()
        return (100.0 * correct / len(split.labels)).tolist()

    def evaluate(self, split: Split) -> dict[str, torch.Tensor]:
        return {"accuracy": run_rows(self.accuracy(split))}

    def evaluation(self) -> dict[str, torch.Tensor]:
        val = self.accuracy(self.splits.val)
        test = self.accuracy(self.splits.test) if self.step >= self.config.steps else None
        for r, res in enumerate(self.history):
            res.steps.append(self.step)
            res.val_average.append(val[r])
            res.val_collective.append(val[r])
            if test is not None:
                res.best_step, res.test_average, res.test_collective, res.test_nodes = self.step, test[r], test[r], [
                    test[r]]
        return {"val/average_accuracy": run_rows(val), "val/collective_accuracy": run_rows(val)}

    def result(self, run: int) -> NetworkResult:
        res = dataclasses.replace(self.history[run])
        res.hook_bytes_per_step = self.hook_bytes / len(self.seeds) / max(self.step, 1)
        return res

    def best_weights(self, run: int) -> dict[str, torch.Tensor]:
        """The replica after the last step (rank 0's: every process holds the same)."""
        if not self.group.leader:
            return {}
        return {k: v.detach().chunk(len(self.seeds))[run].cpu().clone()
                for k, v in self.model.module.parts.state_dict().items()}

    def parameters_by_name(self) -> dict[str, torch.Tensor]:
        return dict(self.model.module.named_parameters())

    def _state(self) -> dict:
        return {"model": self.model.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generators": [g.get_state() for g in self.generators], "order": self.order, "cursor": self.cursor,
                "history": [dataclasses.asdict(h) for h in self.history], "hook_bytes": self.hook_bytes}

    def _load_state(self, state: dict) -> None:
        self.model.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for g, s in zip(self.generators, state["generators"], strict=True):
            g.set_state(s)
        self.order, self.cursor = [o.clone() for o in state["order"]], list(state["cursor"])
        self.history = [NetworkResult(**h) for h in state["history"]]
        self.hook_bytes = state["hook_bytes"]
