"""The BentoML HTTP gateway: `flexserve serve`, or `bentoml serve` in the repository root (see
bentofile.yaml).

A thin adapter: `serving/gateway.py` does the work. This module is the edge for the built-in
families' friendly endpoints and the Open Inference Protocol's inference, typed with
`serving/schemas.py` (BentoML validates requests against the types; `serving/openapi.py` documents
them), and `serving/routes.py` for the rest (any family's friendly JSON, v2 metadata, reload,
variants): it builds each request's `RequestContext` once (`serving/edge.py`), maps errors to HTTP
status codes, hands the gateway's `Completion` to BentoML to call once the response has been sent,
and turns what happens into Prometheus metrics.

    POST /v1/classify_image   {"images": [[[0..255] x 28] x 28, ...]}
    POST /v1/classify_text    {"texts": ["...", ...]}
    POST /v1/recommend        {"user_id": 1, "k": 10, "candidate_item_ids": [...]}
                              {"ratings": [{"item_id": 50, "rating": 5}, ...], "k": 10}  (a new user)
Every POST also takes `latency_budget_ms`, `min_accuracy` (`max_rmse` for /v1/recommend),
`variant` and `strict`. Configuration: the FLEXSERVE_* environment (`GatewayConfig.from_env`).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os

import bentoml
from bentoml._internal.server.http import traffic as _bentoml_traffic
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

from contract.manifest import BENTOML_MODEL_NAME
from serving import routes, schemas
from serving.edge import (
    beyond_schema,
    metric_family,
    refusal,
    request_context,
    routing_fields,
    routing_headers,
    schema_error,
)
from serving.endpoints import CLASSIFY_IMAGE, CLASSIFY_TEXT, FAMILIES, RECOMMEND
from serving.errors import InvalidRequestError, OverloadError
from serving.families.recommender import DEFAULT_K
from serving.gateway import Completion, Gateway, GatewayConfig, usable_cores
from serving.metrics import PrometheusObserver
from serving.middleware import ArrivalTime, BodyLimit, ConcurrencyLimit, ErrorBody, JsonOnly, RequestTimeout
from serving.openapi import OpenAPIDocument
from serving.tensors import parse_inputs

# BentoML builds each worker's app with its `TimeoutMiddleware` for `traffic={"timeout": ...}` (looked
# up in this module when the app is built): FlexServe's, whose timer does not outlive the request.
_bentoml_traffic.TimeoutMiddleware = RequestTimeout

log = logging.getLogger("flexserve.service")
MAX_CONCURRENCY = 256  # requests in the process at once; past it, 429 + Retry-After


class _NoSchemaTracebacks(logging.Filter):
    """BentoML logs a traceback for every request its schema refuses: a client's mistake, answered
    400 with the field named, is not the server's error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ValidationError))


logging.getLogger("bentoml._internal.server.http_app").addFilter(_NoSchemaTracebacks())
# Gateway processes: FLEXSERVE_WORKERS (`flexserve serve --workers`), by default one per core with the
# in-process backend (`serving.gateway.default_workers`); BENTOML_CONFIG_OPTIONS='services.flexserve.workers=N'
# overrides it as for any BentoML service.
WORKERS = GatewayConfig.from_env().workers


def _served_workers() -> int:
    """The number of worker processes BentoML started for this service (its configuration, with any
    override applied); outside `bentoml serve` (tests, `to_asgi()`), FLEXSERVE_WORKERS's."""
    try:
        from bentoml._internal.configuration.containers import BentoMLContainer

        workers = BentoMLContainer.config.services[FlexServe.name].get().get("workers")
    except Exception:  # not configured: not started by `bentoml serve`
        workers = None
    if workers == "cpu_count":
        return usable_cores()
    return workers if isinstance(workers, int) and workers >= 1 else WORKERS


class ConfiguredBodyLimit(BodyLimit):
    """`BodyLimit` at the running gateway's `max_body_bytes` (FLEXSERVE_MAX_BODY_BYTES, read with the
    rest of its configuration when the service starts); before that, the environment's."""

    def __init__(self, app):
        default = GatewayConfig.from_env().max_body_bytes

        def limit() -> int:
            gateway = routes.app.state.gateway
            return default if gateway is None else gateway.config.max_body_bytes

        super().__init__(app, limit)


