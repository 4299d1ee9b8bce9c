"""The processes a trainer's runs live in. ``Group()`` is this process alone: what every trainer has by
default, the network simulator included. ``trainers.distributed.DistributedGroup`` spreads a network's
nodes over torch.distributed processes behind the same calls, so the trainer and ``Trainer.fit`` are
written once for one process and for many.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trainers.files import save_atomic


class Group:
    """This process alone: every reduction is the identity and nothing is exchanged."""

    rank = 0
    world = 1
    backend = "none"
    handed = 0  # bytes handed to the transport so far (none in one process)

    @property
    def leader(self) -> bool:
        """Whether this process writes results, TensorBoard and tables (rank 0)."""
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of ``tensor`` over the processes (every process gets it)."""
        return tensor

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any process."""
        return flag

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every process (a decision that must not differ between them, e.g. by clocks)."""
        return flag

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        return obj

    def gather(self, obj: Any) -> list[Any] | None:
        """Every process's ``obj`` in rank order, on rank 0 (``None`` elsewhere)."""
        return [obj]

    def exchange(self, outgoing: dict[int, list[torch.Tensor]], sources: Sequence[int],
                 parts: int) -> dict[int, list[torch.Tensor]]:
        """Send each ``outgoing[rank]`` (``parts`` uint8 buffers) to that rank; receive ``parts`` from each source."""
        return {}

    def save(self, path: Path, state: dict) -> None:
        """Write this process's checkpoint atomically (every process at the same step)."""

        save_atomic(path, state)

    def same_step(self, step: int) -> bool:
        """Whether every process resumes from the same step (-1: no checkpoint)."""
        return True

    def close(self, settled: bool = True) -> None:
        """Leave the group (nothing to leave alone); ``settled``: this process ended its work normally."""
