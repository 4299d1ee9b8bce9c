"""One measurement protocol for every table: time to a target, paired comparisons, choices on validation.

- **Crossing.** A curve crosses a target at the first of ``SUSTAIN`` consecutive evaluations at or above it
  (of all remaining evaluations, when fewer are left): a curve that touches the target once and falls back
  has not crossed. Targets are read on validation curves; test accuracy only reports.
- **Headline target.** The highest validation accuracy the baseline *holds* (``SUSTAIN`` consecutive
  evaluations) on every seed: the baseline reaches it by construction on every seed.
- **One grid.** Every row of a table is evaluated on the same uniform grid (the trainers' ``eval_every``),
  so no row gets more chances to cross than another.
- **Paired comparisons.** A row is compared with its control seed by seed: differences (accuracy) or ratios
  (speedups: control passes / row passes), summarised by the mean (geometric for ratios) and a 95%
  t-interval; a speedup uses the seeds where both reached, and says how many that was, for every row alike.
- **Choices.** Among candidates (a rule's parameters), the one that reached on the most seeds, then the
  largest paired speedup, on validation curves: never by when a run stopped, never by test.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

SUSTAIN = 3  # consecutive evaluations at or above a target that make a crossing

# two-sided 95% quantiles of Student's t by degrees of freedom; beyond 30, the Cornish-Fisher expansion
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045,
        2.042)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (a 95% two-sided interval)."""
    if df < 1:
        raise ValueError(f"a t-interval needs >= 1 degree of freedom, got {df}")
    return T975[df - 1] if df <= len(T975) else 1.959964 + 2.3715 / df


def crossing(steps: Sequence[int], values: Sequence[float], target: float, sustain: int = SUSTAIN) -> int | None:
    """The step of the first of ``sustain`` consecutive evaluations at or above ``target`` (or of all the
    remaining ones, when fewer are left); ``None`` if the curve never holds it."""
    return next((steps[i] for i in range(len(values)) if min(values[i : i + sustain]) >= target), None)


def held(values: Sequence[float], sustain: int = SUSTAIN) -> float:
    """The highest level a curve holds for ``sustain`` consecutive evaluations (its whole length, if shorter):
    full windows only, so the last evaluation alone never sets it, and the curve crosses it."""
    return max(min(values[i : i + sustain]) for i in range(max(1, len(values) - sustain + 1)))


def held_target(curves: Sequence[Sequence[float]], sustain: int = SUSTAIN) -> float:
    """The headline target: the highest accuracy that every seed's curve holds (so each crosses it)."""
    return min(held(c, sustain) for c in curves)


@dataclass(frozen=True)
class Interval:
    """A paired summary: the mean (geometric for ratios) and its 95% t-interval over ``n`` seeds."""

    mean: float
    low: float
    high: float
    n: int

    def format(self, digits: int = 1, ratio: bool = False) -> str:
        if ratio:
            text = f"{self.mean:.{digits}f}x"
            return text + (f" [{self.low:.{digits}f}, {self.high:.{digits}f}]" if self.n > 1 else "")
        text = f"{self.mean:+.{digits}f}"
        return text + (f" [{self.low:+.{digits}f}, {self.high:+.{digits}f}]" if self.n > 1 else "")


def mean_interval(values: Sequence[float]) -> Interval | None:
    """Mean and 95% t-interval of paired differences (one value per seed); ``None`` for no values."""
    if not values:
        return None
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Interval(mean, mean, mean, 1)
    half = t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, len(values))


def paired_difference(row: Sequence[float], control: Sequence[float]) -> Interval | None:
    """``row - control`` seed by seed (the lists are aligned by seed)."""
    if len(row) != len(control):
        raise ValueError(f"paired values need one per seed on both sides, got {len(row)} and {len(control)}")
    return mean_interval([a - b for a, b in zip(row, control, strict=True)])


def paired_ratio(control: Sequence[float | None], row: Sequence[float | None]) -> Interval | None:
    """Speedup ``control / row`` seed by seed (costs to a target; ``None`` where a run never reached), over
    the seeds where both reached: geometric mean and 95% t-interval of the log ratios. ``None`` when no seed
    has both."""
    if len(row) != len(control):
        raise ValueError(f"paired values need one per seed on both sides, got {len(row)} and {len(control)}")
    logs = [math.log(c / r) for c, r in zip(control, row, strict=True) if c is not None and r is not None]
    interval = mean_interval(logs)
    if interval is None:
        return None
    return Interval(*(math.exp(v) for v in (interval.mean, interval.low, interval.high)), interval.n)


def reached(values: Sequence[float | None]) -> str:
    """``k/n``: how many seeds reached the target."""
    return f"{sum(v is not None for v in values)}/{len(values)}"


def choose(candidates: dict[str, Sequence[float | None]], control: Sequence[float | None]) -> str:
    """The candidate (name -> per-seed cost to a validation target) that reached on the most seeds, then with
    the largest paired speedup over ``control``; misses count the same for every candidate."""

    def key(name: str) -> tuple[int, float]:
        speedup = paired_ratio(control, candidates[name])
        return sum(v is not None for v in candidates[name]), speedup.mean if speedup else 0.0

    return max(candidates, key=key)
