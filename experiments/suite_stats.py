"""Statistics over seeds: mean +- sample std per cell, paired differences with a t confidence interval.

Runs of different methods with the same seed share the federation plan (which
client holds which samples), the initial weights and the evaluation's random
draws, so baseline and FSSUAVL are compared **paired by seed**: the difference
per seed, its mean and the 95 % confidence interval of that mean from the t
distribution with n-1 degrees of freedom (``scipy.stats.t``). A difference is
*clear* when that interval excludes 0, which needs at least two paired seeds and
some spread: when every seed gives the same difference (common with small,
coarsely quantised test sets) the t interval is undefined, as in
``scipy.stats.ttest_rel``, and the difference is not called clear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
SAME = 1e-9  # relative spread below which per-seed differences count as identical


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof=1; 0 with one value) of n values."""

    mean: float
    std: float
    n: int

    def text(self, scale: float = 100.0, digits: int = 1) -> str:
        """'90.0 ± 1.2 (n=3)', or '90.0 (n=1)' for one value."""
        mean = f"{scale * self.mean:.{digits}f}"
        if self.n < 2:
            return f"{mean} (n={self.n})"
        return f"{mean} ± {scale * self.std:.{digits}f} (n={self.n})"


def summarize(values) -> Summary | None:
    values = np.asarray([float(v) for v in values], dtype=np.float64)
    if not len(values):
        return None
    return Summary(float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0, len(values))


@dataclass(frozen=True)
class Paired:
    """first - second over the seeds both have: mean, 95 % t interval (nan with one seed or no spread), n."""

    mean: float
    low: float
    high: float
    n: int
    seeds: tuple[int, ...]

    @property
    def clear(self) -> bool:
        """The interval excludes 0 (never with fewer than two seeds or without spread)."""
        return not math.isnan(self.low) and (self.low > 0 or self.high < 0)

    def text(self, scale: float = 100.0, unit: str = " points") -> str:
        """'+3.1 [+1.2, +5.0] points, n=3' ('+3.1 points, n=1' with one seed)."""
        mean = f"{scale * self.mean:+.1f}"
        if self.n < 2:
            return f"{mean}{unit}, n={self.n}"
        if math.isnan(self.low):
            return f"{mean}{unit}, n={self.n} (the same on every seed: no interval)"
        return f"{mean} [{scale * self.low:+.1f}, {scale * self.high:+.1f}]{unit}, n={self.n}"

    def flipped(self) -> Paired:
        """second - first."""
        return Paired(-self.mean, -self.high, -self.low, self.n, self.seeds)


def paired_difference(first: dict[int, float], second: dict[int, float]) -> Paired | None:
    """``first[s] - second[s]`` over the seeds s both have; None when they share none."""
    from scipy import stats

    seeds = tuple(s for s in first if s in second)
    if not seeds:
        return None
    diffs = np.array([float(first[s]) - float(second[s]) for s in seeds], dtype=np.float64)
    mean, n = float(diffs.mean()), len(diffs)
    spread = float(diffs.std(ddof=1)) if n > 1 else 0.0
    if n < 2 or spread <= SAME * max(1.0, abs(mean)):  # float noise of equal differences is not spread
        return Paired(mean, math.nan, math.nan, n, seeds)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * spread / math.sqrt(n)
    return Paired(mean, mean - half, mean + half, n, seeds)
