"""The policy's settings, and the checks of a request's routing fields (budget, floor, batch size):
the one place a budget is validated, whichever door the request came in by."""

from __future__ import annotations

import math
from dataclasses import dataclass

from serving.errors import InvalidRequestError

MAX_LATENCY_BUDGET_MS = 60_000.0  # a minute: anything longer is a mistake, not a budget
# A request that names no budget gets this one: loose enough for the most accurate variant here.
DEFAULT_LATENCY_BUDGET_MS = 200.0
# A variant that failed on a request another variant then answered sits out this long (seconds).
DEFAULT_BENCH_S = 30.0
BUDGET_ACCEPTED = f"a number of milliseconds > 0 and <= {MAX_LATENCY_BUDGET_MS:g}"


@dataclass(frozen=True)
class PolicyConfig:
    # Share of the budget held back for jitter the profile did not see.
    safety_margin: float = 0.1
    # Weight of one observation in the slowdown factor: three slow answers move it ~2/3 of the way.
    correction_weight: float = 0.3
    # An unobserved variant's slowdown factor halves its distance to the profile this often.
    correction_half_life_s: float = 1.0
    # Bounds on the slowdown factor, so one absurd observation cannot blind the policy for long.
    min_correction: float = 0.1
    max_correction: float = 100.0
    # Weight of one request's reported latency in the learned overhead (its mean and mean deviation).
    overhead_weight: float = 0.1
    # Overhead planned for = mean + this many mean deviations, so budgets hold at the tail, not on
    # average. Wider than TCP's 4 because server latency here has a heavy tail (README, "How routing works").
    overhead_deviations: float = 8.0
    # Variants whose metric is within tie_z standard errors (of the better one's test-split metric)
    # of a better one count as equally accurate: the faster of them wins. 1.96: the 95% interval's
    # half-width. 0: the metrics' point estimates are ranked as they are.
    tie_z: float = 1.96
    # The smallest tolerance, in the metric's units, for variants whose metric has no standard error.
    quality_tolerance: float = 0.0
    # False: ignore the work in flight (the static budget-threshold policy).
    queue_aware: bool = True
    # False: trust the profile forever (the static budget-threshold policy).
    online: bool = True
    # Keep queues short enough that the tightest recent budget stays reachable.
    protect_tight_budgets: bool = True
    # How fast the remembered tightest budget relaxes towards the budgets now arriving.
    tight_budget_half_life_s: float = 10.0

    def __post_init__(self):
        if not 0 <= self.safety_margin < 1:
            raise ValueError(f"safety_margin must be in [0, 1), got {self.safety_margin}")
        if not 0 < self.correction_weight <= 1:
            raise ValueError(f"correction_weight must be in (0, 1], got {self.correction_weight}")
        if self.correction_half_life_s <= 0:
            raise ValueError(f"correction_half_life_s must be > 0, got {self.correction_half_life_s}")
        if not (math.isfinite(self.tie_z) and self.tie_z >= 0):
            raise ValueError(f"tie_z must be a finite number >= 0, got {self.tie_z}")
        if not (math.isfinite(self.quality_tolerance) and self.quality_tolerance >= 0):
            raise ValueError(f"quality_tolerance must be a finite number >= 0, got {self.quality_tolerance}")
        if self.overhead_deviations < 0:
            raise ValueError(f"overhead_deviations must be >= 0, got {self.overhead_deviations}")


def check_budget(value: object, field: str = "latency_budget_ms") -> float:
    """A request's latency budget in ms, or `InvalidRequestError` naming `field`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequestError(field, f"got {value!r}", BUDGET_ACCEPTED)
    if not 0 < value <= MAX_LATENCY_BUDGET_MS:
        raise InvalidRequestError(field, f"{value:g} is out of range", BUDGET_ACCEPTED)
    return float(value)


def check_batch_size(value: object) -> int:
    if type(value) is not int or value < 1:  # bool is not a batch size
        raise InvalidRequestError("batch_size", f"got {value!r}", "an integer >= 1")
    return value


def check_floor(value: object, field: str, metric: str) -> float:
    """A quality floor (`min_accuracy`, `max_rmse`, ...): a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequestError(field, f"got {value!r}", f"a finite number ({metric})")
    return float(value)


def check_strict(value: object) -> bool:
    if value is not True and value is not False:
        raise InvalidRequestError("strict", f"got {value!r}", "true or false")
    return value


def check_elapsed(value: float) -> float:
    """Time spent before the server (X-Request-Start): the edge must pass a sane value."""
    if not 0.0 <= value <= MAX_LATENCY_BUDGET_MS:  # NaN fails too
        raise ValueError(f"elapsed_ms must be in [0, {MAX_LATENCY_BUDGET_MS:g}], got {value}")
    return value
