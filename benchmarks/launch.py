"""Where a command's trainings run: here, one trainer after another (``--launcher local``, the default), or as
tasks on a Slurm cluster (``submitit``; its local executor where there is no Slurm) or a Ray cluster (``ray``).

The runs a command still lacks are cut into tasks of ``--runs-per-task`` (default: a variant's runs, what one
local trainer batches, so a run trains beside the same runs wherever it trains and gives the same numbers). A
task trains its runs with the benchmark's own trainer, checkpointing to a file of its own, writes the runs it
finished to a result file of its own and returns. Only the driver writes the results store (its lock, atomic
saves), taking in result files as tasks end; a re-run of a killed command first takes in the result files that
tasks finished meanwhile, then sends only tasks with runs still missing, and a task whose result file exists
returns it untrained (a per-task lock keeps two workers of one task from training it twice). So tasks and the
driver must see one filesystem: ``--out`` (the tasks' files go to ``<out>.tasks/``), ``--logdir`` and caches.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.cli import ArgumentParser, UsageError
from benchmarks.store import Store, prefix
from trainers.files import load_checked, save_atomic

LAUNCHERS = ("local", "submitit", "ray")
EXTRA = "pip install -e \".[cluster]\""
CLUSTER = {"launcher": ("submitit", "ray")}


def add_launcher(parser: ArgumentParser) -> None:
    """``--launcher`` and what each engine needs: a section of ``--help``; never swept."""
    with parser.group("launcher (seeds and sweeps past one machine: docs/guide.md, Run on a cluster)"):
        parser.option("--launcher", "local", "where the runs train: here, one trainer after another; as tasks on "
                      "Slurm through submitit (its local executor where there is no Slurm); or on Ray",
                      choices=list(LAUNCHERS))
        parser.option("--runs-per-task", None, "runs a task trains together", type=int, read_with=CLUSTER,
                      default_text="a variant's runs: what one local trainer batches, so the numbers are the same")
        parser.option("--slurm-partition", None, "Slurm partition of the tasks", default_text="the cluster's default",
                      read_with={"launcher": ("submitit",)})
        parser.option("--slurm-time", 60, "minutes a task may run before Slurm stops it; it is requeued and resumes "
                      "from its checkpoint", type=int, read_with={"launcher": ("submitit",)})
        parser.option("--max-tasks", None, "tasks in flight at once (the workers a command uses)", type=int,
                      read_with=CLUSTER, default_text="all of them")
        parser.option("--cpus-per-task", 2, "CPUs of each task (its torch threads)", type=int, read_with=CLUSTER)
        parser.option("--gpus-per-task", 0, "GPUs of each task", type=int, read_with=CLUSTER)
        parser.option("--ray-address", None, "the Ray cluster's head, host:port", read_with={"launcher": ("ray",)},
                      default_text="a Ray started here for this command, with this machine's CPUs")
    parser.fixed |= {"launcher", "runs-per-task", "max-tasks", "slurm-partition", "slurm-time", "cpus-per-task",
                     "gpus-per-task", "ray-address"}


class UnsharedError(RuntimeError):
    """A task cannot see the driver's files (raised in the worker, one line in the driver)."""


@dataclass(frozen=True)
class Task:
    """A share of a command's runs: ``train(store, checkpoint)`` trains ``runs`` (``(cell, seed)``) with the
    benchmark's own trainer, handing each finished run to ``store.add`` (a ``Collector`` in a worker); it must
    pickle (a ``functools.partial`` of a module-level function)."""

    key: str
    runs: tuple[tuple[str, int], ...]
    train: Callable[[Any, Path], None]


