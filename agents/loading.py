"""Resolve ``package.module:ClassName`` or ``path/to/file.py:ClassName`` strings so users plug in agents without
editing our code."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_class(spec: str) -> type:
    """Import ``spec`` (``package.module:ClassName``, or a ``.py`` file's path and the class); a ValueError says
    what was wrong in one line (a missing module or file, a syntax error, an error raised on import)."""
    module_name, sep, class_name = spec.rpartition(":")
    if not sep or not module_name or not class_name:
        raise ValueError(f"agent {spec!r} must look like package.module:ClassName or path/to/file.py:ClassName")
    try:
        module = _from_file(Path(module_name)) if module_name.endswith(".py") else importlib.import_module(module_name)
    except SyntaxError as e:
        raise ValueError(f"agent {spec!r}: {e.filename}:{e.lineno} has a syntax error ({e.msg})") from None
    except ImportError as e:
        raise ValueError(f"cannot import module {module_name!r} for agent {spec!r} ({e}); is it on PYTHONPATH?") from e
    except Exception as e:  # the user's module raised while it was imported
        raise ValueError(f"importing {module_name!r} for agent {spec!r} raised {type(e).__name__}: {e}") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ValueError(f"module {module_name!r} has no class {class_name!r} (agent {spec!r})")
    return cls


def _from_file(path: Path) -> ModuleType:
    """The module of a ``.py`` file, registered under its stem (so its classes pickle and print by name)."""
    if not path.is_file():
        raise ImportError(f"no file {path}")
    if path.stem in sys.modules:
        known = getattr(sys.modules[path.stem], "__file__", None)
        if known and Path(known).resolve() == path.resolve():
            return sys.modules[path.stem]  # the same file again (every variant of a sweep names it)
        raise ImportError(f"a module named {path.stem!r} is already imported; rename {path}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[path.stem]  # a fixed file imports again in this process
        raise
    return module
