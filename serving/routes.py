"""The gateway's routes beside the BentoML endpoints: a small Starlette app that the service mounts at
the root (BentoML's API methods take fixed paths and POST only; its mount claims only the paths
these routes match, and BentoML's middlewares wrap them too).

    GET  /v1/variants                   routing state per family
    POST /v1/predict/{family}           any family's friendly JSON (its adapter's fields)
    POST /v1/admin/reload               load the live repository version now (loopback clients only)
    GET  /v2/models/{family}            Open Inference Protocol (KServe v2): metadata
    GET  /v2/models/{family}/ready      ... readiness

The Open Inference Protocol's inference (POST /v2/models/{family}/infer) is a typed BentoML endpoint in
`serving/service.py`.
"""

from __future__ import annotations

import json

import numpy as np
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contract.dtypes import dtype
from contract.triton_config import TensorConfig
from serving.edge import (
    beyond_schema,
    invalid,
    metric_family,
    refusal,
    request_context,
    routing_headers,
)
from serving.errors import InvalidRequestError, OverloadError, RepositoryError
from serving.gateway import Completion, Gateway
from serving.schemas import RoutingFields
from serving.tensors import to_json

ROUTING_FIELDS = tuple(RoutingFields.model_fields)  # latency_budget_ms, variant, strict
LOOPBACK = ("127.0.0.1", "::1")


async def report(completion: Completion) -> None:
    completion()  # async, so that Starlette runs it on the event loop rather than a thread


def _gateway(request: Request) -> Gateway | None:
    return request.app.state.gateway


async def _json_object(request: Request) -> dict:
    try:
        body = json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidRequestError("body", f"is not valid JSON ({error})", "a JSON object") from None
    except RecursionError:
        raise InvalidRequestError("body", "nests too deeply", "a JSON object of ordinary depth") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("body", f"is a JSON {type(body).__name__}", "a JSON object") from None
    return body


def _refuse(request: Request, family: str, error: InvalidRequestError | OverloadError) -> JSONResponse:
    status, headers, outcome = refusal(error)
    observer = request.app.state.observer
    if observer is not None:
        observer.rejected(metric_family(family, error), outcome)
    return JSONResponse(error.body(), status_code=status, headers=headers)


def _answer(body: dict, meta: dict, completion: Completion) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")),
        media_type="application/json",
        headers=routing_headers(meta),
        background=BackgroundTask(report, completion),
    )


def _starting() -> JSONResponse:
    return JSONResponse(
        {"error": {"message": "the gateway is starting"}}, status_code=503, headers={"Retry-After": "1"}
    )


async def variants(request: Request) -> JSONResponse:
    gateway = _gateway(request)
    return JSONResponse(gateway.variants()) if gateway else _starting()


async def predict(request: Request) -> Response:
    """Any family's friendly JSON: its adapter's fields and the routing fields (`schemas.RoutingFields`)."""
    gateway, family = _gateway(request), request.path_params["family"]
    if gateway is None:
        return _starting()
    try:
        body = await _json_object(request)
        adapter = gateway.family(family)
        try:
            routing = RoutingFields.model_validate(body)
        except ValidationError as error:
            raise invalid(error) from None
        with beyond_schema():  # the family's own fields: its adapter checks them
            floor = adapter.floor(body)
            known = {*adapter.fields, *ROUTING_FIELDS, adapter.floor_field}
            unknown = sorted(set(body) - known)
            if unknown:  # a typo (`latency_budget`) must not silently mean the default
                raise InvalidRequestError(unknown[0], f"is not a field of {family}", ", ".join(sorted(known)))
        context = request_context(request, routing.latency_budget_ms, floor, routing.variant, routing.strict)
        with beyond_schema():
            answer, completion = await gateway.infer(family, body, context)
    except (InvalidRequestError, OverloadError) as error:
        return _refuse(request, family, error)
    return _answer(answer, answer, completion)


async def reload(request: Request) -> JSONResponse:
    gateway = _gateway(request)
    if gateway is None:
        return _starting()
    client = request.client.host if request.client else None
    if client not in LOOPBACK:
        return JSONResponse(
            {"error": {"message": f"reload is accepted from loopback only, not from {client}"}}, status_code=403
        )
    try:
        return JSONResponse(await run_in_threadpool(gateway.reload))
    except Exception as error:  # a broken new version: the one loaded keeps serving
        status = 409 if isinstance(error, RepositoryError) else 500
        message = f"the live repository version could not be loaded ({error}); still serving {gateway.version}"
        return JSONResponse({"error": {"message": message}}, status_code=status)


async def model_metadata(request: Request) -> JSONResponse:
    gateway, family = _gateway(request), request.path_params["family"]
    if gateway is None:
        return _starting()
    generation = gateway.generation  # one version throughout, whatever a reload does meanwhile
    try:
        adapter = generation.family(family)
    except InvalidRequestError as error:
        return _refuse(request, family, error)
    section = adapter.section

    def specs(tensors) -> list[dict]:  # as on Triton: a per-row scalar travels as [n, 1]
        return [
            {"name": t.name, "datatype": dtype(t.dtype).triton, "shape": [t.shape[0], *TensorConfig.batched(t).dims]}
            for t in tensors
        ]

    raw = [{"name": t.name, "datatype": dtype(t.dtype).triton, "shape": list(t.dims)} for t in adapter.raw_inputs]
    return JSONResponse(
        {
            "name": family,
            "versions": [generation.version],
            "platform": "flexserve",
            "inputs": specs(section.inputs),
            "outputs": specs(section.outputs),
            "parameters": {
                "raw_inputs": raw,
                "variants": generation.policies[family].variant_names,
                "metric": section.metric,
                "higher_is_better": section.higher_is_better,
                "routing_parameters": [*ROUTING_FIELDS, adapter.floor_field],
                **({"labels": adapter.labels} if adapter.labels else {}),
            },
        }
    )


async def model_ready(request: Request) -> JSONResponse:
    gateway, family = _gateway(request), request.path_params["family"]
    if gateway is None:
        return _starting()
    try:
        gateway.family(family)
    except InvalidRequestError as error:
        return _refuse(request, family, error)
    ready = gateway.ready()
    return JSONResponse(
        {"name": family, "ready": ready},
        status_code=200 if ready else 503,
        headers={} if ready else {"Retry-After": "1"},
    )


V2_PARAMETERS = ("variant", "budget_ms", "budget_met", "latency_ms", "backend", "worker")


def v2_answer(family: str, request_id: str | None, outputs: dict[str, np.ndarray], meta: dict) -> dict:
    """The Open Inference Protocol's answer (`schemas.InferResponse`): a per-row scalar travels as
    [n, 1], as on Triton."""
    return {
        "model_name": family,
        "model_version": meta["version"],
        **({"id": request_id} if request_id is not None else {}),
        "outputs": [
            to_json(name, value.reshape(-1, 1) if value.ndim == 1 else value) for name, value in outputs.items()
        ],
        "parameters": {key: meta[key] for key in V2_PARAMETERS}
        | {key: meta[key] for key in ("reason", "failed_variants") if key in meta},
    }


app = Starlette(
    routes=[
        Route("/v1/variants", variants, methods=["GET"]),
        Route("/v1/predict/{family}", predict, methods=["POST"]),
        Route("/v1/admin/reload", reload, methods=["POST"]),
        Route("/v2/models/{family}", model_metadata, methods=["GET"]),
        Route("/v2/models/{family}/ready", model_ready, methods=["GET"]),
    ]
)
app.state.gateway = None
app.state.observer = None
