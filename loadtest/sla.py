"""SLA classes and the checks a load test must pass (pure: no Locust, no HTTP).

An SLA class is a name, a latency budget sent with each request (`latency_budget_ms`), and a
share of the traffic. When a run ends, each class is checked: the chosen percentile of its
response times (measured by the client) within its budget, its failure ratio under a
threshold, and the share of answers the server reports as `budget_met` over a threshold. The run
passes (exit code 0) when every class does, failures within the allowed ratio included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CLASSES = "interactive=20:0.3,standard=50:0.5,batch=200:0.2"
# The thresholds' one home: the locustfiles' options, `flexserve loadtest` and SlaSpec all read these.
DEFAULT_PERCENTILE = 95.0  # of client-measured response time, checked against the budget
DEFAULT_MAX_FAILURE_RATIO = 0.01  # failed requests / requests, per class
DEFAULT_MIN_BUDGET_MET = 0.9  # share of answered requests with budget_met: true, per class


@dataclass(frozen=True)
class SlaClass:
    name: str
    budget_ms: float
    weight: float


@dataclass(frozen=True)
class SlaSpec:
    classes: tuple[SlaClass, ...]
    percentile: float = DEFAULT_PERCENTILE
    max_failure_ratio: float = DEFAULT_MAX_FAILURE_RATIO
    min_budget_met: float = DEFAULT_MIN_BUDGET_MET

    def __post_init__(self):
        if not self.classes:
            raise ValueError("at least one SLA class is needed")
        if not 0 < self.percentile < 100:
            raise ValueError(f"percentile must be in (0, 100), got {self.percentile}")
        for name in ("max_failure_ratio", "min_budget_met"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def parse_classes(text: str) -> tuple[SlaClass, ...]:
    """`interactive=20:0.3,standard=50:0.5` -> classes; a class without `:weight` weighs 1."""
    classes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, rest = item.partition("=")
        budget, _, weight = rest.partition(":")
        try:
            cls = SlaClass(name.strip(), float(budget), float(weight) if weight else 1.0)
        except ValueError:
            raise ValueError(f"SLA class {item!r}: expected NAME=BUDGET_MS[:WEIGHT], e.g. {DEFAULT_CLASSES}") from None
        if not cls.name or cls.budget_ms <= 0 or cls.weight <= 0:
            raise ValueError(f"SLA class {item!r}: a name, a budget > 0 and a weight > 0 are needed")
        classes.append(cls)
    if len({c.name for c in classes}) != len(classes):
        raise ValueError(f"SLA class names must be distinct: {text}")
    return tuple(classes)


def load_spec(
    path: Path | None, classes: str, percentile: float, max_failure_ratio: float, min_budget_met: float
) -> SlaSpec:
    """From a JSON file ({"classes": [{"name", "budget_ms", "weight"}], "percentile", ...}) or the options."""
    if path is None:
        return SlaSpec(parse_classes(classes), percentile, max_failure_ratio, min_budget_met)
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return SlaSpec(
        tuple(SlaClass(c["name"], float(c["budget_ms"]), float(c.get("weight", 1.0))) for c in data["classes"]),
        float(data.get("percentile", percentile)),
        float(data.get("max_failure_ratio", max_failure_ratio)),
        float(data.get("min_budget_met", min_budget_met)),
    )


@dataclass
class ClassResult:
    name: str
    budget_ms: float
    requests: int
    failures: int
    percentile_ms: float
    budget_met: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check(spec: SlaSpec, name: str, requests: int, failures: int, percentile_ms: float, budget_met: int) -> ClassResult:
    """One class's verdict; each broken SLA says by how much."""
    budget = next(c.budget_ms for c in spec.classes if c.name == name)
    result = ClassResult(name, budget, requests, failures, percentile_ms, budget_met)
    if requests == 0:
        result.problems.append("no requests were made")
        return result
    if percentile_ms > budget:
        result.problems.append(
            f"p{spec.percentile:g} {percentile_ms:.1f} ms > budget {budget:g} ms "
            f"(over by {percentile_ms - budget:.1f} ms, {percentile_ms / budget:.1f}x)"
        )
    ratio = failures / requests
    if ratio > spec.max_failure_ratio:
        result.problems.append(f"failure ratio {ratio:.2%} > {spec.max_failure_ratio:.2%} ({failures} of {requests})")
    answered = requests - failures
    share = budget_met / answered if answered else 0.0
    if share < spec.min_budget_met:
        result.problems.append(
            f"budget_met share {share:.1%} < {spec.min_budget_met:.1%} (short by {spec.min_budget_met - share:.1%})"
        )
    return result


def exit_code(results: list[ClassResult], user_errors: int = 0) -> int:
    """The load test's process exit code: 0 when every SLA class passed (failed requests within the
    allowed ratio included), 1 when any broke, none was checked, or the users' own code raised
    (`user_errors`: exceptions in the locustfile, not failed requests)."""
    return 0 if results and all(r.ok for r in results) and not user_errors else 1
