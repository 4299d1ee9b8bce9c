"""What every ``python -m benchmarks.<name>`` shares: one-line CLI errors, the event sink that turns a
trainer's events into TensorBoard runs, a progress bar and saved results, tables and PNG curves."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from benchmarks.cli import UsageError, split_items
from benchmarks.store import Store, mean_std
from envs.data import DataError
from trainers.base import Diverged, Events, resolve_device
from trainers.distributed import PeerLost
from trainers.files import CheckpointError, write_atomic

RESUMABLE = ("finished runs are saved and unfinished ones resume from their last checkpoint; re-run the same "
             "command to continue")


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None,
            interrupted: str = RESUMABLE) -> NoReturn:
    """Call ``main``; input problems, divergence and unreadable checkpoints become one line on stderr
    and exit 2; Ctrl-C says ``interrupted`` (what was kept), true for the benchmark that calls it."""
    try:
        code = main(argv)
    except (UsageError, DataError, Diverged, CheckpointError) as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank finds the same fault: rank 0 says it
            print(f"error: {e}", file=sys.stderr)
        code = 2
    except PeerLost as e:  # each rank says what it saw
        print(f"error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print(f"interrupted: {interrupted}", file=sys.stderr)
        code = 130
    sys.exit(code)


def device_of(args: Any) -> torch.device:
    """``--device`` resolved (``auto``: cuda when available); an unavailable one is a one-line error."""
    try:
        return resolve_device(args.device)
    except ValueError as e:
        raise UsageError(str(e)) from None


def available_memory(device: torch.device) -> tuple[int, str]:
    """Bytes free for a job and where they were read: the GPU's free memory under cuda, else the host's
    available memory (``MemAvailable``, or the physical memory where /proc is absent)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], f"free memory of {torch.cuda.get_device_name(device)}"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "available host memory (MemAvailable)"
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical host memory"


def check_memory(one_run: Callable[[], Any], runs: int, device: torch.device, what: str) -> None:
    """Refuse a job of ``runs`` runs whose state cannot fit, before allocating it: a trainer of one run
    (``one_run()``) gives the bytes of its trainable tensors, and every run of the job holds them five times
    (weights, gradients, Adam's two moments, the best weights) -- a lower bound, activations not counted."""
    trainer = one_run()
    per_run = 5 * sum(t.numel() * t.element_size() for t in trainer.parameters_by_name().values())
    free, where = available_memory(device)
    if per_run * runs > free:
        raise UsageError(f"{what} = {runs:,} runs in one job need at least {per_run * runs / 2**30:,.1f} GiB "
                         f"({per_run / 2**20:,.1f} MiB a run) but the {where} is {free / 2**30:,.1f} GiB; "
                         f"pass fewer --seeds (or cells)")


def parse_list(text: str, allowed: Iterable[str], what: str) -> list[str]:
    """A comma-separated choice list, checked against ``allowed``, order and duplicates normalised."""
    allowed = list(allowed)
    items = split_items(text, what)
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise UsageError(f"unknown {what} {','.join(bad) or repr(text)}; choose from {','.join(allowed)}")
    return [x for x in allowed if x in items]


def parse_ints(text: str, what: str) -> list[int]:
    """Comma-separated integers >= 1, sorted and without duplicates."""
    items = split_items(text, what)
    try:
        values = sorted({int(x) for x in items})
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise UsageError(f"{what} must be >= 1, got {text!r}")
    return values


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


