"""Routing in the network of nodes (thesis ch. 2): shards, ring neighbours, inboxes and each node's minibatch.

Integer bookkeeping on the CPU, shared by the env and the trainer. What travels with a sample is what
the receiver trains on: its 8-bit pixels (as the wire carries them), its index in the training set
(bookkeeping) and the sender's content. A node's minibatch is built from the same things whether a
sample came from its shard or its inbox, so received images are exactly the pixels that arrived.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def shards(n_samples: int, nodes: int, generator: torch.Generator) -> list[torch.Tensor]:
    """An exclusive random part of ``range(n_samples)`` per node; together they cover it (sizes differ by <= 1)."""
    return list(torch.randperm(n_samples, generator=generator).tensor_split(nodes))


def ring_neighbours(nodes: int, k: int) -> torch.Tensor:
    """``[nodes, k]``: node ``i`` broadcasts to ``i+1, i-1, i+2, i-2, ...`` (mod ``nodes``); ``k = nodes-1`` is
    fully connected."""
    if nodes < 1 or not 0 <= k < nodes:
        raise ValueError(f"need 1 <= nodes and 0 <= neighbours < nodes, got nodes={nodes}, neighbours={k}")
    offsets = torch.tensor([s * (1 + j // 2) for j, s in zip(range(k), [1, -1] * k, strict=False)], dtype=torch.long)
    return (torch.arange(nodes).unsqueeze(1) + offsets) % nodes


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] as the 8-bit pixels that travel (exact for images read from 8-bit files)."""
    return (images * 255).round().clamp(0, 255).to(torch.uint8)


def from_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """8-bit pixels as float images in [0, 1], bit for bit what ``envs.data.load_splits`` gives."""
    return pixels.float() / 255


