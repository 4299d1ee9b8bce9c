"""The results file every benchmark writes: one schema, atomic writes, an exclusive lock, resume.

```
{"benchmark": "language", "schema": 2,
 "config": {...what makes runs comparable...},
 "cells": {"<cell>": {"runs": {"<seed>": {...result..., "weights": "<file>"}},
                      "summary": {"<metric>": {"mean": m, "std": s, "n": n}}}},
 "references": {"<name>": {"<seed>": value}},
 "wall_time_s": t,
 "invocations": [{"argv": [...], "version": "0.1.0", "commit": "<sha>[+dirty]" | null, "started": iso,
                  "ended": iso, "status": "finished" | "interrupted" | "failed" | "running", "runs_trained": n,
                  "runs_resumed": n, "runs_read": n, "wall_time_s": t}]}
```
A cell is one table row (a level, a selection, a node configuration), prefixed ``flag=value/`` under
``--sweep``. Finished runs are never recomputed: a re-run with other ``--seeds`` or other cells keeps
them. The best-validation weights of each run are saved beside the file (tensors only). ``wall_time_s`` is
the time every invocation held the file open, together; each invocation records where it came from and what
it did (``invocations``: trained, resumed from a checkpoint, read from the file), from its first save on, and
brings both up to date at every save: one that was killed stays ``"running"``, with its time up to its last
save (its last finished run).
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import gzip
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from benchmarks.cli import UsageError
from trainers.files import save_atomic, save_json

SCHEMA = 2
READ_ONLY = contextvars.ContextVar("read_only", default=False)  # set by benchmarks.report: print, never train


@contextlib.contextmanager
def read_only() -> Iterator[None]:
    """Every ``Store`` opened inside reads its file and never writes it; a run it lacks is an error, not a job."""
    token = READ_ONLY.set(True)
    try:
        yield
    finally:
        READ_ONLY.reset(token)


def clean_temporaries(path: Path) -> None:
    """Remove what a killed atomic write of ``path`` left behind (``.<name>.*.tmp``)."""
    for stale in path.parent.glob(f".{path.name}.*tmp"):
        stale.unlink(missing_ok=True)


def preflight(folders: Sequence[tuple[Path, str]]) -> None:
    """Check that every ``(folder, flag)`` can be created and written, before any training starts."""
    for folder, flag in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".commchannels-write-test."):
                pass
        except OSError as e:
            blocker = next((p for p in (folder, *folder.parents) if p.is_file()), None)
            why = f"{blocker} is a file, not a folder" if blocker else e.strerror or str(e)
            raise UsageError(f"cannot write to {folder} ({why}); pass another {flag}") from None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary(values: Sequence[float]) -> dict[str, float]:
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "n": len(values)}


def format_summary(values: Sequence[float], digits: int = 1) -> str:
    """``mean ± std`` (just the mean for one value): the one way every table prints a cell."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if len(values) > 1 else "")


def seed_text(seeds: Sequence[int]) -> str:
    """How a table names its seeds: ``5 seeds (0-4)``, ``3 seeds (100, 101, 103)``, ``1 seed (0)``."""
    contiguous = len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[0] + len(seeds)))
    names = f"{seeds[0]}-{seeds[-1]}" if contiguous else ", ".join(map(str, seeds))
    return f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({names})"


def prefix(label: str) -> str:
    """What a variant's label (``flag=value`` under ``--sweep``, else empty) puts before its cells' names."""
    return f"{label}/" if label else ""


def checkpoint_of(path: Path, label: str = "", rank: int = 0) -> Path:
    """The checkpoint of a variant's trainer beside results file ``path``; ranks above 0 of a process group
    (which hold no ``Store``) keep theirs beside it, ``.rank<k>`` in its name."""
    return path.with_name(f"{path.name}{'.' + label if label else ''}{f'.rank{rank}' if rank else ''}.ckpt.pt")


class Lock:
    """An exclusive, non-blocking lock on ``<path>.lock``: a second process gets one line, never a
    silent overwrite. The lock file is removed on release."""

    def __init__(self, path: Path):
        self.path = path.with_name(path.name + ".lock")
        while True:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self.fd)
                raise UsageError(f"another process is writing {path} (it holds {self.path}); wait for it to "
                                 "finish or pass another --out") from None
            try:
                if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                    return  # still the file on disk, not one a finishing process just removed
            except FileNotFoundError:
                pass
            os.close(self.fd)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
        os.close(self.fd)


