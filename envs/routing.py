"""Routing in the network of nodes (thesis ch. 2): shards, ring neighbours, inboxes and each node's minibatch.

Integer bookkeeping on the CPU, shared by the env, the trainer and the distributed trainer. What travels
with a sample is what the receiver trains on: its 8-bit pixels (as the wire carries them), its index in
the training set (bookkeeping) and the sender's content. A node's minibatch is built from the same
things whether a sample came from its shard or its inbox, so received images are exactly the pixels
that arrived.

Placement never changes a draw: the shards come from the seed, and every node has its own random
stream (``node_seed``) for its shard order and for the trainer's consume, broadcast and noise draws.
A ``Network`` holds the nodes one process owns (all of them in the simulator); a broadcast is a
``Post`` that ``deliver`` merges with the posts of other processes in sender order, so every inbox sees
the same arrivals wherever its senders live.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

INIT = 1  # node_seed(seed, node, INIT): the stream that initialises a node's model


def node_seed(seed: int, node: int, *more: int) -> int:
    """The seed of node ``node``'s own random stream in the network of ``seed`` (``more``: further keys, e.g. a
    step): independent streams by numpy's ``SeedSequence``, the same on every process."""
    return int(np.random.SeedSequence([seed, node, *more]).generate_state(1, np.uint64)[0])


