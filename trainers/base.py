"""What every trainer of the three chapters shares: one ``fit`` loop, the events a benchmark listens to,
the divergence guard, devices and resumable checkpoints.

A trainer trains several independent *runs* at once (a level, selection or configuration, times a
seed). ``fit`` calls the trainer's ``train_step`` until it is done, evaluates every ``eval_every``
steps, hands finished runs to ``Events.finished`` as soon as they finish (so a benchmark can save them
before the others end) and saves a checkpoint after evaluations, from which a killed run resumes with
bit-identical results. A non-finite loss or weight stops training with one line (``Diverged``).
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
import typing
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import field, fields
from pathlib import Path
from typing import Any

import torch

from envs.base import check_type
from trainers.files import CheckpointError, load_checked
from trainers.group import Group

SCHEDULES = ("constant", "cosine", "linear")  # a learning rate constant, or decayed to 0 over the budget
CHECKPOINT_SECONDS = 60.0  # between checkpoints after the first: saving every evaluation costs seconds


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A config field with the help text its generated CLI flag shows (``benchmarks.cli``)."""
    if isinstance(default, (list, dict, set)) or hasattr(default, "__dataclass_fields__"):
        value = default
        return field(default_factory=lambda: value, metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


def lr_factor(schedule: str, progress: float) -> float:
    """The learning rate's multiplier at ``progress`` (0 to 1) of the step budget: 1, a cosine or a line to 0."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return max(0.0, 1 - progress) if schedule == "linear" else 1.0


def check_fields(config: Any) -> None:
    """Each field of a config dataclass holds its annotated type (``envs.base.check_type``) and, where the field
    lists choices, one of them: the Python API refuses what the command line would."""
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        value = getattr(config, f.name)
        check_type(f.name, value, hints[f.name])
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise ValueError(f"unknown {f.name} {value!r}; choose from {', '.join(map(str, choices))}")


class Interrupts:
    """Ctrl-C (SIGINT) or SIGTERM during ``fit`` -- torchrun forwards a Ctrl-C to its workers as SIGTERM --
    asks for a checkpoint at the next evaluation and then stops (so at most one evaluation interval is lost,
    not a minute); a second signal stops at once. ``active`` False (no checkpoint to save): signals keep
    their handlers."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, active: bool) -> None:
        self.active, self.requested, self.previous = active, False, {}

    def __enter__(self) -> Interrupts:
        if self.active and threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupted: saving a checkpoint at the next evaluation (Ctrl-C again stops at once)", file=sys.stderr)

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class Diverged(ValueError):
    """A run produced a non-finite loss or weight; shown as one line, exit code 2."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else the CPU; an unavailable device is one-line ``ValueError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name not in available:
        raise ValueError(f"unknown device {name!r}; choose from auto, {', '.join(available)}")
    if not available[name]:
        raise ValueError(f"--device {name} is not available on this machine (torch {torch.__version__}); "
                         "use --device cpu or auto")
    return torch.device(name)


def adam(params, device: torch.device | str, weight_decay: float = 0.0, **kwargs: Any) -> torch.optim.Adam:
    """Adam (AdamW, decoupled, with a ``weight_decay``), fused where torch has the fused kernel (CPU, CUDA): one
    kernel per tensor instead of a dozen elementwise passes; on this CPU it lifted the batched node trainer by
    ~20% and the language population by ~30% (``benchmarks.throughput``). Elementwise, so one Adam over stacked
    runs is still one Adam per run."""
    fused = torch.device(device).type in ("cpu", "cuda")
    if weight_decay:
        return torch.optim.AdamW(params, fused=fused, weight_decay=weight_decay, **kwargs)
    return torch.optim.Adam(params, fused=fused, **kwargs)


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded random stream on ``device``: the same seed on the same device gives the same draws."""
    return torch.Generator(device=device).manual_seed(seed)


def restore_generators(generators: Sequence[torch.Generator], states: Sequence[torch.Tensor]) -> None:
    """Resume random streams; a state saved on another device type cannot be set and leaves that
    stream freshly seeded (moving a run between devices changes its draws from then on)."""
    for g, state in zip(generators, states, strict=True):
        if g.get_state().shape == state.shape:
            g.set_state(state.cpu())


class Trainer(ABC):
    """The protocol of every trainer: ``train_step``, ``evaluate``, ``fit``, ``state_dict``, ``to``.

    A subclass calls ``Trainer.__init__`` with its constructor's arguments (``to`` rebuilds from them) and
    implements the abstract methods; ``fit`` is written once, here. A trainer spread over processes (the
    network's nodes) passes its ``group``: each process then keeps its own checkpoint, and they save and
    resume at the same step.
    """

    def __init__(self, args: tuple, runs: Sequence, device: torch.device | str, eval_every: int,
                 log_every: int | None = None, group: Group | None = None):
        """The state every trainer shares: its runs (one label each), device, evaluation and logging intervals,
        process group, step, and which runs (indices into ``runs``) still train and which have finished."""
        self._args, self._group_given = args, group is not None
        self.runs, self.device = list(runs), torch.device(device)
        self.eval_every, self.log_every = eval_every, log_every or eval_every
        self.group = group or Group()
        self.step = 0
        self.elapsed_s = 0.0  # seconds these runs have trained, across kills (the checkpoint carries it)
        self._alive = list(range(len(self.runs)))
        self._finished: set[int] = set()

    @abstractmethod
    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimisation step of every run still training; ``{tag: value per alive run}``."""

    @abstractmethod
    def evaluate(self, split: Any) -> dict[str, torch.Tensor]:
        """Metrics on ``split`` per alive run, without training."""

    @abstractmethod
    def evaluation(self) -> dict[str, torch.Tensor]:
        """The periodic evaluation: records history, returns ``{tag: value per alive run}`` to log."""

    @abstractmethod
    def total_steps(self) -> int:
        """Upper bound of ``step`` (the progress bar's length)."""

    @abstractmethod
    def result(self, run: int) -> Any:
        """Run ``run``'s (index into ``runs``) final result, a dataclass."""

    @abstractmethod
    def _state(self) -> dict:
        """Everything but ``step`` (weights, optimisers, random streams, history) to resume bit for bit."""

    @abstractmethod
    def _load_state(self, state: dict) -> None: ...

    def header(self) -> dict:
        """What a checkpoint must match to be resumed by this trainer."""
        return {"trainer": type(self).__name__, "runs": [repr(r) for r in self.runs], "config": repr(self.config)}

    @property
    def alive(self) -> list[int]:
        """Runs still training, by position in the batch; trainers that stop runs early shrink it."""
        return self._alive

    def done(self) -> bool:
        """At the step budget, or every run finished (runs that stop together are not dropped)."""
        return self.step >= self.total_steps() or len(self._finished) == len(self.runs)

    def stopping(self) -> list[int]:
        """Runs (indices into ``runs``) that stop after this evaluation; default: none until the end."""
        return []

    def drop(self, finished: list[int]) -> None:  # noqa: B027 (only trainers that stop runs early drop them)
        """Remove finished runs from the batch."""

    @abstractmethod
    def best_weights(self, run: int) -> dict[str, torch.Tensor]:
        """Run ``run``'s weights at its best validation (tensors only, CPU)."""

    @abstractmethod
    def parameters_by_name(self) -> dict[str, torch.Tensor]:
        """Every trainable tensor (the divergence guard checks them at each evaluation)."""

    def state_dict(self) -> dict:
        return {"header": self.header(), "step": self.step, "alive": self.alive,
                "finished": sorted(self._finished), "elapsed_s": self.elapsed_s, **self._state()}

    def load_state_dict(self, state: dict) -> None:
        self.step, self._finished = state["step"], set(state["finished"])
        self.elapsed_s = state.get("elapsed_s", 0.0)  # absent from checkpoints saved before it was kept
        if state["alive"] != list(range(len(self.runs))):
            self.drop([r for r in range(len(self.runs)) if r not in state["alive"]])
        self._load_state(state)

    def to(self, device: torch.device | str) -> Trainer:
        """Move every tensor, model, optimiser and random stream to ``device`` (by a state round trip)."""
        state = self.state_dict()
        self._build(torch.device(device))
        self.load_state_dict(state)
        return self

    def _build(self, device: torch.device) -> None:
        """Construct again on ``device`` from the arguments it was made with (``self._args``)."""
        self.__init__(*self._args, device=device, **({"group": self.group} if self._group_given else {}))

    def fit(self, events: Events | None = None, checkpoint: Path | None = None) -> list:
        """Train until done; every result goes to ``events.finished`` and is returned, in ``runs`` order.

        With ``checkpoint``, training resumes from it if it exists and saves it after the first
        evaluation and then at most once a minute (atomically); the caller deletes it when done.
        ``elapsed_s`` then counts every part of the training, the ones before a kill too (up to the checkpoint
        resumed from), so a result's training time survives its interruptions."""
        events = events or Events()
        if checkpoint is not None:
            self._resume(checkpoint)
        events.begin(self.total_steps(), self.step)
        saved, clock = -math.inf, time.monotonic()
        with Interrupts(checkpoint is not None) as interrupts:
            while not self.done():
                metrics = self.train_step()
                self._guard(metrics)
                if self.step % self.log_every == 0 or self.step == 1:
                    events.scalars(self.step, self._per_run(metrics))
                if self.step % self.eval_every == 0 or self.step >= self.total_steps():
                    self._guard_weights()
                    events.scalars(self.step, self._per_run(self.evaluation()))
                    stopped = self.stopping() if self.step < self.total_steps() else list(self.alive)
                    self._finish(stopped, events)
                    asked = self.group.agree(interrupts.requested)  # rank 0's Ctrl-C stops every process
                    now = time.monotonic()
                    late = now - saved > CHECKPOINT_SECONDS
                    self.elapsed_s, clock = self.elapsed_s + now - clock, now
                    if self.group.agree(checkpoint is not None and not self.done() and (late or asked)):
                        self.group.save(checkpoint, self.state_dict())
                        saved = time.monotonic()
                    if asked and not self.done():
                        raise KeyboardInterrupt
                events.advance(1)
        return [self.result(r) for r in range(len(self.runs))]

    def _resume(self, checkpoint: Path) -> None:
        """Load ``checkpoint`` if there is one; every process of the group must be at the same step."""
        state = None
        if checkpoint.exists():
            state = load_checked(checkpoint, "checkpoint", "delete it to restart those runs")
            if "header" not in state:
                raise CheckpointError(f"{checkpoint} is a checkpoint from before this version; delete it to restart")
            if state["header"] != self.header():
                raise CheckpointError(f"checkpoint {checkpoint} belongs to other runs or another config; "
                                      "delete it to restart")
        if not self.group.same_step(state["step"] if state else -1):
            raise CheckpointError(f"the processes' checkpoints ({checkpoint} on rank {self.group.rank}) are not of "
                                  "the same step: one was killed while they saved; delete them to restart")
        if state is not None:
            self.load_state_dict(state)
            if self.group.rank == 0:
                print(f"resuming {len(self.runs)} runs ({len(self.alive)} still training) from {checkpoint} at step "
                      f"{self.step}", file=sys.stderr)

    def _finish(self, stopped: list[int], events: Events) -> None:
        stopped = [r for r in stopped if r not in self._finished]
        for r in stopped:
            self._finished.add(r)
            events.finished(r, self.result(r), self.best_weights(r))
        keep = [r for r in self.alive if r not in stopped]
        if stopped and keep:
            self.drop(stopped)

    def _per_run(self, metrics: dict[str, torch.Tensor]) -> dict[str, dict[int, float]]:
        alive = self.alive
        return {tag: dict(zip(alive, torch.as_tensor(v).reshape(-1).tolist(), strict=True))
                for tag, v in metrics.items()}

    def _guard(self, metrics: dict[str, torch.Tensor]) -> None:
        for tag, values in metrics.items():
            values = torch.as_tensor(values).reshape(-1)
            bad = (~torch.isfinite(values)).nonzero()
            if len(bad):
                i = int(bad[0])
                raise Diverged(f"run {self._label(self.alive[i])} diverged at step {self.step}: {tag} is "
                               f"{values[i].item()}; lower --lr (no results of it were saved)")

    def _guard_weights(self) -> None:
        bad = next((name for name, t in self.parameters_by_name().items() if not torch.isfinite(t).all()), None)
        if self.group.any(bad is not None):
            where = bad or f"the weights of another process than rank {self.group.rank}"
            raise Diverged(f"{type(self).__name__} diverged at step {self.step}: non-finite weights in "
                           f"{where}; lower --lr (no results of it were saved)")

    def _label(self, run: int) -> str:
        r = self.runs[run]
        return " seed ".join(map(str, r)) if isinstance(r, tuple) else str(r)


class Events:
    """What a trainer tells its benchmark; the default ignores everything (library use, tests)."""

    def begin(self, total: int, done: int) -> None:
        """Training of ``total`` steps starts, ``done`` of them already (resumed)."""

    def advance(self, steps: int = 1) -> None:
        """``steps`` more steps were taken."""

    def scalars(self, step: int, values: dict[str, dict[int, float]]) -> None:
        """``{tag: {run index: value}}`` at ``step``; tags ``train/...``, ``val/...``, ``test/...``."""

    def finished(self, run: int, result: Any, weights: dict[str, torch.Tensor]) -> None:
        """Run ``run`` is done: its result and its best-validation weights (tensors only)."""


def run_rows(values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """A per-run column of floats (``[runs]``)."""
    return torch.as_tensor(values, dtype=torch.float32)
