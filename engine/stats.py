"""Estimates over seeds: means with Student-t confidence intervals, prediction intervals, paired differences."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """The mean of n values and the half-width of its confidence interval (None below two values)."""

    n: int
    mean: float | None
    ci: float | None

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.mean is None or self.ci is None:
            return None
        return self.mean - self.ci, self.mean + self.ci


def _t(level: float, n: int) -> float:
    from scipy.stats import t  # scipy.stats takes a second to import: only once there is a table to make

    return float(t.ppf((1 + level) / 2, n - 1))


def mean_ci(values: Iterable[float], level: float = LEVEL) -> Estimate:
    """Mean of `values` ± t_{(1+level)/2, n-1} · s / √n, s the sample standard deviation (ddof 1)."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        return Estimate(0, None, None)
    mean = float(x.mean())
    if x.size < 2:
        return Estimate(1, mean, None)
    return Estimate(int(x.size), mean, _t(level, x.size) * float(x.std(ddof=1)) / math.sqrt(x.size))


def prediction_interval(values: Iterable[float], level: float = LEVEL) -> tuple[float, float] | None:
    """Where one more run's value falls with probability `level` (normal values): mean ± t · s · √(1 + 1/n).
    The right yardstick for a single published run, which is one draw, not a mean."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size < 2:
        return None
    half = _t(level, x.size) * float(x.std(ddof=1)) * math.sqrt(1 + 1 / x.size)
    return float(x.mean()) - half, float(x.mean()) + half


def paired_difference(control: Mapping[int, float], treated: Mapping[int, float], level: float = LEVEL) -> Estimate:
    """Mean ± CI of control − treated over the keys (seeds) present in both with a value: a paired comparison."""
    seeds = sorted(s for s in control.keys() & treated.keys() if control[s] is not None and treated[s] is not None)
    return mean_ci((control[s] - treated[s] for s in seeds), level)


@dataclass(frozen=True)
class Adjusted:
    """Holm-adjusted p-values of a family of tests, in the order given; `family` names what was adjusted together."""

    family: str
    p_values: tuple[float | None, ...]
    p_adjusted: tuple[float | None, ...]


def holm(p_values: Iterable[float | None], family: str) -> Adjusted:
    """Holm's step-down adjustment (1979), controlling the family-wise error rate at any level without assuming the
    tests independent: sorted p_(1) <= ... <= p_(m), p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).

    None (a test not run) is left out of the family and stays None; ties keep their order (the max makes their
    adjusted values equal anyway).
    """
    given = tuple(p_values)
    present = [i for i, p in enumerate(given) if p is not None]
    m = len(present)
    adjusted: list[float | None] = [None] * len(given)
    running = 0.0
    for rank, i in enumerate(sorted(present, key=lambda j: given[j])):
        running = max(running, min(1.0, (m - rank) * float(given[i])))
        adjusted[i] = running
    return Adjusted(family, given, tuple(adjusted))