class Collector:
    """What a task hands back instead of writing the results store: its finished runs and the references it
    measured (the store's ``add``, ``reference`` and ``lacks``, kept in memory)."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, int, dict, dict[str, torch.Tensor] | None]] = []
        self.data: dict[str, dict] = {"references": {}}

    def add(self, cell: str, seed: int, result: dict, weights: dict[str, torch.Tensor] | None = None) -> None:
        self.runs.append((cell, seed, result, weights))

    def reference(self, name: str, seed: int, value: float) -> None:
        self.data["references"].setdefault(name, {})[str(seed)] = value

    def lacks(self, what: str) -> None:
        """A task computes what it lacks."""


def plan(store: Store, label: str, cells: Sequence[str], seeds: Sequence[int], runs_per_task: int | None,
         train: Callable[[tuple[tuple[str, int], ...]], Callable[[Any, Path], None]], per_cell: bool = False
         ) -> list[Task]:
    """A variant's runs cut into tasks in a fixed order (cells, then seeds), ``runs_per_task`` each (default: all
    of them, or a cell's with ``per_cell``: what one local trainer batches), never mixing cells with ``per_cell``,
    keeping only the tasks with runs still missing: a task's key is its runs, so a re-run finds the checkpoint of
    a task it interrupted. ``train(runs)`` makes a task's training function."""
    at = prefix(label)
    groups = [[(at + cell, k) for k in seeds] for cell in cells] if per_cell else [
        [(at + cell, k) for cell in cells for k in seeds]]
    tasks = []
    for runs in groups:
        size = runs_per_task or len(runs)
        for start in range(0, len(runs), size):
            share = tuple(runs[start : start + size])
            missing = tuple(r for r in share if not store.done(*r))
            if missing:
                digest = hashlib.sha1(repr(share).encode()).hexdigest()[:10]
                tasks.append(Task(f"{label.replace('/', '_') or 'runs'}-{digest}", missing, train(missing)))
    return tasks


def execute(task: Task, folder: str, threads: int) -> str:
    """In a worker: train ``task`` on ``threads`` CPU threads (its CPUs: two tasks of one machine must not both
    take every core) unless its result file exists, write the result file, return its path. A lock per task makes
    a second worker of the same task (a requeue, a driver re-run while the first still trains) wait and then
    return the first one's result."""
    torch.set_num_threads(threads)
    here = Path(folder)
    if not here.is_dir():  # the driver made it: this worker does not share the driver's filesystem
        raise UnsharedError(f"a task on {socket.gethostname()} cannot see {folder}: --out, --logdir and the caches "
                            "must be on a filesystem the driver and every task share")
    result, checkpoint = here / f"{task.key}.result.pt", here / f"{task.key}.ckpt.pt"
    with _locked(here / f"{task.key}.lock"):
        if not result.exists():
            start = "resumed" if checkpoint.exists() else "from-scratch"
            with open(here / "trained.log", "a") as log:  # one line per training of a task: none twice from scratch
                log.write(f"{task.key} {socket.gethostname()} {os.getpid()} {start}\n")
            collector = Collector()
            task.train(collector, checkpoint)
            provenance = {"key": task.key, "host": socket.gethostname(), "pid": os.getpid(),
                          **{k: os.environ[v] for k, v in (("slurm_job", "SLURM_JOB_ID"),) if v in os.environ}}
            save_atomic(result, {"runs": collector.runs, "references": collector.data["references"],
                                 "provenance": provenance})
            checkpoint.unlink(missing_ok=True)
    return str(result)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def prepare(args: Any) -> None:
    """Check the engine before anything trains: its extra is installed, the Ray head answers, the Slurm partition
    exists; each is one line."""
    if args.launcher == "ray":
        _extra("ray")
        if args.ray_address:
            _check_reachable(args.ray_address)
    elif args.launcher == "submitit":
        _extra("submitit")
        if args.slurm_partition:
            if shutil.which("sbatch") is None:
                raise UsageError("--slurm-partition needs Slurm, and sbatch is not on this machine's PATH; drop the "
                                 "flag to run the tasks as local processes")
            _check_partition(args.slurm_partition)
    for flag in ("runs_per_task", "max_tasks"):
        value = getattr(args, flag)
        if args.launcher != "local" and value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")


def launch(store: Store, tasks: list[Task], args: Any) -> None:
    """Send ``tasks`` to ``args.launcher``'s engine and take in each result file as its task ends (the store's
    only writer); result files left by an earlier, killed driver are taken in first."""
    if args.launcher == "local":  # the benchmark trained its runs itself
        return
    folder = store.path.with_name(store.path.name + ".tasks")
    folder.mkdir(parents=True, exist_ok=True)
    for left in sorted(folder.glob("*.result.pt")):
        _take_in(store, left, args.launcher)
    tasks = [t for t in tasks if any(not store.done(*r) for r in t.runs)]
    if not tasks:
        return
    from tqdm import tqdm

    with tqdm(total=sum(len(t.runs) for t in tasks), desc=f"{len(tasks)} tasks on {args.launcher}", unit="run") as bar:
        engine = _submitit if args.launcher == "submitit" else _ray
        try:
            for path in engine(tasks, folder, args):
                bar.update(_take_in(store, Path(path), args.launcher))
        except Exception as e:  # the engines wrap a task's error in their own types: its one line is the message
            unshared = re.search(r"a task on \S+ cannot see .*? share", str(e))
            if unshared:
                raise UsageError(unshared.group(0)) from None
            raise