def placement(nodes: int, processes: int) -> list[range]:
    """The nodes each process owns: contiguous blocks whose sizes differ by at most one."""
    if not 1 <= processes <= nodes:
        raise ValueError(f"{nodes} node(s) cannot be spread over {processes} processes: every process needs a node; "
                         "run fewer processes or more nodes")
    bounds = [p * nodes // processes for p in range(processes + 1)]
    return [range(a, b) for a, b in itertools.pairwise(bounds)]


def shards(n_samples: int, nodes: int, generator: torch.Generator, size: int | None = None) -> list[torch.Tensor]:
    """An exclusive random part of ``range(n_samples)`` per node: the whole set split evenly (sizes differ by <= 1),
    or the first ``size`` samples of each such part, so that a smaller shard is part of a larger one (a sweep of
    shard sizes changes nothing else)."""
    check_shard_size(n_samples, nodes, size)
    parts = torch.randperm(n_samples, generator=generator).tensor_split(nodes)
    return list(parts) if size is None else [p[:size] for p in parts]


def check_shard_size(n_samples: int, nodes: int, size: int | None) -> None:
    """A ``ValueError`` unless each of ``nodes`` can have ``size`` of the ``n_samples`` to itself (``None``: all)."""
    if size is not None and not 1 <= size <= n_samples // nodes:
        raise ValueError(f"{nodes} nodes of {size:,} images each need {size * nodes:,} training images, there are "
                         f"{n_samples:,}: lower --shard-size or --nodes")


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


def links(nodes: int, k: int, processes: Sequence[range]) -> set[tuple[int, int]]:
    """``(p, q)`` for every pair of processes (indices into a ``placement``) where a node of ``p`` broadcasts to
    a node of ``q``: the messages each process sends and expects every step."""
    owner = torch.empty(nodes, dtype=torch.long)
    for p, owned in enumerate(processes):
        owner[owned.start : owned.stop] = p
    pairs = torch.stack([owner.unsqueeze(1).expand(-1, k), owner[ring_neighbours(nodes, k)]], -1).reshape(-1, 2)
    return {(p, q) for p, q in pairs.tolist() if p != q}


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


@dataclass
class Post:
    """What some nodes broadcast in one step: ``sender [S]`` (node ids), their minibatches' ``index [S, B]`` and
    ``pixels [S, B, C*H*W]``, and the content that goes with them, ``payload [S, B, D]``."""

    sender: torch.Tensor
    index: torch.Tensor
    pixels: torch.Tensor
    payload: torch.Tensor

    def rows(self, rows: torch.Tensor) -> Post:
        return Post(self.sender[rows], self.index[rows], self.pixels[rows], self.payload[rows])

    @staticmethod
    def cat(posts: Sequence[Post]) -> Post:
        """Several posts as one, in sender order (the order in which every inbox receives them)."""
        fields = ("sender", "index", "pixels", "payload")
        post = Post(*(torch.cat([getattr(p, f) for p in posts]) for f in fields))
        return post.rows(torch.argsort(post.sender, stable=True))


class Network:
    """The routing state of the nodes ``owned`` (default: all) of one network: shards, neighbours, inboxes,
    each node's pass over its shard and its random stream (``generators``, in ``owned`` order).

    ``pixels`` (uint8 ``[n, C*H*W]``) is the training set: a node's own samples are read from it, received
    ones from its inbox. Counters (``sent``, ``dropped``...) and ``digest`` are per owned node."""

    def __init__(
        self,
        pixels: torch.Tensor,
        nodes: int,
        neighbours: int,
        batch_size: int,
        payload_dim: int,
        capacity: int,
        seed: int,
        owned: range | None = None,
        shard_size: int | None = None,
    ):
        self.nodes, self.batch_size, self.pixels = nodes, batch_size, pixels
        self.owned = range(nodes) if owned is None else owned
        self.neighbours = ring_neighbours(nodes, neighbours)
        self.shards = shards(len(pixels), nodes, torch.Generator().manual_seed(seed), shard_size)
        smallest = min(len(s) for s in self.shards)
        if smallest < batch_size:
            raise ValueError(f"a node's shard holds {smallest} samples, fewer than a minibatch of {batch_size}; "
                             "use fewer nodes or a smaller batch")
        self.generators = [torch.Generator().manual_seed(node_seed(seed, i)) for i in self.owned]
        n = len(self.owned)
        self.inbox = Inbox(n, capacity, payload_dim, pixels.shape[1])
        self.order = [self._shuffled(j) for j in range(n)]
        self.cursor = [0] * n
        self.consumed_local = torch.zeros(n, dtype=torch.long)
        self.consumed_received = torch.zeros(n, dtype=torch.long)
        self.sent = torch.zeros(n, dtype=torch.long)  # samples sent, counted once per receiver
        self.digest = torch.zeros(n, dtype=torch.long)  # a hash of every minibatch each node trained on
        self.local = torch.full((nodes,), -1, dtype=torch.long)  # node id -> its row here (-1: not owned)
        self.local[self.owned.start : self.owned.stop] = torch.arange(n)

    def _shuffled(self, j: int) -> torch.Tensor:
        shard = self.shards[self.owned[j]]
        return shard[torch.randperm(len(shard), generator=self.generators[j])]

    def _local(self, wanted: torch.Tensor) -> torch.Tensor:
        """``[N, B]``: each node's next samples of its shuffled shard, of which it uses ``wanted[i]``
        (a new shuffle per pass; a pass ends when less than a minibatch is left)."""
        rows = []
        for j, need in enumerate(wanted.tolist()):
            if self.cursor[j] + self.batch_size > len(self.order[j]):
                self.order[j], self.cursor[j] = self._shuffled(j), 0
            rows.append(self.order[j][self.cursor[j] : self.cursor[j] + self.batch_size])
            self.cursor[j] += need
        return torch.stack(rows)

    def minibatch(self, consume: torch.Tensor) -> Minibatch:
        """Each owned node's minibatch: ``consume[i]`` samples from its inbox (as many as it holds), then its shard."""
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
        self._record(index, received)
        return Minibatch(index, received, payload, pixels)

    def _record(self, index: torch.Tensor, received: torch.Tensor) -> None:
        """Fold this step's minibatches (which samples, which of them received) into each node's digest."""
        rows = torch.cat([index, received.long()], 1).numpy()
        for j, row in enumerate(rows):
            h = hashlib.blake2b(int(self.digest[j]).to_bytes(8, "little", signed=True) + row.tobytes(), digest_size=8)
            self.digest[j] = int.from_bytes(h.digest(), "little", signed=True)

    def state_dict(self) -> dict:
        """The routing state a resumed run needs (shards follow from the seed)."""
        return {"inbox": self.inbox.state_dict(), "order": self.order, "cursor": list(self.cursor),
                "consumed_local": self.consumed_local, "consumed_received": self.consumed_received,
                "sent": self.sent, "digest": self.digest,
                "generators": [g.get_state() for g in self.generators]}

    def load_state_dict(self, state: dict) -> None:
        self.inbox.load_state_dict(state["inbox"])
        self.order, self.cursor = [o.clone() for o in state["order"]], list(state["cursor"])
        for k in ("consumed_local", "consumed_received", "sent", "digest"):
            setattr(self, k, state[k].clone())
        for g, s in zip(self.generators, state["generators"], strict=True):
            g.set_state(s)

    def post(self, senders: torch.Tensor, batch: Minibatch, payload: torch.Tensor) -> Post:
        """Owned nodes with ``senders[i]`` broadcast their minibatch (indices and pixels) with ``payload[i]``."""
        who = senders.nonzero().squeeze(1)
        if not self.neighbours.shape[1]:
            who = who[:0]
        self.sent[who] += batch.index.shape[1] * self.neighbours.shape[1]
        return Post(torch.as_tensor(self.owned)[who], batch.index[who], batch.pixels[who], payload[who])

    def deliver(self, posts: Sequence[Post]) -> None:
        """Push what ``posts`` (from this process and others) bring to the owned nodes among each sender's
        neighbours, in sender order (as one process holding every node would)."""
        post = Post.cat(posts)
        receivers = self.local[self.neighbours[post.sender]]  # [S, k]: each sender's neighbours' rows here
        row, slot = (receivers >= 0).nonzero(as_tuple=True)  # (sender, neighbour) pairs, in sender order
        if not len(row):
            return
        b = post.index.shape[1]

        def items(x: torch.Tensor) -> torch.Tensor:
            return x[row].reshape(len(row) * b, *x.shape[2:])

        who = receivers[row, slot].unsqueeze(1).expand(-1, b).reshape(-1)
        self.inbox.push(who, items(post.index), items(post.payload), items(post.pixels))

    def broadcast(self, senders: torch.Tensor, batch: Minibatch, payload: torch.Tensor) -> None:
        """``post`` and ``deliver`` in one network that lives in one process."""
        self.deliver([self.post(senders, batch, payload)])

    def outbound(self, post: Post, nodes: range) -> Post:
        """The part of ``post`` that some of ``nodes`` (another process's) receive."""
        to = self.neighbours[post.sender]
        return post.rows(((to >= nodes.start) & (to < nodes.stop)).any(1))


def pack(post: Post, encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """A post as the bytes that travel to another process: per sender, its id and minibatch indices (int32), the
    8-bit pixels and the content as ``encode`` writes it (``Content.encode``)."""
    fields = (post.sender.to(torch.int32).unsqueeze(1), post.index.to(torch.int32), post.pixels, encode(post.payload))
    return torch.cat([f.contiguous().view(torch.uint8).flatten(1) for f in fields], 1).reshape(-1)


def unpack(raw: torch.Tensor, batch_size: int, pixel_dim: int, content_bytes: int,
           decode: Callable[[torch.Tensor], torch.Tensor]) -> Post:
    """``pack``'s inverse; ``decode`` turns ``[S, B, content_bytes]`` bytes back into payloads (``Content.decode``)."""
    b = batch_size
    widths = [4, 4 * b, b * pixel_dim, b * content_bytes]
    records = raw.view(-1, sum(widths))
    sender, index, pixels, content = (fresh(f) for f in records.split(widths, 1))
    s = len(records)
    return Post(sender.view(torch.int32).reshape(s).long(), index.view(torch.int32).reshape(s, b).long(),
                pixels.reshape(s, b, pixel_dim), decode(content.reshape(s, b, content_bytes)))


def fresh(x: torch.Tensor) -> torch.Tensor:
    """A compact copy at the start of its own storage, which a view as another dtype needs."""
    return torch.empty(x.shape, dtype=x.dtype).copy_(x)
