"""Files a kill cannot half-write, and checkpoints read back or refused in one line: what the trainers'
checkpoints, the process groups' and the benchmarks' results share."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or belongs to other runs; shown as one line, exit code 2."""


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file
    (results, checkpoints, weights and figures all go through here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide results from collaborators
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_atomic(path: Path, state: dict) -> None:
    """``torch.save`` through ``write_atomic``: a kill never leaves half a checkpoint."""
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def save_json(path: Path, data: dict) -> None:
    """``data`` as indented JSON through ``write_atomic``."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def load_checked(path: Path, what: str, fix: str) -> dict:
    """``torch.load`` (tensors only) or a one-line ``CheckpointError`` naming the file and the fix."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # a truncated zip, a pickle of code, a text file: all mean "not ours"
        first = (str(e).splitlines() or [""])[0][:120]
        raise CheckpointError(f"{path} is not a readable {what} ({type(e).__name__}: {first}); {fix}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a {what} (it holds a {type(state).__name__}); {fix}")
    return state
