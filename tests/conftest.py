"""Shared fixtures: small synthetic IDX datasets written by the tests themselves."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.data import DATASETS, Splits, load_splits

torch.set_num_threads(1)


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """Write ``array`` (uint8) as an IDX file: magic 0x0000 0x08 ndim, big-endian dims, raw bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def make_dataset(root: Path, name: str = "mnist", n_train: int = 120, n_test: int = 40, side: int = 8) -> Path:
    """A torchvision-layout dataset whose images are a per-class template plus noise (learnable)."""
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, size=(10, side, side))
    raw = root / DATASETS[name].folder / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = np.clip(templates[labels] + rng.normal(0, 40, size=(n, side, side)), 0, 255)
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images.astype(np.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture
def splits(data_root: Path) -> Splits:
    return load_splits("mnist", data_root, download=False)


def exit_code(main, argv: list[str]) -> int:
    """Run a benchmark's ``main`` as the command line does and return its exit code."""
    from benchmarks.harness import run_cli

    with pytest.raises(SystemExit) as e:
        run_cli(main, argv)
    return e.value.code


def check_pettingzoo(make) -> None:
    """The three PettingZoo checks (PettingZoo 1.27's parallel tests alone miss bounds and seeding)."""
    from pettingzoo.test import api_test, parallel_api_test, parallel_seed_test, seed_test
    from pettingzoo.utils.conversions import parallel_to_aec

    parallel_api_test(make(), num_cycles=20)
    api_test(parallel_to_aec(make()), num_cycles=20)
    parallel_seed_test(make)
    seed_test(lambda: parallel_to_aec(make()))


class KillAt:
    """Events that interrupt training as Ctrl-C would, once the trainer reached ``step``."""

    def __init__(self, step: int):
        self.step, self.trainer = step, None

    def begin(self, total: int, done: int) -> None: ...

    def scalars(self, step: int, values: dict) -> None: ...

    def finished(self, run: int, result, weights) -> None: ...

    def advance(self, steps: int = 1) -> None:
        if self.trainer.step == self.step:
            raise KeyboardInterrupt


def killed_and_resumed(make, step: int, checkpoint: Path):
    """Train a trainer from ``make()``, kill it at ``step`` (after the checkpoint of an earlier
    evaluation), resume a fresh one from the checkpoint to the end; returns it and its results."""
    killed, events = make(), KillAt(step)
    events.trainer = killed
    with pytest.raises(KeyboardInterrupt):
        killed.fit(events, checkpoint)
    assert checkpoint.exists()
    resumed = make()
    return resumed, resumed.fit(checkpoint=checkpoint)
