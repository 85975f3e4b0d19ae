"""The API's document at /docs.json (and so the Swagger UI at /docs): BentoML's, completed.

BentoML documents its `@bentoml.api` endpoints from their typed signatures (`serving/schemas.py`) but
with its own error bodies, no headers, and nothing of the routes it mounts (`serving/routes.py`).
`document()` adds what a client needs: FlexServe's one error body on every refusal (400, 404, 413,
415, 422, 429, 503), the headers requests take and answers carry, the mounted routes with their typed
answers, and the live repository's families as the values a `{family}` path takes. The document is
built once per repository version.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

from pydantic import BaseModel

from serving import schemas
from serving.headers import BUDGET_HEADER, REQUEST_START_ACCEPTED, REQUEST_START_HEADER, REQUEST_START_PATTERN
from serving.policy.config import MAX_LATENCY_BUDGET_MS

REF = "#/components/schemas/{model}"
DOCUMENT_PATH = "/docs.json"

REFUSALS = {
    400: "The request does not match this schema (the error names the field)",
    404: "No such family in the model repository",
    413: "The body is larger than the gateway's FLEXSERVE_MAX_BODY_BYTES",
    415: "The body is not JSON (Content-Type must be application/json)",
    422: "The request matches the schema but this repository cannot serve it: an id the model does not "
    "know, a variant it does not hold, a floor no variant meets, tensors the model does not take, or a "
    "strict budget no variant meets even idle",
    429: "Too many requests in the gateway at once: retry after Retry-After seconds",
    503: "A strict request no variant is predicted to meet under the load of the moment, or the gateway "
    "is starting or shutting down: retry after Retry-After seconds",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
ANSWER_HEADERS = {
    "X-FlexServe-Variant": {"description": "the variant that answered", "schema": {"type": "string"}},
    "X-FlexServe-Budget-Met": {
        "description": "whether the answer came within the request's latency budget",
        "schema": {"type": "string", "enum": ["true", "false"]},
    },
    "X-FlexServe-Worker": {
        "description": "the gateway worker process that answered (1-based)",
        "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"},
    },
}
REQUEST_HEADERS = [
    {
        "name": BUDGET_HEADER,
        "in": "header",
        "required": False,
        "description": "the latency budget in ms when the body names none",
        "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_LATENCY_BUDGET_MS},
    },
    {
        "name": REQUEST_START_HEADER,
        "in": "header",
        "required": False,
        "description": "when the client sent the request; the time since counts against the budget: "
        + REQUEST_START_ACCEPTED,
        "schema": {"type": "string", "pattern": REQUEST_START_PATTERN},
    },
]


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict, headers: dict | None = None, description: str = "Successful Response") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}} | (
        {"headers": headers} if headers else {}
    )


def _refusals(*statuses: int) -> dict:
    return {
        str(status): _json(_ref(schemas.ErrorBody), RETRY_AFTER if status in (429, 503) else None, REFUSALS[status])
        for status in statuses
    }


def _family(families: list[str]) -> dict:
    return {
        "name": "family",
        "in": "path",
        "required": True,
        "description": "a family of the live model repository (GET /v1/variants)",
        "schema": {"type": "string", "enum": families} if families else {"type": "string"},
    }


def _without_null_defaults(schema: object) -> object:
    """An optional field's `default: null` says "leave it out", but a client reading it would send a null,
    which the field refuses (its type has none): dropped."""
    if isinstance(schema, list):
        return [_without_null_defaults(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        key: _without_null_defaults(value) for key, value in schema.items() if not (key == "default" and value is None)
    }


def _components(*models: type[BaseModel]) -> dict:
    out = {}
    for model in models:
        schema = model.model_json_schema(ref_template=REF, mode="serialization")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def document(spec: dict, families: list[str]) -> dict:
    """BentoML's document `spec`, completed (see the module docstring)."""
    spec = copy.deepcopy(spec)
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    for name in ("InvalidArgument", "NotFound", "InternalServerError"):  # BentoML's error bodies: not ours
        components.pop(name, None)
    components.update(
        _components(
            schemas.ErrorBody, schemas.Variants, schemas.Classification, schemas.Recommendation, schemas.InferResponse
        )
    )
    spec["info"]["description"] = (
        "Serves each request with the most accurate model variant that fits its latency budget. Every "
        'refusal answers FlexServe\'s error body: {"error": {field, problem, accepted, message}}.'
    )
    spec["info"].pop("contact", None)
    paths = spec["paths"]
    for path, item in paths.items():
        operation = item.get("post")
        if operation is None or "x-bentoml-name" not in operation:
            continue
        ok = operation["responses"]["200"]
        ok["headers"] = ANSWER_HEADERS
        statuses = (400, 404, 413, 415, 422, 429, 503) if "{family}" in path else (400, 413, 415, 422, 429, 503)
        operation["responses"] = {"200": ok, **_refusals(*statuses)}
        operation["parameters"] = [*([_family(families)] if "{family}" in path else []), *REQUEST_HEADERS]
        operation["requestBody"]["required"] = True
    paths["/v1/variants"] = {
        "get": {
            "tags": ["Service APIs"],
            "operationId": "flexserve__variants",
            "description": "The routing state per family: each variant's metric, profiled and predicted latency, "
            "slowdown, requests in flight.",
            "responses": {"200": _json(_ref(schemas.Variants)), **_refusals(503)},
        }
    }
    paths["/v1/predict/{family}"] = {
        "post": {
            "tags": ["Service APIs"],
            "operationId": "flexserve__predict",
            "description": "Any family's friendly JSON: its adapter's fields (GET /v2/models/{family}) beside the "
            "routing fields and the family's floor (min_accuracy, max_rmse, ...).",
            "parameters": [_family(families), *REQUEST_HEADERS],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": schemas.RoutingFields.model_json_schema()}},
            },
            "responses": {
                "200": _json({"type": "object", "additionalProperties": True}, ANSWER_HEADERS),
                **_refusals(400, 404, 413, 415, 422, 429, 503),
            },
        }
    }
    paths["/v2/models/{family}"] = {
        "get": {
            "tags": ["Service APIs"],
            "operationId": "flexserve__model_metadata",
            "description": "The Open Inference Protocol's model metadata: inputs, outputs, raw inputs, variants.",
            "parameters": [_family(families)],
            "responses": {
                "200": _json({"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"]}),
                **_refusals(404, 503),
            },
        }
    }
    paths["/v2/models/{family}/ready"] = {
        "get": {
            "tags": ["Service APIs"],
            "operationId": "flexserve__model_ready",
            "description": "Whether the family can be served now.",
            "parameters": [_family(families)],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["name", "ready"],
                        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
                    }
                ),
                **_refusals(404),
                "503": _json(
                    {"oneOf": [_ref(schemas.ErrorBody), {"type": "object", "required": ["name", "ready"]}]},
                    description="Not ready yet",
                ),
            },
        }
    }
    paths["/v1/admin/reload"] = {
        "post": {
            "tags": ["Infrastructure"],
            "operationId": "flexserve__reload",
            "description": "Load the model repository's live version now (loopback clients only).",
            "responses": {
                "200": _json({"type": "object"}),
                **{
                    str(status): _json(_ref(schemas.ErrorBody), description=description)
                    for status, description in (
                        (403, "Not from a loopback address"),
                        (409, "The live version cannot be loaded: the loaded one keeps serving"),
                    )
                },
                **_refusals(415, 429, 503),
            },
        }
    }
    # pydantic writes JSON Schema 2020-12 (`exclusiveMinimum: 0`, `type: null`): OpenAPI 3.1's dialect.
    spec["openapi"] = "3.1.0"
    return _without_null_defaults(spec)


class OpenAPIDocument:
    """Answers GET /docs.json with `document()` of BentoML's document (the rest passes through)."""

    def __init__(self, app, gateway: Callable[[], object]):
        self.app = app
        self._gateway = gateway
        self._cached: tuple[object, bytes] | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != DOCUMENT_PATH or scope["method"] not in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        gateway = self._gateway()
        version = getattr(gateway, "version", None)
        if self._cached is None or self._cached[0] != version:
            families = sorted(gateway.generation.policies) if gateway is not None else []
            original = await self._original(scope, receive)
            self._cached = (version, json.dumps(document(original, families)).encode())
        body = self._cached[1]
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})

    async def _original(self, scope, receive) -> dict:
        chunks = []

        async def collect(message):
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app({**scope, "method": "GET"}, receive, collect)
        return json.loads(b"".join(chunks))
