"""How sure a measured metric is: standard errors of a test-split metric (stored in the manifest
beside the metric, read by the router), and Student-t intervals for a mean and for a paired
difference over seeds (the report's comparisons). numpy and the standard library only: the serving
half reads these numbers too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95  # every interval in FlexServe's reports, unless a caller asks otherwise


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy `p` measured on `n` independent examples: sqrt(p (1 - p) / n)."""
    if n < 1 or not 0.0 <= p <= 1.0:
        raise ValueError(f"need 0 <= p <= 1 and n >= 1, got p={p!r}, n={n!r}")
    return math.sqrt(p * (1.0 - p) / n)


def rmse_se(squared_errors: np.ndarray) -> float:
    """Standard error of the RMSE of these per-example squared errors (the delta method: the mean
    squared error's standard error, std / sqrt(n), divided by 2 x RMSE)."""
    errors = np.asarray(squared_errors, dtype=np.float64).ravel()
    if errors.size < 2:
        raise ValueError(f"need at least 2 squared errors, got {errors.size}")
    rmse = math.sqrt(float(errors.mean()))
    if rmse == 0.0:
        return 0.0
    return float(errors.std(ddof=1)) / math.sqrt(errors.size) / (2.0 * rmse)


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularised incomplete beta function (Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _incomplete_beta(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df!r}")
    tail = 0.5 * _incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t such that P(T <= t) = p (bisection on `t_cdf`: exact to ~1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2.0


@dataclass(frozen=True)
class Interval:
    """A mean over `n` values with its standard deviation and a two-sided Student-t interval."""

    mean: float
    sd: float
    n: int
    low: float
    high: float
    level: float = LEVEL

    def excludes(self, value: float = 0.0) -> bool:
        return not self.low <= value <= self.high

    def above(self, value: float) -> bool:
        """The whole interval lies above `value`."""
        return self.low > value

    def below(self, value: float) -> bool:
        return self.high < value

    def to_json(self) -> dict:
        return {
            "mean": self.mean,
            "sd": self.sd,
            "n": self.n,
            "ci": [self.low, self.high],
            "level": self.level,
        }

    def __str__(self) -> str:
        return f"{self.mean:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """The mean of `values` with its `level` Student-t interval (n - 1 degrees of freedom). One value
    has no spread: its interval is unbounded, so that nothing is concluded from one run."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"need at least one finite value, got {list(values)!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, math.nan, 1, -math.inf, math.inf, level)
    sd = float(x.std(ddof=1))
    half = t_quantile(0.5 + level / 2.0, x.size - 1) * sd / math.sqrt(x.size)
    return Interval(mean, sd, int(x.size), mean - half, mean + half, level)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """The mean of a[i] - b[i] over pairs that share everything but the treatment (the same seed:
    the same initial weights and batch order), with its Student-t interval."""
    if len(a) != len(b):
        raise ValueError(f"paired values must come in pairs: {len(a)} vs {len(b)}")
    return mean_interval(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), level)