class Inbox:
    """One bounded FIFO queue per node (drop-oldest on overflow) of received samples: their indices, pixels
    and payloads."""

    def __init__(self, nodes: int, capacity: int, payload_dim: int, pixel_dim: int):
        if capacity < 1:
            raise ValueError(f"inbox capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.index = torch.zeros(nodes, capacity, dtype=torch.long)
        self.payload = torch.zeros(nodes, capacity, payload_dim)
        self.pixels = torch.zeros(nodes, capacity, pixel_dim, dtype=torch.uint8)
        self.head = torch.zeros(nodes, dtype=torch.long)
        self.count = torch.zeros(nodes, dtype=torch.long)
        self.dropped = torch.zeros(nodes, dtype=torch.long)

    def push(self, receivers: torch.Tensor, index: torch.Tensor, payload: torch.Tensor, pixels: torch.Tensor) -> None:
        """Append items (in arrival order) to their receivers' queues."""
        nodes = len(self.count)
        order = torch.argsort(receivers, stable=True)
        receivers, index, payload, pixels = receivers[order], index[order], payload[order], pixels[order]
        arriving = torch.bincount(receivers, minlength=nodes)
        first = torch.cumsum(arriving, 0) - arriving
        rank = torch.arange(len(receivers)) - first[receivers]
        keep = rank >= (arriving - self.capacity)[receivers]  # more than a queue holds: only the newest survive
        receivers, index, payload, pixels, rank = receivers[keep], index[keep], payload[keep], pixels[keep], rank[keep]
        slot = (self.head[receivers] + self.count[receivers] + rank) % self.capacity
        self.index[receivers, slot] = index
        self.payload[receivers, slot] = payload
        self.pixels[receivers, slot] = pixels
        total = self.count + arriving
        overflow = (total - self.capacity).clamp_min(0)
        self.head = (self.head + overflow) % self.capacity
        self.count = total.clamp_max(self.capacity)
        self.dropped += overflow

    def pop(self, wanted: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Take up to ``wanted[i]`` oldest items from each queue: ``(index [N, width], payload, pixels, taken [N])``;
        row ``i`` holds its items in its first ``taken[i]`` columns."""
        taken = torch.minimum(wanted, self.count)
        slot = (self.head.unsqueeze(1) + torch.arange(width)) % self.capacity
        rows = torch.arange(len(self.count)).unsqueeze(1)
        index, payload, pixels = self.index[rows, slot], self.payload[rows, slot], self.pixels[rows, slot]
        self.head = (self.head + taken) % self.capacity
        self.count -= taken
        return index, payload, pixels, taken

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in ("index", "payload", "pixels", "head", "count", "dropped")}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            setattr(self, k, v.clone())


@dataclass
class Minibatch:
    """What every node trains on this step: ``index [N, B]`` into the training set, ``received [N, B]``
    (True where the sample came from the inbox), the payload that came with it ``[N, B, D]`` and the
    samples' 8-bit pixels ``[N, B, C*H*W]``."""

    index: torch.Tensor
    received: torch.Tensor
    payload: torch.Tensor
    pixels: torch.Tensor

    def to(self, device: torch.device | str) -> Minibatch:
        return Minibatch(*(t.to(device) for t in (self.index, self.received, self.payload, self.pixels)))

    def rows(self, rows: slice) -> Minibatch:
        """The minibatches of some nodes."""
        return Minibatch(self.index[rows], self.received[rows], self.payload[rows], self.pixels[rows])

    @staticmethod
    def cat(parts: list[Minibatch]) -> Minibatch:
        """The minibatches of several networks' nodes, stacked in order."""
        fields = ("index", "received", "payload", "pixels")
        return Minibatch(*(torch.cat([getattr(m, f) for m in parts]) for f in fields))


class Network:
    """The routing state of one network: shards, neighbours, inboxes and each node's pass over its shard.

    ``pixels`` (uint8 ``[n, C*H*W]``) is the training set: a node's own samples are read from it, received
    ones from its inbox."""

    def __init__(
        self,
        pixels: torch.Tensor,
        nodes: int,
        neighbours: int,
        batch_size: int,
        payload_dim: int,
        capacity: int,
        generator: torch.Generator,
    ):
        self.nodes, self.batch_size, self.generator, self.pixels = nodes, batch_size, generator, pixels
        self.neighbours = ring_neighbours(nodes, neighbours)
        self.shards = shards(len(pixels), nodes, generator)
        smallest = min(len(s) for s in self.shards)
        if smallest < batch_size:
            raise ValueError(f"a node's shard holds {smallest} samples, fewer than a minibatch of {batch_size}; "
                             "use fewer nodes or a smaller batch")  # fmt: skip
        self.inbox = Inbox(nodes, capacity, payload_dim, pixels.shape[1])
        self.order = [s[torch.randperm(len(s), generator=generator)] for s in self.shards]
        self.cursor = [0] * nodes
        self.consumed_local = torch.zeros(nodes, dtype=torch.long)
        self.consumed_received = torch.zeros(nodes, dtype=torch.long)
        self.sent = torch.zeros(nodes, dtype=torch.long)  # samples sent, counted once per receiver

    def _local(self, wanted: torch.Tensor) -> torch.Tensor:
        """``[N, B]``: each node's next samples of its shuffled shard, of which it uses ``wanted[i]``
        (a new shuffle per pass; a pass ends when less than a minibatch is left)."""
        rows = []
        for i, need in enumerate(wanted.tolist()):
            if self.cursor[i] + self.batch_size > len(self.order[i]):
                self.order[i] = self.shards[i][torch.randperm(len(self.shards[i]), generator=self.generator)]
                self.cursor[i] = 0
            rows.append(self.order[i][self.cursor[i] : self.cursor[i] + self.batch_size])
            self.cursor[i] += need
        return torch.stack(rows)

    def minibatch(self, consume: torch.Tensor) -> Minibatch:
        """Each node's minibatch: ``consume[i]`` samples from its inbox (as many as it holds), then its shard."""
        b = self.batch_size
        index, payload, pixels, taken = self.inbox.pop(consume.clamp(0, b), b)
        local = self._local(b - taken)
        column = torch.arange(b)
        received = column < taken.unsqueeze(1)
        shifted = (column - taken.unsqueeze(1)).clamp_min(0)  # local samples fill the columns after the inbox's
        index = torch.where(received, index, local.gather(1, shifted))
        pixels = torch.where(received.unsqueeze(-1), pixels, self.pixels[index])
        payload = payload * received.unsqueeze(-1)
        self.consumed_received += taken
        self.consumed_local += b - taken
        return Minibatch(index, received, payload, pixels)

    def state_dict(self) -> dict:
        """The routing state a resumed run needs (shards follow from the seed)."""
        return {"inbox": self.inbox.state_dict(), "order": self.order, "cursor": list(self.cursor),
                "consumed_local": self.consumed_local, "consumed_received": self.consumed_received,
                "sent": self.sent}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.inbox.load_state_dict(state["inbox"])
        self.order, self.cursor = [o.clone() for o in state["order"]], list(state["cursor"])
        for k in ("consumed_local", "consumed_received", "sent"):
            setattr(self, k, state[k].clone())

    def broadcast(self, senders: torch.Tensor, batch: Minibatch, payload: torch.Tensor) -> None:
        """Nodes with ``senders[i]`` send their minibatch (indices and pixels) with ``payload[i]`` to each neighbour."""
        who = senders.nonzero().squeeze(1)
        if not len(who) or not self.neighbours.shape[1]:
            return
        b, k = batch.index.shape[1], self.neighbours.shape[1]
        receivers = self.neighbours[who].unsqueeze(-1).expand(-1, -1, b).reshape(-1)

        def copies(x: torch.Tensor) -> torch.Tensor:  # each sender's rows, once per neighbour
            return x[who].unsqueeze(1).expand(-1, k, *x.shape[1:]).reshape(len(receivers), *x.shape[2:])

        self.inbox.push(receivers, copies(batch.index), copies(payload), copies(batch.pixels))
        self.sent[who] += b * k
