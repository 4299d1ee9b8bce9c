"""Where datasets and caches live, and the one error every data problem raises: below the readers
(``envs.data``'s IDX files, ``envs.cifar``'s CIFAR-10), which both use them."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A dataset is missing, truncated or not what its name says; the message says how to fix it."""


def user_cache() -> Path:
    """The per-user cache that pooch would choose (datasets, decoded CIFAR-10, the benchmarks' teachers)."""
    import pooch

    return Path(pooch.os_cache("commchannels"))