@bentoml.asgi_app(routes.app, path="/")
@bentoml.service(
    name="flexserve",
    # 127.0.0.1 unless told otherwise (`--host`); inside the image `bentoml containerize` builds
    # (BENTOML_CONTAINERIZED is set there) the port must be reachable from outside the container.
    http={"host": "0.0.0.0" if os.environ.get("BENTOML_CONTAINERIZED") else "127.0.0.1", "port": 3000},
    # A request is never held past its own budget by the policy, and never past the timeout (504)
    # by BentoML. The concurrency limit (429) is FlexServe's `ConcurrencyLimit`, in its error body.
    traffic={"timeout": 30},
    # Each worker process holds its own sessions and policies (`serving.gateway`, "Worker processes").
    workers=WORKERS,
)
class FlexServe:
    def __init__(self) -> None:
        # Everything imported so far lives as long as the process: move it out of the cyclic
        # collector's sight, so that its full collections scan only what requests and repository
        # versions allocate (here they stalled every request in flight for ~0.1-0.4 s every few
        # seconds under load, and during swaps). Repository versions stay collectable.
        gc.collect()
        gc.freeze()
        self.observer = PrometheusObserver()
        self.gateway = Gateway(self._config(), observer=self.observer)
        routes.app.state.gateway, routes.app.state.observer = self.gateway, self.observer

    @staticmethod
    def _config() -> GatewayConfig:
        """FLEXSERVE_* as set; with neither FLEXSERVE_REPO nor FLEXSERVE_MODEL_TAG and no repository in
        the default directory, the one a built bento carries (bentofile.yaml's `models`: `flexserve
        bento` puts the live version in the model store, `bentoml build` packs it)."""
        workers = _served_workers()
        worker = min(max(bentoml.server_context.worker_index or 1, 1), workers)
        config = GatewayConfig.from_env(workers=workers, worker=worker)
        if os.environ.get("FLEXSERVE_REPO") or config.model_tag or config.repo.exists():
            return config
        try:
            packed = bentoml.models.get(f"{BENTOML_MODEL_NAME}:latest")  # in a bento: its own model store
        except bentoml.exceptions.NotFound:
            return config  # the gateway's missing-repository message says how to build one
        log.info("no repository at %s and no FLEXSERVE_REPO: serving %s from the model store", config.repo, packed.tag)
        return dataclasses.replace(config, model_tag=str(packed.tag))

    def __is_ready__(self) -> bool:
        return self.gateway.ready()

    @bentoml.on_shutdown
    def _close(self) -> None:
        self.gateway.close()

    @bentoml.api(route=CLASSIFY_IMAGE)
    async def classify_image(
        self,
        ctx: bentoml.Context,
        images: schemas.Images,
        latency_budget_ms: schemas.Budget = None,
        min_accuracy: schemas.MinAccuracy = None,
        variant: schemas.Variant = None,
        strict: schemas.Strict = False,
    ) -> schemas.Classification:
        """Classify 28x28 grayscale images (pixel values 0-255) as Fashion-MNIST classes."""
        return await self._answer(
            ctx, FAMILIES[CLASSIFY_IMAGE], {"images": images}, latency_budget_ms, min_accuracy, variant, strict
        )

    @bentoml.api(route=CLASSIFY_TEXT)
    async def classify_text(
        self,
        ctx: bentoml.Context,
        texts: schemas.Texts,
        latency_budget_ms: schemas.Budget = None,
        min_accuracy: schemas.MinAccuracy = None,
        variant: schemas.Variant = None,
        strict: schemas.Strict = False,
    ) -> schemas.Classification:
        """Classify movie-review snippets as fresh or rotten."""
        return await self._answer(
            ctx, FAMILIES[CLASSIFY_TEXT], {"texts": texts}, latency_budget_ms, min_accuracy, variant, strict
        )

    @bentoml.api(route=RECOMMEND)
    async def recommend(
        self,
        ctx: bentoml.Context,
        user_id: schemas.UserId = None,
        ratings: schemas.Ratings = None,
        k: schemas.K = DEFAULT_K,
        candidate_item_ids: schemas.CandidateItemIds = None,
        latency_budget_ms: schemas.Budget = None,
        max_rmse: schemas.MaxRmse = None,
        variant: schemas.Variant = None,
        strict: schemas.Strict = False,
    ) -> schemas.Recommendation:
        """Top-k movies for a MovieLens user, by predicted rating (default: the whole catalogue, k=10);
        for a new user, from their `ratings` instead of a `user_id` (cold start)."""
        rated = None if ratings is None else [r.model_dump() for r in ratings]
        body = {"user_id": user_id, "ratings": rated, "k": k, "candidate_item_ids": candidate_item_ids}
        return await self._answer(ctx, FAMILIES[RECOMMEND], body, latency_budget_ms, max_rmse, variant, strict)

    @bentoml.api(route="/v2/models/{family}/infer")
    async def infer(
        self,
        ctx: bentoml.Context,
        inputs: schemas.InferInputs,
        parameters: schemas.InferParameters = None,
        id: schemas.RequestId = None,
        outputs: schemas.RequestedOutputs = None,
    ) -> schemas.InferResponse:
        """The Open Inference Protocol (KServe v2): any family's tensors in, budget-routed (the routing
        fields and the family's floor in `parameters`)."""
        family, fields = ctx.request.path_params["family"], routing_fields(parameters)
        try:
            adapter = self.gateway.family(family)
            with beyond_schema():
                floor = adapter.floor(fields)
            request = request_context(
                ctx.request,
                fields.get("latency_budget_ms"),
                floor,
                fields.get("variant"),
                fields.get("strict", False),
                budget_field="parameters.latency_budget_ms",
            )
            with beyond_schema():
                named = parse_inputs([dict(tensor) for tensor in inputs])
                outputs, meta, completion = await self.gateway.infer_tensors(family, named, request)
        except (InvalidRequestError, OverloadError) as error:
            return self._refuse(ctx, family, error)
        return self._respond(ctx, routes.v2_answer(family, id, outputs, meta), meta, completion)

    # -- the edge ---------------------------------------------------------------------------
    async def _answer(
        self,
        ctx: bentoml.Context,
        family: str,
        body: dict,
        budget: float | None,
        floor: float | None,
        variant: str | None,
        strict: bool,
    ) -> Response:
        try:
            request = request_context(ctx.request, budget, floor, variant, strict)
            with beyond_schema():
                answer, completion = await self.gateway.infer(family, body, request)
        except (InvalidRequestError, OverloadError) as error:
            return self._refuse(ctx, family, error)
        return self._respond(ctx, answer, answer, completion)

    def _respond(self, ctx: bentoml.Context, answer: dict, meta: dict, completion: Completion) -> Response:
        ctx.response.headers.update(routing_headers(meta))
        ctx.response.background.add_task(routes.report, completion)  # after the last byte is sent
        # Already plain JSON types: skip BentoML's validation of the returned dict (~0.1 ms a request).
        return Response(json.dumps(answer, separators=(",", ":")), media_type="application/json")

    def _refuse(self, ctx: bentoml.Context, family: str, error: InvalidRequestError | OverloadError) -> Response:
        """A client's mistake (400, 404, 422) or a strict request nothing can meet (503 + Retry-After):
        FlexServe's one error body (`serving.schemas.ErrorBody`)."""
        status, headers, outcome = refusal(error)
        ctx.response.status_code = status
        ctx.response.headers.update(headers)
        self.observer.rejected(metric_family(family, error), outcome)
        return JSONResponse(error.body(), status_code=status)