def commit() -> str | None:
    """The git commit of the code that ran (``+dirty`` with uncommitted changes), or None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if sha.returncode == 0 else None


def version() -> str | None:
    try:
        return metadata.version("commchannels")
    except metadata.PackageNotFoundError:
        return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Store:
    """A benchmark's results file, locked while open. ``config`` is what makes runs comparable: a file
    written under another config, schema or benchmark is never mixed with new runs nor overwritten."""

    def __init__(self, path: Path, benchmark: str, config: dict, sweep: tuple[str, str, list] | None = None):
        """``sweep`` (``ArgumentParser.sweep_flag``): the swept field leaves the identity, so values can be added."""
        if sweep:
            config = {**{k: v for k, v in config.items() if k != sweep[1]}, "sweep": sweep[0]}
        self.path, self.weights_dir = path, path.with_name(path.stem + ".weights")
        self.read_only, self.trained, self.resumed = READ_ONLY.get(), 0, 0
        if self.read_only:  # the file as it is, whoever wrote it: the command that reads it is the one recorded
            self.data = self._read(path, None, {})
            return
        preflight([(path.parent, "--out")])
        self.lock = Lock(path)
        try:
            clean_temporaries(path)
            self.data = self._read(path, benchmark, json.loads(json.dumps(config)))
        except BaseException:
            self.lock.release()
            raise
        self.clock = time.monotonic()
        self.invocation = {"argv": sys.argv, "version": version(), "commit": commit(), "started": now(),
                           "status": "running", "runs_read": sum(len(c["runs"]) for c in self.data["cells"].values()),
                           "wall_time_s": 0.0}

    @staticmethod
    def _read(path: Path, benchmark: str | None, config: dict) -> dict[str, Any]:
        """The file's results (``benchmark`` None: any benchmark's, any config, a ``.gz`` too; it must exist)."""
        fresh = {"benchmark": benchmark, "schema": SCHEMA, "config": config, "cells": {}, "references": {},
                 "wall_time_s": 0.0}
        if not path.exists() and benchmark is not None:
            return fresh
        fix = "move it away or pass another --out"
        try:
            raw = path.read_bytes()
            old = json.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, gzip.BadGzipFile) as e:
            raise UsageError(f"{path} is not a readable results file ({e}); {fix}") from None
        if not isinstance(old, dict) or "benchmark" not in old:
            raise UsageError(f"{path} is not a commchannels results file; {fix}")
        if old.get("schema") != SCHEMA:
            raise UsageError(f"{path} was written by an earlier commchannels (results schema "
                             f"{old.get('schema', 1)}, this one reads {SCHEMA}); {fix} to rerun")
        if not isinstance(old.get("cells"), dict) or not isinstance(old.get("references"), dict) or any(
            not isinstance(c, dict) or not isinstance(c.get("runs"), dict) for c in old["cells"].values()
        ):
            raise UsageError(f"{path} has a damaged shape (cells/references missing or not tables); {fix}")
        if benchmark is None:
            return old
        written = old.get("config") or {}  # a field added since, at its default None, is absent there: the same
        diff = sorted(k for k in set(config) | set(written) if written.get(k) != config.get(k))
        if old["benchmark"] != benchmark or diff:
            raise UsageError(f"{path} holds results of another configuration (differs in: "
                             f"{', '.join(diff) or 'benchmark'}); pass another --out or delete it")
        return old

    def __enter__(self) -> Store:
        return self

    def __exit__(self, kind: type | None, *exc: object) -> None:
        """Append this invocation to the file (when there is one) and say what it did."""
        if self.read_only:
            return
        try:
            self.invocation["status"] = ("finished" if kind is None else "interrupted" if kind is KeyboardInterrupt
                                         else "failed")
            if self.trained or self.path.exists():
                self.save()
            if kind is None:
                resumed = f" ({self.resumed} resumed from a checkpoint)" if self.resumed else ""
                print(f"this invocation: trained {self.trained} runs{resumed}, read "
                      f"{self.invocation['runs_read']} finished runs from {self.path}; wall time "
                      f"{self.invocation['wall_time_s']:.0f} s")
        finally:
            self.lock.release()

    # ------------------------------------------------------------------------------------ runs
    def runs(self, cell: str) -> dict[int, dict]:
        return {int(k): v for k, v in self.data["cells"].get(cell, {}).get("runs", {}).items()}

    def done(self, cell: str, seed: int) -> bool:
        return seed in self.runs(cell)

    def lacks(self, what: str) -> None:
        """Refuse to compute ``what`` when only reading (``read_only``); nothing otherwise."""
        if self.read_only:
            raise UsageError(f"{self.path} lacks {what}; run the command that wrote it to finish it")

    def add(self, cell: str, seed: int, result: dict, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Record a finished run (and its best-validation weights) and save at once."""
        if weights:
            file = self.weights_dir / cell / f"seed{seed}.pt"
            save_atomic(file, weights)
            result = {**result, "weights": str(file.relative_to(self.path.parent))}
        self.data["cells"].setdefault(cell, {"runs": {}})["runs"][str(seed)] = result
        self.trained += 1
        self.save()

    def annotate(self, cell: str, seed: int, key: str, value: Any) -> None:
        """Add ``key`` to a finished run's record (e.g. an analysis of its saved weights) and save at once."""
        self.data["cells"][cell]["runs"][str(seed)][key] = value
        self.save()

    def checkpoint(self, label: str = "") -> Path:
        """Where the trainer of a variant (``flag=value`` under ``--sweep``) keeps its checkpoint."""
        return checkpoint_of(self.path, label)

    def jobs(self, label: str, cells: Sequence[str], seeds: Sequence[int], per_cell: bool = False,
             specs: Mapping[str, Any] | None = None) -> Iterator[list[tuple[str, int]]]:
        """The trainings still to run of a variant's ``cells`` times ``seeds``: a job that a kill
        interrupted comes first, as it was (its checkpoint, ``checkpoint(label)``, resumes it even if
        ``--seeds`` or the cells changed since), then the rest: one job, or one per cell. Each job's
        runs (``(prefix(label) + cell, seed)``) and its cells' ``specs`` (a cell's configuration, JSON) are
        written beside its checkpoint when it starts, and ``self.specs`` holds them while it runs: what a
        resumed cell is, without reading it back from its name. Both files go when the job ends."""
        at, checkpoint = prefix(label), self.checkpoint(label)
        job_file = checkpoint.with_suffix(".json")
        job: list[tuple[str, int]] = []
        given = {at + cell: spec for cell, spec in (specs or {}).items()}
        saved: dict[str, Any] = {}
        if checkpoint.exists() and job_file.exists() and not self.read_only:
            try:
                record = json.loads(job_file.read_text())
                record = {"runs": record, "specs": {}} if isinstance(record, list) else record  # before specs
                job, saved = [(str(c), int(k)) for c, k in record["runs"]], dict(record["specs"])
            except (OSError, ValueError, TypeError, KeyError) as e:
                raise UsageError(f"{job_file} is damaged ({e}); delete it and {checkpoint} to restart") from None
        groups: dict[str | None, list[tuple[str, int]]] = {}
        for cell in cells:
            for k in seeds:
                if not self.done(at + cell, k) and (at + cell, k) not in job:
                    groups.setdefault(cell if per_cell else None, []).append((at + cell, k))
        pending = [run for runs in groups.values() for run in runs]
        if pending and self.read_only:
            cells = sorted({c for c, _ in pending})
            self.lacks(f"{len(pending)} runs ({', '.join(cells[:3])}{' ...' if len(cells) > 3 else ''})")
        self.resumed += len(job)
        for runs in ([job] if job else []) + list(groups.values()):
            source = {**given, **saved} if runs is job else given  # a resumed cell: as it was when it started
            self.specs = {c: source[c] for c, _ in runs if c in source}
            missing = sorted({c for c, _ in runs} - set(self.specs)) if specs is not None else []
            if missing:
                raise UsageError(f"cannot resume the unfinished runs of {', '.join(missing)} (their checkpoint "
                                 f"predates the configurations kept beside it); delete {checkpoint} to restart them")
            save_json(job_file, {"runs": runs, "specs": self.specs})  # rewritten before each job
            try:
                yield runs
            finally:  # a job that stopped before its first checkpoint (an error, a divergence) leaves nothing
                if not checkpoint.exists():
                    job_file.unlink(missing_ok=True)
            checkpoint.unlink(missing_ok=True)
            job_file.unlink(missing_ok=True)

    def reference(self, name: str, seed: int, value: float) -> None:
        """Record a per-seed reference value (a row measured beside the runs) and save."""
        self.data["references"].setdefault(name, {})[str(seed)] = value
        self.save()

    def summarise(self, cells: Sequence[str], seeds: Sequence[int], metrics: Sequence[str]) -> None:
        """Mean, std and n of ``metrics`` over ``seeds`` of each cell; a value that is not a number (a file
        edited by hand) is one line naming it, not a traceback."""
        for cell in cells:
            runs = self.runs(cell)
            for k in seeds:
                for m in metrics:
                    value = runs[k].get(m)
                    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                        raise UsageError(f"{self.path}: run {cell} seed {k} holds {m} = {value!r}, not a number; the "
                                         f"file is damaged: move it away or pass another --out")
            self.data["cells"][cell]["summary"] = {
                m: summary([runs[k][m] for k in seeds if runs[k].get(m) is not None]) for m in metrics
            }
        self.save()

    def save(self) -> None:
        """Write the file, with this invocation and its time so far (the time since the last save joins it)."""
        if self.read_only:
            return
        tick = time.monotonic()
        seconds, self.clock = tick - self.clock, tick
        self.data["wall_time_s"] = self.data.get("wall_time_s", 0.0) + seconds
        self.invocation.update(ended=now(), runs_trained=self.trained, runs_resumed=self.resumed,
                               wall_time_s=self.invocation["wall_time_s"] + seconds)
        calls = self.data.setdefault("invocations", [])
        if not calls or calls[-1] is not self.invocation:
            calls.append(self.invocation)
        save_json(self.path, self.data)
