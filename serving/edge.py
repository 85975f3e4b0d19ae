"""What every HTTP door of the gateway does alike (BentoML endpoints in `service.py`, the Starlette
routes in `routes.py`): build a request's `RequestContext` once, and turn a refusal into a status,
headers and FlexServe's one error body."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from serving.errors import FlexServeError, InvalidRequestError, OverloadError, UnprocessableRequestError
from serving.gateway import RequestContext, UnknownFamilyError
from serving.headers import BUDGET_HEADER, REQUEST_START_HEADER, budget_from_header, elapsed_since_request_start
from serving.middleware import arrival_of
from serving.schemas import accepted


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


def metric_family(family: str, error: FlexServeError) -> str:
    """The `family` label a refusal is counted under: a family the repository lacks is "unknown" (a
    client choosing label values would grow the metrics without bound)."""
    return "unknown" if isinstance(error, UnknownFamilyError) else family


def refusal(error: InvalidRequestError | OverloadError) -> tuple[int, dict, str]:
    """(HTTP status, headers, metrics outcome): 400 for a malformed request, 404 for an unknown family,
    422 for a well-formed one this repository cannot serve, 503 + Retry-After for a strict request
    nothing can meet under the load of the moment."""
    if isinstance(error, OverloadError):
        return 503, {"Retry-After": str(max(1, math.ceil(error.retry_after_s)))}, "overload"
    if isinstance(error, UnknownFamilyError):
        return 404, {}, "client_error"
    return (422 if isinstance(error, UnprocessableRequestError) else 400), {}, "client_error"


@contextlib.contextmanager
def beyond_schema() -> Iterator[None]:
    """Around what runs after a request has passed its endpoint's schema: a refusal there is about what
    the schema cannot say (an id the catalogue lacks, a tensor the model does not take, a floor no
    variant meets), so a plain `InvalidRequestError` becomes an `UnprocessableRequestError` (422).
    400 stays what it says at /docs.json: the request does not match the schema."""
    try:
        yield
    except UnprocessableRequestError:
        raise
    except UnknownFamilyError:
        raise
    except InvalidRequestError as error:
        raise UnprocessableRequestError(error.field, error.problem, error.accepted) from None


def routing_fields(model: BaseModel | None) -> dict:
    """The fields a client set in a routing-fields model (`serving.schemas.RoutingFields`), its extra
    ones (the family's floor) included."""
    if model is None:
        return {}
    return {name: getattr(model, name) for name in model.model_fields_set} | (model.model_extra or {})


def routing_headers(meta: dict) -> dict[str, str]:
    """The headers every answer carries: which variant answered, whether within the budget, and which
    gateway worker process."""
    return {
        "X-FlexServe-Variant": meta["variant"],
        "X-FlexServe-Budget-Met": json.dumps(meta["budget_met"]),
        "X-FlexServe-Worker": str(meta["worker"]),
    }


def schema_error(errors: list[dict]) -> InvalidRequestError:
    """A request its endpoint's schema refuses (pydantic's errors, as BentoML reports them too) as
    FlexServe's 400: the first error's field, problem and what the field accepts."""
    if not errors:
        return InvalidRequestError("body", "does not match the schema", accepted(()))
    first, more = errors[0], len(errors) - 1
    loc = tuple(first.get("loc") or ())
    field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".") or "body"
    if first.get("type") == "missing":
        problem = "is missing"
    elif first.get("type") == "extra_forbidden":
        problem = "is not a field of this endpoint"
    elif first.get("type") == "json_invalid":
        problem = f"is not valid JSON ({first.get('msg', '')})"
    else:
        problem = str(first.get("msg", "is not valid")).removeprefix("Input ").removeprefix("Value error, ")
        problem = problem[:1].lower() + problem[1:]
    if more:
        problem += f" (and {more} more error{'s' if more > 1 else ''})"
    return InvalidRequestError(field, problem, accepted(loc))


def invalid(error: ValidationError) -> InvalidRequestError:
    return schema_error(error.errors(include_url=False, include_context=False, include_input=False))
