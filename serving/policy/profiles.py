"""Service profiles: a variant's measured latency at a few batch sizes, and what the policy knows
of each variant (its quality, its profile, the executor it runs on)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass

QUANTILES = ("p50", "p95", "p99")


@dataclass(frozen=True)
class ServiceProfile:
    """Profiled service time (ms) at a few batch sizes, per quantile; linear in between."""

    batch_sizes: tuple[int, ...]
    p50: tuple[float, ...]
    p95: tuple[float, ...]
    p99: tuple[float, ...]

    def __post_init__(self):
        n = len(self.batch_sizes)
        if n == 0 or not (len(self.p50) == len(self.p95) == len(self.p99) == n):
            raise ValueError("a service profile needs p50, p95 and p99 for each of at least one batch size")
        if list(self.batch_sizes) != sorted(set(self.batch_sizes)) or self.batch_sizes[0] < 1:
            raise ValueError(f"profile batch sizes must be increasing and >= 1, got {self.batch_sizes}")

    @classmethod
    def from_manifest(cls, latency_ms: Mapping[str, Mapping[str, float]]) -> ServiceProfile:
        """From a manifest variant's `latency_ms`: {"<batch>": {"p50": .., "p95": .., "p99": ..}}."""
        sizes = sorted(int(b) for b in latency_ms)
        rows = [latency_ms[str(b)] for b in sizes]
        return cls(tuple(sizes), *(tuple(float(r[q]) for r in rows) for q in QUANTILES))

    def at(self, batch_size: int, quantile: str = "p50") -> float:
        """The quantile at `batch_size`: interpolated, or extrapolated along the last segment."""
        values, sizes = getattr(self, quantile), self.batch_sizes
        if len(sizes) == 1:
            return values[0] * batch_size / sizes[0] if batch_size > sizes[0] else values[0]
        i = bisect_left(sizes, batch_size)
        if i < len(sizes) and sizes[i] == batch_size:
            return values[i]
        if i == 0:  # below the smallest profiled batch: as slow as the smallest
            return values[0]
        i = min(i, len(sizes) - 1)
        b0, b1, v0, v1 = sizes[i - 1], sizes[i], values[i - 1], values[i]
        return max(v0, v0 + (v1 - v0) * (batch_size - b0) / (b1 - b0))


@dataclass(frozen=True)
class VariantProfile:
    name: str
    quality: float  # the family's test metric (accuracy, or RMSE for the recommender)
    profile: ServiceProfile
    executor: str = "local"  # variants that share an executor queue behind each other
    quality_se: float = 0.0  # the metric's standard error on the test split (0: taken as exact)
