"""The request headers FlexServe reads, parsed (pure functions: the edge calls them once per request).

- `X-Latency-Budget-Ms`: the budget, when the body names none (the policy checks its range).
- `X-Request-Start`: when the client (or a proxy in front, e.g. nginx `t=${msec}`) sent the
  request; the time since then counts against that request's budget.
"""

from __future__ import annotations

import re

from serving.errors import InvalidRequestError, UnprocessableRequestError
from serving.policy.config import BUDGET_ACCEPTED, MAX_LATENCY_BUDGET_MS, check_budget

BUDGET_HEADER = "X-Latency-Budget-Ms"
REQUEST_START_HEADER = "X-Request-Start"
MAX_REQUEST_AGE_MS = MAX_LATENCY_BUDGET_MS  # older than any budget: a clock problem, not a queue
REQUEST_START_ACCEPTED = "t=<Unix time> in seconds, milliseconds or microseconds, e.g. t=1700000000.123"
REQUEST_START_PATTERN = r"^\s*(t=)?[0-9]+(\.[0-9]+)?\s*$"  # what the schema at /docs.json says
_REQUEST_START = re.compile(REQUEST_START_PATTERN)


def budget_from_header(value: str | None) -> float | None:
    """`X-Latency-Budget-Ms` as a number in the budget's range (as /docs.json says), None without it."""
    if value is None:
        return None
    try:
        return check_budget(float(value), BUDGET_HEADER)
    except ValueError:
        raise InvalidRequestError(BUDGET_HEADER, f"{value!r} is not a number", BUDGET_ACCEPTED) from None


def elapsed_since_request_start(value: str | None, now: float) -> float:
    """Milliseconds between the `X-Request-Start` header and `now` (Unix seconds), 0 without it.

    Accepts `t=<time>` or `<time>` in seconds, milliseconds or microseconds since the epoch (told
    apart by magnitude, as APM tools do). Not of that form: 400. A stamp in the future (clock skew)
    counts as 0; zero, or one older than a minute, is refused (422) with a hint to check the clock."""
    if value is None:
        return 0.0
    if _REQUEST_START.match(value) is None:
        raise InvalidRequestError(REQUEST_START_HEADER, f"{value!r} is not a time", REQUEST_START_ACCEPTED)
    stamp = float(value.strip().removeprefix("t="))
    if stamp <= 0:
        raise UnprocessableRequestError(REQUEST_START_HEADER, f"{value!r} is not a time", REQUEST_START_ACCEPTED)
    stamp /= 1e6 if stamp > 1e14 else 1e3 if stamp > 1e11 else 1.0
    elapsed = (now - stamp) * 1e3
    if elapsed > MAX_REQUEST_AGE_MS:  # a well-formed stamp: the request's to change (422)
        raise UnprocessableRequestError(
            REQUEST_START_HEADER,
            f"{value!r} is {elapsed / 1e3:.0f} s ago",
            f"a time within the last {MAX_REQUEST_AGE_MS / 1e3:g} s (check the client's clock)",
        )
    return max(0.0, elapsed)
