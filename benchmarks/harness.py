"""What every ``python -m benchmarks.<name>`` shares: one-line CLI errors, a results file that is
written atomically and lets a re-run skip finished runs, TensorBoard runs, tables and PNG curves."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from envs.data import DataError


class UsageError(ValueError):
    """Bad input from the command line; shown as one line, exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad input in one line (no usage dump) and exits with 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> NoReturn:
    """Call ``main``; input problems (UsageError, DataError) become one line on stderr and exit 2."""
    try:
        code = main(argv)
    except (UsageError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are saved; re-run the same command to continue", file=sys.stderr)
        code = 130
    sys.exit(code)


def parse_list(text: str, allowed: Iterable[str], what: str) -> list[str]:
    """A comma-separated choice list, checked against ``allowed``, order and duplicates normalised."""
    allowed = list(allowed)
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise UsageError(f"unknown {what} {','.join(bad) or repr(text)}; choose from {','.join(allowed)}")
    return [x for x in allowed if x in items]


def parse_ints(text: str, what: str) -> list[int]:
    """Comma-separated integers >= 1, sorted and without duplicates."""
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise UsageError(f"{what} must be >= 1, got {text!r}")
    return values


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
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


def save_json(path: Path, data: dict) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


class Results:
    """A benchmark's results file: finished runs survive a crash and are skipped on the next run.

    ``config`` is what makes runs comparable; a file written under another config is never mixed
    with new runs nor overwritten: the user is told to pick another ``--out`` or delete it.
    """

    def __init__(self, path: Path, benchmark: str, config: dict):
        self.path = path
        config = json.loads(json.dumps(config))  # compare as it will read back (tuples become lists)
        self.data: dict[str, Any] = {"benchmark": benchmark, "config": config}
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise UsageError(
                    f"{path} is not a readable results file ({e}); move it away or pass another --out"
                ) from None
            if old.get("benchmark") != benchmark or old.get("config") != config:
                diff = sorted(
                    k
                    for k in set(config) | set(old.get("config") or {})
                    if (old.get("config") or {}).get(k) != config.get(k)
                )
                raise UsageError(
                    f"{path} holds results of another configuration (differs in: "
                    f"{', '.join(diff) or 'benchmark'}); pass another --out or delete it"
                )
            self.data = old

    def save(self) -> None:
        save_json(self.path, self.data)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_counts(values: Sequence[float | None]) -> str:
    """Mean ± std of the runs that got there (``None``: never did), with how many did when not all."""
    reached = [v for v in values if v is not None]
    if not reached:
        return "never"
    mean, std = mean_std(reached)
    text = f"{mean:,.0f}" + (f" ± {std:,.0f}" if len(reached) > 1 else "")
    return text + ("" if len(reached) == len(values) else f" ({len(reached)}/{len(values)})")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_writer(logdir: Path):
    """A TensorBoard writer for one run directory (imported late: tensorboard is slow to import)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(logdir))


def plot_curves(
    path: Path,
    curves: dict[str, tuple[Sequence[float], Sequence[Sequence[float]]]],
    xlabel: str,
    ylabel: str,
    title: str,
) -> None:
    """One panel; see ``plot_panels``."""
    plot_panels(path, [(title, curves)], xlabel, ylabel)


def plot_panels(
    path: Path,
    panels: Sequence[tuple[str, dict[str, tuple[Sequence[float], Sequence[Sequence[float]]]]]],
    xlabel: str,
    ylabel: str,
) -> None:
    """Side-by-side panels, one line per label: the mean over seeds of ``(x, [values per seed])``,
    shaded min to max. Seeds that stopped early are cut to the shortest curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels, strict=True):
        for label, (x, per_seed) in curves.items():
            n = min(len(x), *(len(v) for v in per_seed))
            columns = [[v[i] for v in per_seed] for i in range(n)]
            ax.plot(x[:n], [statistics.fmean(c) for c in columns], label=label)
            if len(per_seed) > 1:
                ax.fill_between(x[:n], [min(c) for c in columns], [max(c) for c in columns], alpha=0.2)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
