"""The BentoML HTTP gateway: `bentoml serve` in the repository root (see bentofile.yaml), or
`flexserve serve`.

A thin adapter: `serving/gateway.py` does the work. This module is the edge: it builds each
request's `RequestContext` once (budget from the body, else the X-Latency-Budget-Ms header, else
the gateway's configured default; time before the server from X-Request-Start; arrival time from the
`ArrivalTime` middleware), maps errors to HTTP status codes, hands the gateway's `Completion` to
BentoML to call once the response has been sent, and turns what happens into Prometheus metrics.

    POST /v1/classify_image   {"images": [[[0..255] x 28] x 28, ...]}
    POST /v1/classify_text    {"texts": ["...", ...]}
    POST /v1/recommend        {"user_id": 1, "k": 10, "candidate_item_ids": [...]}
    GET  /v1/variants         routing state per family
Every POST also takes `latency_budget_ms`, `min_accuracy` (`max_rmse` for /v1/recommend),
`variant` and `strict`. Configuration: the FLEXSERVE_* environment (`GatewayConfig.from_env`).
"""

from __future__ import annotations

import functools
import json
import math
import typing as t

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving.errors import FlexServeError, InvalidRequestError, OverloadError
from serving.gateway import Completion, Gateway, GatewayConfig, Observer, RequestContext, UnknownFamilyError
from serving.headers import BUDGET_HEADER, REQUEST_START_HEADER, budget_from_header, elapsed_since_request_start
from serving.middleware import ArrivalTime, BodyLimit, arrival_of


@functools.cache
def _metrics() -> tuple:
    """Created once per process, after BentoML has set up Prometheus' multiprocess directory."""
    import prometheus_client as prom

    requests = prom.Counter(
        "flexserve_requests",
        "Requests by family, variant and outcome (budget_met, budget_missed, client_error, overload, error)",
        ["family", "variant", "outcome"],
    )
    latency = prom.Histogram(
        "flexserve_request_latency_seconds",
        "Latency measured in the gateway",
        ["family", "variant"],
        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
    )
    in_flight = prom.Gauge(
        "flexserve_in_flight",
        "Requests running or queued per variant",
        ["family", "variant"],
        multiprocess_mode="livesum",
    )
    return requests, latency, in_flight


class PrometheusObserver(Observer):
    """flexserve_* metrics on BentoML's /metrics."""

    def __init__(self):
        self.requests, self.latency, self.in_flight = _metrics()

    def started(self, family: str, variant: str) -> None:
        self.in_flight.labels(family=family, variant=variant).inc()

    def finished(self, family: str, variant: str, outcome: str, latency_s: float) -> None:
        self.in_flight.labels(family=family, variant=variant).dec()
        self.requests.labels(family=family, variant=variant, outcome=outcome).inc()
        self.latency.labels(family=family, variant=variant).observe(latency_s)

    def rejected(self, family: str, outcome: str) -> None:
        self.requests.labels(family=family, variant="none", outcome=outcome).inc()


class ConfiguredBodyLimit(BodyLimit):
    """`BodyLimit` at FLEXSERVE_MAX_BODY_BYTES, read when the app is built (not at import)."""

    def __init__(self, app):
        super().__init__(app, GatewayConfig.from_env().max_body_bytes)


async def _variants(request: Request) -> JSONResponse:
    gateway = request.app.state.gateway
    if gateway is None:
        return JSONResponse({"error": {"message": "the gateway is starting"}}, status_code=503)
    return JSONResponse(gateway.variants())


# GET /v1/variants. BentoML API methods are POST-only, so this is a small Starlette app mounted
# at the root; BentoML's mount only claims the paths its routes match, so nothing is shadowed.
variants_app = Starlette(routes=[Route("/v1/variants", _variants, methods=["GET"])])
variants_app.state.gateway = None


def _error_body(error: FlexServeError) -> dict:
    if isinstance(error, InvalidRequestError):
        return {
            "error": {"field": error.field, "problem": error.problem, "accepted": error.accepted, "message": str(error)}
        }
    return {"error": {"message": str(error)}}


async def _report(completion: Completion) -> None:
    completion()  # async, so that Starlette runs it on the event loop rather than a thread