def _take_in(store: Store, path: Path, launcher: str) -> int:
    """Write a task's finished runs to the store (skipping any already there) and remove its result file."""
    taken = load_checked(path, "task result file", "delete it to train its runs again")
    for name, values in taken["references"].items():
        for seed, value in values.items():
            if seed not in store.data["references"].get(name, {}):
                store.reference(name, int(seed), value)
    for cell, seed, result, weights in taken["runs"]:
        if not store.done(cell, seed):
            store.add(cell, seed, {**result, "task": {"launcher": launcher, **taken["provenance"]}}, weights)
    path.unlink()
    return len(taken["runs"])


class _Resumable:
    """submitit's checkpointable call: on preemption or at the time limit Slurm requeues the same call, which
    resumes from the task's checkpoint."""

    def __call__(self, task: Task, folder: str, threads: int) -> str:
        return execute(task, folder, threads)

    def checkpoint(self, task: Task, folder: str, threads: int) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, task, folder, threads)


def _submitit(tasks: list[Task], folder: Path, args: Any) -> Iterator[str]:
    submitit = _extra("submitit")
    slurm = shutil.which("sbatch") is not None
    executor = submitit.AutoExecutor(folder=folder / "submitit", cluster=None if slurm else "local")
    executor.update_parameters(timeout_min=args.slurm_time, cpus_per_task=args.cpus_per_task,
                               gpus_per_node=args.gpus_per_task,
                               **({"slurm_partition": args.slurm_partition} if args.slurm_partition else {}))
    if not slurm:
        print("submitit: no Slurm here (sbatch not on PATH): the tasks run as local processes", file=sys.stderr)
    yield from _in_flight(tasks, args.max_tasks, lambda task: executor.submit(_Resumable(), task, str(folder),
                                                                               args.cpus_per_task),
                          lambda jobs: next(submitit.helpers.as_completed(jobs)), lambda job: job.result())


def _in_flight(tasks: list[Task], most: int | None, submit: Callable[[Task], Any], first: Callable[[list], Any],
               result: Callable[[Any], str]) -> Iterator[str]:
    """Submit ``tasks``, at most ``most`` in flight, and yield each result file as its task ends (``first`` picks
    an ended one of the handles in flight)."""
    waiting, running = list(tasks), []
    while waiting or running:
        while waiting and (most is None or len(running) < most):
            running.append(submit(waiting.pop(0)))
        done = first(running)
        running.remove(done)
        yield result(done)


def _check_partition(partition: str) -> None:
    listed = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=60)
    known = {p.strip().rstrip("*") for p in listed.stdout.split()}
    if partition not in known:
        raise UsageError(f"--slurm-partition {partition} is not a partition of this cluster; sinfo lists: "
                         f"{', '.join(sorted(known)) or 'none'}")


def _ray(tasks: list[Task], folder: Path, args: Any) -> Iterator[str]:
    ray = _extra("ray")
    ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = ray.remote(num_cpus=args.cpus_per_task, num_gpus=args.gpus_per_task, max_retries=3)(execute)
        yield from _in_flight(tasks, args.max_tasks, lambda task: remote.remote(task, str(folder), args.cpus_per_task),
                              lambda refs: ray.wait(refs, num_returns=1)[0][0], ray.get)
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or address, int(port or 6379)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise UsageError(f"--ray-address {address}: cannot reach it ({e}); start the head there (ray start --head) "
                         f"or leave the flag out for a Ray on this machine") from None


@functools.cache
def _extra(module: str) -> Any:
    """The engine ``module`` (also the ``--launcher`` that needs it), or one line naming the install command."""
    try:
        return __import__(module)
    except ImportError:
        raise UsageError(f"--launcher {module} needs {module}, which is not installed; {EXTRA}") from None
