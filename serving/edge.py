"""What every HTTP door of the gateway does alike (BentoML endpoints in `service.py`, the Starlette
routes in `routes.py`): build a request's `RequestContext` once, and turn a refusal into a status,
headers and FlexServe's one error body."""

from __future__ import annotations

import math

from starlette.requests import Request

from serving.errors import FlexServeError, InvalidRequestError, OverloadError
from serving.gateway import RequestContext, UnknownFamilyError
from serving.headers import BUDGET_HEADER, REQUEST_START_HEADER, budget_from_header, elapsed_since_request_start
from serving.middleware import arrival_of


def request_context(
    request: Request,
    budget: object,
    floor: object,
    variant: object,
    strict: object,
    budget_field: str = "latency_budget_ms",
) -> RequestContext:
    """The request's one context: the budget from the body, else the header (else None: the gateway's
    configured default), the time before the server, the arrival time."""
    headers, arrival = request.headers, arrival_of(request.scope)
    if budget is None and BUDGET_HEADER in headers:
        budget, budget_field = budget_from_header(headers[BUDGET_HEADER]), BUDGET_HEADER
    elapsed = 0.0
    if arrival is not None:
        elapsed = elapsed_since_request_start(headers.get(REQUEST_START_HEADER), arrival.unix_s)
    return RequestContext(budget, floor, variant, strict, elapsed, arrival.perf_s if arrival else None, budget_field)


def error_body(error: FlexServeError) -> dict:
    if isinstance(error, InvalidRequestError):
        return {
            "error": {"field": error.field, "problem": error.problem, "accepted": error.accepted, "message": str(error)}
        }
    return {"error": {"message": str(error)}}


def refusal(error: InvalidRequestError | OverloadError) -> tuple[int, dict, str]:
    """(HTTP status, headers, metrics outcome): 400 or 404 for a client's mistake, 503 + Retry-After
    for a strict request nothing can meet."""
    if isinstance(error, OverloadError):
        return 503, {"Retry-After": str(max(1, math.ceil(error.retry_after_s)))}, "overload"
    return (404 if isinstance(error, UnknownFamilyError) else 400), {}, "client_error"