# A field an endpoint does not take is refused (400), not ignored: a typo such as `latency_budget`
# must not silently mean the default budget. (BentoML builds each endpoint's request model from its
# signature with pydantic's default, which ignores them.)
for _endpoint in FlexServe.apis.values():
    _endpoint.input_spec.model_config["extra"] = "forbid"
    _endpoint.input_spec.model_rebuild(force=True)

# Outermost first.
FlexServe.add_asgi_middleware(ConcurrencyLimit, max_requests=MAX_CONCURRENCY)
FlexServe.add_asgi_middleware(ConfiguredBodyLimit)
FlexServe.add_asgi_middleware(ArrivalTime)
FlexServe.add_asgi_middleware(JsonOnly)


def _schema_refusal(path: str) -> None:
    """Counts a request the endpoint's schema refused (BentoML's 400, before any FlexServe code ran)."""
    gateway, observer = routes.app.state.gateway, routes.app.state.observer
    if observer is None:
        return
    family = FAMILIES.get(path)
    if family is None and path.startswith("/v2/models/"):
        family = path.split("/")[3]
        family = family if gateway is not None and family in gateway.generation.policies else "unknown"
    observer.rejected(family or "unknown", "client_error")


FlexServe.add_asgi_middleware(ErrorBody, rewrite=schema_error, refused=_schema_refusal)
FlexServe.add_asgi_middleware(OpenAPIDocument, gateway=lambda: routes.app.state.gateway)