def flat_hparams(config: Any, prefix: str = "") -> dict[str, Any]:
    """Every field of a config dataclass (nested ones as ``temperature.start``) in TensorBoard's types."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flat_hparams(value, f"{prefix}{f.name}."))
        elif isinstance(value, (int, float, bool, str)):
            out[f"{prefix}{f.name}"] = value
        else:
            out[f"{prefix}{f.name}"] = str(value)
    return out


class Progress(Events):
    """A progress bar over a trainer's steps (``tqdm``)."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def begin(self, total: int, done: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=done, desc=self.desc, unit="step", leave=False)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sink(Progress):
    """One event sink for every benchmark: TensorBoard scalars and hparams per run, the progress bar,
    and each finished run saved to the results store (with its best weights) at once (or, in a cluster task,
    handed to the launcher's ``Collector``).

    ``runs[i]`` is ``(cell, seed)`` of the trainer's run ``i``; its TensorBoard run is
    ``<root>/<cell>/seed<seed>``; ``headline(result)`` gives the hparams metrics; the device it trained
    on is recorded with each run."""

    def __init__(self, store: Store | Any, runs: Sequence[tuple[str, int]], root: Path, hparams: dict[str, Any],
                 headline: Callable[[Any], dict[str, float]], desc: str, device: torch.device):
        super().__init__(desc)
        self.store, self.runs, self.root, self.hparams, self.headline = store, list(runs), root, hparams, headline
        self.device = str(device)
        self.writers: dict[int, Any] = {}

    def writer(self, run: int):
        if run not in self.writers:
            cell, seed = self.runs[run]
            self.writers[run] = summary_writer(self.root / cell / f"seed{seed}")
        return self.writers[run]

    def scalars(self, step: int, values: dict[str, dict[int, float]]) -> None:
        for tag, per_run in values.items():
            for run, value in per_run.items():
                self.writer(run).add_scalar(tag, value, step)

    def finished(self, run: int, result: Any, weights: dict[str, torch.Tensor]) -> None:
        cell, seed = self.runs[run]
        writer = self.writer(run)
        metrics = {f"hparam/{k}": v for k, v in self.headline(result).items()}
        writer.add_hparams({**self.hparams, "cell": cell, "seed": seed, "device": self.device}, metrics, run_name=".")
        writer.close()
        self.store.add(cell, seed, {**dataclasses.asdict(result), "device": self.device}, weights)

    def close(self) -> None:
        super().close()
        for writer in self.writers.values():
            writer.close()


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
    zoom: tuple[float, float] | None = None,
) -> None:
    """Side-by-side panels, one line per label: the mean over seeds of ``(x, [values per seed])``,
    shaded min to max. Seeds that stopped early are cut to the shortest curve. ``zoom``: the y range shown,
    on a log x axis (where curves that differ by a few tenths late and by a factor in passes early part)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels, strict=True):
        if len(curves) > 10:  # more lines than the default colour cycle
            ax.set_prop_cycle(color=plt.cm.tab20.colors)
        for label, (x, per_seed) in curves.items():
            n = min(len(x), *(len(v) for v in per_seed))
            columns = [[v[i] for v in per_seed] for i in range(n)]
            ax.plot(x[:n], [statistics.fmean(c) for c in columns], label=label)
            if len(per_seed) > 1:
                ax.fill_between(x[:n], [min(c) for c in columns], [max(c) for c in columns], alpha=0.2)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        if zoom:
            ax.set(xscale="log", ylim=zoom)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def plot_frontier(path: Path, points: dict[str, tuple[float, list[float]]], xlabel: str, ylabel: str,
                  title: str) -> None:
    """Accuracy against what it cost to send: one point per row at ``(bytes, mean of the seeds' values)`` with
    ±1 std error bars, on a log x axis; rows that send nothing sit at the left edge, hollow, labelled so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sending = [b for b, _ in points.values() if b > 0]
    edge = min(sending) / 10 if sending else 1.0
    fig, ax = plt.subplots(figsize=(9, 4.5))
    if len(points) > 10:
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
    for label, (sent, values) in points.items():
        mean, std = mean_std(values)
        silent = sent <= 0
        ax.errorbar(edge if silent else sent, mean, yerr=std, fmt="o", capsize=3, mfc="none" if silent else None,
                    label=f"{label} (sends nothing)" if silent else label)
    ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


SWEEP_DATA = ".sweep.json"  # what plot_sweep drew, beside its figure


def plot_sweep(
    path: Path,
    flag: str,
    values: Sequence[str],
    lines: dict[str, list[list[float]]],
    ylabel: str,
    references: dict[str, list[list[float]]] | None = None,
    intervals: bool = False,
) -> None:
    """The headline metric against the swept value: one line per cell, the mean over seeds, ±1 std band;
    ``references`` (measured per value too) are dashed lines of their mean. ``intervals``: each value of ``lines``
    is already ``[mean, low, high]`` (a paired speedup and its 95% t-interval; empty where none), drawn on a log
    axis around the baseline's 1x and kept to the means' range (an interval over two seeds can span 100x). Its
    inputs go beside it (``.sweep.json``), so ``benchmarks.report`` can draw several files' sweeps as one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inputs = {"flag": flag, "values": list(values), "lines": lines, "ylabel": ylabel, "references": references,
              "intervals": intervals}
    write_atomic(path.with_suffix(SWEEP_DATA), lambda tmp: tmp.write_text(json.dumps(inputs)))
    numeric = all(_is_number(v) for v in values)
    x = [float(v) for v in values] if numeric else list(range(len(values)))
    if numeric:  # values given in any order (the order they ran) are drawn left to right
        order = sorted(range(len(x)), key=x.__getitem__)
        x, values = [x[i] for i in order], [values[i] for i in order]
        lines = {k: [v[i] for i in order] for k, v in lines.items()}
        references = {k: [v[i] for i in order] for k, v in (references or {}).items()}
    fig, ax = plt.subplots(figsize=(10 if len(lines) > 4 else 7, 4.5))
    if len(lines) + len(references or {}) > 10:  # more lines than the default ten colours
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
    dodge = 0.012 * (max(x) - min(x) or 1)  # intervals side by side, not on top of each other
    for i, (label, per_value) in enumerate(lines.items()):
        if intervals:  # error bars; a value it never reached is a gap in its line
            mean, low, high = (list(c) for c in zip(*(v or [math.nan] * 3 for v in per_value), strict=True))
            at = [v + (i - (len(lines) - 1) / 2) * dodge for v in x]
            ax.errorbar(at, mean, yerr=[[m - lo for m, lo in zip(mean, low, strict=True)],
                                        [hi - m for m, hi in zip(mean, high, strict=True)]],
                        marker="o", capsize=3, label=label)
            continue
        stats = [mean_std(v) for v in per_value]
        mean = [m for m, _ in stats]
        ax.plot(x, mean, marker="o", label=label)
        ax.fill_between(x, [m - s for m, s in stats], [m + s for m, s in stats], alpha=0.2)
    for label, per_value in (references or {}).items():
        ax.plot(x, [mean_std(v)[0] for v in per_value], linestyle="--", marker=".", label=label)
    if not numeric:
        ax.set_xticks(x, values)
    elif min(x) > 0 and max(x) >= 10 * min(x):  # values a decade or more apart (shard sizes): a log axis
        ax.set_xscale("log")
        ax.set_xticks(x, values)
    means = [v[0] for per_value in lines.values() for v in per_value if v] if intervals else []
    if means:
        ax.set_yscale("log")
        ax.axhline(1, color="black", linewidth=0.8, linestyle=":")
        ax.set_ylim(min(*means, 1) / 2, max(*means, 1) * 2)
        times = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x")
        ax.yaxis.set_major_formatter(times)
        ax.yaxis.set_minor_formatter(times)
    band = "paired geometric mean, 95% t-interval" if intervals else "mean, ±1 std over seeds"
    ax.set(xlabel=flag, ylabel=ylabel, title=f"{ylabel} against {flag}\n({band})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
