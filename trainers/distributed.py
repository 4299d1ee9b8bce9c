"""A ``Group`` of real processes on torch.distributed: what spreads a network's nodes over processes and machines.

Started by ``torchrun`` (its ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``... environment) or, outside it, as a
world of one process. The backend is ``nccl`` when every process of this machine has a GPU of its own,
else ``gloo``. Posts between processes travel point to point: ``batch_isend_irecv`` with each peer (the
default, ``p2p``) or one ``all_to_all_single`` with every process (``all_to_all``), each in two rounds
(the byte counts, then the bytes). Every tensor handed to torch.distributed is counted in ``handed``.
A peer that dies or stops answering within ``timeout`` seconds is a one-line ``PeerLost``, never a hang.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from trainers.group import Group

EXCHANGES = ("p2p", "all_to_all")
T = TypeVar("T")


class PeerLost(RuntimeError):
    """Another process of the group died or stopped answering; shown as one line, exit code 1."""


def under_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


class DistributedGroup(Group):
    """This process's place in a torch.distributed process group (initialised here, once per process)."""

    def __init__(self, timeout: float = 120.0, exchange: str = "p2p", backend: str = "auto", threads: int = 0):
        """``threads``: torch's intra-op threads here (0: this machine's cores over its processes of the group)."""
        if exchange not in EXCHANGES:
            raise ValueError(f"unknown exchange {exchange!r}; choose from {', '.join(EXCHANGES)}")
        self.exchange_by, self.timeout = exchange, timeout
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= local else "gloo"
        self.device = torch.device("cpu")
        if backend == "nccl":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        torch.set_num_threads(threads or max(1, len(os.sched_getaffinity(0)) // local))  # a machine's processes share
        if not dist.is_initialized():
            wait = datetime.timedelta(seconds=timeout)
            if under_torchrun():
                dist.init_process_group(backend, timeout=wait)
            else:  # a world of one: the same code path as under torchrun, nothing to exchange
                store = Path(tempfile.mkdtemp(prefix="commchannels-group.")) / "store"
                dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1, timeout=wait)
        self.backend, self.rank, self.world = backend, dist.get_rank(), dist.get_world_size()
        self.handed = 0
        self.lost = False  # a peer died or went silent: nothing more is said to the others

    def _run(self, what: str, op: Callable[[], T]) -> T:
        try:
            return op()
        except (RuntimeError, dist.DistError) as e:
            self.lost = True
            first = re.sub(r"^\[[^\]]*\]\s*", "", (str(e).strip().splitlines() or [type(e).__name__])[0])
            first = first.split(". ")[0][:160]  # gloo's "Connection reset by peer", without its source path
            raise PeerLost(f"rank {self.rank} of {self.world} lost its peers during {what}: a process died or did not "
                           f"answer within {self.timeout:g} s ({first}); finished runs are saved, re-run to resume "
                           "from the last checkpoint") from None

    def _hand(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` where the backend wants it, counted as handed over."""
        self.handed += tensor.numel() * tensor.element_size()
        return tensor.to(self.device)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return tensor
        out = self._hand(tensor.clone())
        self._run("a sum", lambda: dist.all_reduce(out))
        return out.to(tensor.device)

    def any(self, flag: bool) -> bool:
        return bool(self.sum(torch.tensor([float(flag)])).item() > 0)

    def agree(self, flag: bool) -> bool:
        return bool(self.broadcast(bool(flag)))

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        box = [obj]
        self._run("a broadcast", lambda: dist.broadcast_object_list(box, src=0, device=self.device))
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        if self.world == 1:
            return [obj]
        out = [None] * self.world if self.rank == 0 else None
        self._run("a gather", lambda: dist.gather_object(obj, out, dst=0))
        return out

    def barrier(self) -> None:
        if self.world > 1:
            self._run("a barrier", dist.barrier)

    def same_step(self, step: int) -> bool:
        if self.world == 1:
            return True
        out = self._hand(torch.tensor([step, -step], dtype=torch.long))
        self._run("the check of the checkpoints", lambda: dist.all_reduce(out, op=dist.ReduceOp.MIN))
        low, minus_high = out.tolist()
        return low == -minus_high

    def save(self, path: Path, state: dict) -> None:
        """Every process writes its file aside, then all rename together: a kill leaves one step's set or the last."""
        if self.world == 1:
            return super().save(path, state)
        tmp = path.with_name(f".{path.name}.incoming")
        torch.save(state, tmp)
        self.barrier()
        os.replace(tmp, path)

    def exchange(self, outgoing: dict[int, list[torch.Tensor]], sources: Sequence[int],
                 parts: int) -> dict[int, list[torch.Tensor]]:
        if self.world == 1:
            return {}
        exchange = self._p2p if self.exchange_by == "p2p" else self._all_to_all
        return self._run("an exchange of posts", lambda: exchange(outgoing, sources, parts))

    def _p2p(self, outgoing: dict[int, list[torch.Tensor]], sources: Sequence[int],
             parts: int) -> dict[int, list[torch.Tensor]]:
        """Round 1: each peer learns the sizes of the buffers it gets; round 2: the bytes, in one buffer a peer."""
        sizes = {q: self._hand(torch.tensor([len(b) for b in bufs], dtype=torch.long)) for q, bufs in outgoing.items()}
        got = {p: torch.empty(parts, dtype=torch.long, device=self.device) for p in sources}
        self._wait([dist.P2POp(dist.isend, t, q) for q, t in sizes.items()] +
                   [dist.P2POp(dist.irecv, t, p) for p, t in got.items()])
        got = {p: t.cpu() for p, t in got.items()}
        data = {q: self._hand(torch.cat(bufs)) for q, bufs in outgoing.items() if sum(len(b) for b in bufs)}
        into = {p: torch.empty(int(t.sum()), dtype=torch.uint8, device=self.device) for p, t in got.items() if t.sum()}
        self._wait([dist.P2POp(dist.isend, t, q) for q, t in data.items()] +
                   [dist.P2POp(dist.irecv, t, p) for p, t in into.items()])
        return {p: list(into.get(p, torch.empty(0, dtype=torch.uint8)).cpu().split(got[p].tolist())) for p in sources}

    def _all_to_all(self, outgoing: dict[int, list[torch.Tensor]], sources: Sequence[int],
                    parts: int) -> dict[int, list[torch.Tensor]]:
        """The same two rounds with every process at once (zero-sized for the processes that are no peers)."""
        sizes = torch.zeros(self.world, parts, dtype=torch.long)
        for q, bufs in outgoing.items():
            sizes[q] = torch.tensor([len(b) for b in bufs])
        got = torch.empty_like(sizes, device=self.device)
        dist.all_to_all_single(got, self._hand(sizes))
        got = got.cpu()
        empty = torch.empty(0, dtype=torch.uint8)
        data = self._hand(torch.cat([b for q in range(self.world) for b in outgoing.get(q, [])] or [empty]))
        into = torch.empty(int(got.sum()), dtype=torch.uint8, device=self.device)
        dist.all_to_all_single(into, data, got.sum(1).tolist(), sizes.sum(1).tolist())
        pieces = into.cpu().split(got.flatten().tolist())
        return {p: list(pieces[p * parts : (p + 1) * parts]) for p in sources}

    def _wait(self, ops: list) -> None:
        for work in dist.batch_isend_irecv(ops) if ops else []:
            work.wait()

    def close(self, settled: bool = True) -> None:
        """Leave the group: after a barrier when this process ended its work normally (``settled``) and no peer was
        lost, since a process that tears down its connections while a peer still finishes a send to it can abort
        that peer (gloo: "terminate called without an active exception", seen once in CI on 3 processes)."""
        if not dist.is_initialized():
            return
        if settled and not self.lost:
            with contextlib.suppress(PeerLost):
                self.barrier()
        dist.destroy_process_group()
        gc.collect()  # gloo's finished works and their tensors go now, not at interpreter exit, where freeing them
        # can abort the process (PyTorch's own diagnosis of that SIGABRT; seen here once more on 3 processes)