@bentoml.asgi_app(variants_app, path="/")
@bentoml.service(
    name="flexserve",
    http={"host": "127.0.0.1", "port": 3000},
    # 429 past max_concurrency; a request is never held past its own budget by the policy,
    # and never past the timeout (504) by BentoML.
    traffic={"timeout": 30, "max_concurrency": 256},
    workers=1,  # one process: the variants, the policy state and the threads live here
)
class FlexServe:
    def __init__(self) -> None:
        self.observer = PrometheusObserver()
        self.gateway = Gateway(GatewayConfig.from_env(), observer=self.observer)
        variants_app.state.gateway = self.gateway

    def __is_ready__(self) -> bool:
        return self.gateway.ready()

    @bentoml.on_shutdown
    def _close(self) -> None:
        self.gateway.close()

    @bentoml.api(route="/v1/classify_image")
    async def classify_image(
        self,
        ctx: bentoml.Context,
        images: t.Any = None,
        latency_budget_ms: t.Any = None,
        min_accuracy: t.Any = None,
        variant: t.Any = None,
        strict: t.Any = False,
    ) -> dict:
        """Classify 28x28 grayscale images (pixel values 0-255) as Fashion-MNIST classes."""
        try:
            request = self._context(ctx, latency_budget_ms, min_accuracy, variant, strict)
            answer = await self.gateway.classify_image(images, request)
        except (InvalidRequestError, OverloadError) as error:
            return self._refuse(ctx, "cnn", error)
        return self._respond(ctx, *answer)

    @bentoml.api(route="/v1/classify_text")
    async def classify_text(
        self,
        ctx: bentoml.Context,
        texts: t.Any = None,
        latency_budget_ms: t.Any = None,
        min_accuracy: t.Any = None,
        variant: t.Any = None,
        strict: t.Any = False,
    ) -> dict:
        """Classify movie-review snippets as fresh or rotten."""
        try:
            request = self._context(ctx, latency_budget_ms, min_accuracy, variant, strict)
            answer = await self.gateway.classify_text(texts, request)
        except (InvalidRequestError, OverloadError) as error:
            return self._refuse(ctx, "rnn", error)
        return self._respond(ctx, *answer)

    @bentoml.api(route="/v1/recommend")
    async def recommend(
        self,
        ctx: bentoml.Context,
        user_id: t.Any = None,
        k: t.Any = None,
        candidate_item_ids: t.Any = None,
        latency_budget_ms: t.Any = None,
        max_rmse: t.Any = None,
        min_accuracy: t.Any = None,
        variant: t.Any = None,
        strict: t.Any = False,
    ) -> dict:
        """Top-k movies for a MovieLens user, by predicted rating (default: the whole catalogue, k=10)."""
        try:
            if min_accuracy is not None:
                raise InvalidRequestError(
                    "min_accuracy",
                    "the recommender is measured by RMSE, not accuracy",
                    "max_rmse: the highest test RMSE you accept, e.g. 0.95",
                )
            request = self._context(ctx, latency_budget_ms, max_rmse, variant, strict)
            answer = await self.gateway.recommend(user_id, k, candidate_item_ids, request)
        except (InvalidRequestError, OverloadError) as error:
            return self._refuse(ctx, "recsys", error)
        return self._respond(ctx, *answer)

    # -- the edge ---------------------------------------------------------------------------
    def _context(
        self, ctx: bentoml.Context, budget: object, floor: object, variant: object, strict: object
    ) -> RequestContext:
        """The request's one context: the budget from the body, else the header (else None: the gateway's
        configured default), the time before the server, the arrival time."""
        headers, arrival = ctx.request.headers, arrival_of(ctx.request.scope)
        field = "latency_budget_ms"
        if budget is None and BUDGET_HEADER in headers:
            budget, field = budget_from_header(headers[BUDGET_HEADER]), BUDGET_HEADER
        elapsed = 0.0
        if arrival is not None:
            elapsed = elapsed_since_request_start(headers.get(REQUEST_START_HEADER), arrival.unix_s)
        return RequestContext(budget, floor, variant, strict, elapsed, arrival.perf_s if arrival else None, field)

    def _respond(self, ctx: bentoml.Context, answer: dict, completion: Completion) -> Response:
        ctx.response.headers["X-FlexServe-Variant"] = answer["variant"]
        ctx.response.headers["X-FlexServe-Budget-Met"] = json.dumps(answer["budget_met"])
        ctx.response.background.add_task(_report, completion)  # after the last byte is sent
        # Already plain JSON types: skip BentoML's validation of the returned dict (~0.1 ms a request).
        return Response(json.dumps(answer, separators=(",", ":")), media_type="application/json")

    def _refuse(self, ctx: bentoml.Context, family: str, error: InvalidRequestError | OverloadError) -> dict:
        """A client's mistake (400, 404) or a strict request nothing can meet (503 + Retry-After)."""
        if isinstance(error, OverloadError):
            ctx.response.status_code = 503
            ctx.response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
            self.observer.rejected(family, "overload")
        else:
            ctx.response.status_code = 404 if isinstance(error, UnknownFamilyError) else 400
            self.observer.rejected(family, "client_error")
        return _error_body(error)


FlexServe.add_asgi_middleware(ConfiguredBodyLimit)
FlexServe.add_asgi_middleware(ArrivalTime)
