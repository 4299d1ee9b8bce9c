"""Resolve ``package.module:ClassName`` strings so users plug in agents without editing our code."""

from __future__ import annotations

import importlib


def load_class(spec: str) -> type:
    """Import ``spec`` (``package.module:ClassName``); a ValueError says what was wrong in one line."""
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise ValueError(f"agent {spec!r} must look like package.module:ClassName")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {module_name!r} for agent {spec!r} ({e}); is it on PYTHONPATH?") from e
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ValueError(f"module {module_name!r} has no class {class_name!r} (agent {spec!r})")
    return cls
