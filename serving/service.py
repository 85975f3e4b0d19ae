"""The BentoML HTTP gateway: `bentoml serve` in the repository root (see bentofile.yaml).

A thin adapter: `serving/gateway.py` does the work; this module maps JSON bodies and headers
to it, errors to HTTP status codes, and what happens to Prometheus metrics.

    POST /v1/classify_image   {"images": [[[0..255] x 28] x 28, ...]}
    POST /v1/classify_text    {"texts": ["...", ...]}
    POST /v1/recommend        {"user_id": 1, "k": 10, "candidate_item_ids": [...]}
    GET  /v1/variants         routing state per family
Every POST also takes `latency_budget_ms` (or the X-Latency-Budget-Ms header), `min_accuracy`
(`max_rmse` for /v1/recommend), `variant` and `strict`. A client (or proxy) that sends
X-Request-Start (`t=<Unix time>`, when it sent the request) has the time before the request
reached the server counted against its budget.

Configuration (environment): FLEXSERVE_REPO (default artifacts/model_repository) or
FLEXSERVE_MODEL_TAG (a BentoML model store tag), FLEXSERVE_DEVICE (auto|cpu|cuda),
FLEXSERVE_WORKERS (default: the cores), FLEXSERVE_DEFAULT_BUDGET_MS (200),
FLEXSERVE_MAX_BODY_BYTES (1 MiB).
"""
from __future__ import annotations

import functools
import json
import math
import os
import time
import typing as t
from dataclasses import replace

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving.errors import FlexServeError, InvalidRequestError, OverloadError
from serving.gateway import Gateway, GatewayConfig, Observer, RouteOptions, UnknownFamilyError
from serving.preprocess import check_budget_header, elapsed_since_request_start

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 64 images of 28x28 as JSON is ~300 KB


@functools.cache
def _metrics() -> tuple:
    """Created once per process, after BentoML has set up Prometheus' multiprocess directory."""
    import prometheus_client as prom

    requests = prom.Counter("flexserve_requests", "Requests by family, variant and outcome "
                            "(budget_met, budget_missed, client_error, overload, error)", ["family", "variant", "outcome"])
    latency = prom.Histogram("flexserve_request_latency_seconds", "Latency measured in the gateway",
                             ["family", "variant"],
                             buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0))
    in_flight = prom.Gauge("flexserve_in_flight", "Requests running or queued per variant", ["family", "variant"],
                           multiprocess_mode="livesum")
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


class BodyLimit:
    """ASGI middleware: refuse request bodies over `max_bytes` with 413 before reading them all."""

    def __init__(self, app, max_bytes: int | None = None):
        self.app = app
        self.max_bytes = max_bytes or int(os.environ.get("FLEXSERVE_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            return await self.app(scope, counted, send)
        except _TooLarge:
            return await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send):
        body = {"error": {"field": "body", "problem": "the request body is too large",
                          "accepted": f"at most {self.max_bytes} bytes",
                          "message": f"body: the request body is too large; accepted: at most {self.max_bytes} bytes"}}
        await JSONResponse(body, status_code=413)(scope, receive, send)


class _TooLarge(Exception):
    pass


ARRIVAL, SENT, DEFERRED = "flexserve_arrival", "flexserve_request_start", "flexserve_deferred"


class ArrivalStamp:
    """ASGI middleware: the request's time in the server, as the policy should learn it.

    Notes when a request reached the app (so the latency the gateway reports includes the time
    before the handler ran), keeps the X-Request-Start header with the wall-clock time it was read
    at, and reports the request's latency to the policy once the response's last byte has been
    handed to the server: the way out (serialisation, BentoML's middlewares) counts too."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        state[ARRIVAL] = time.perf_counter()
        for key, value in scope.get("headers") or ():
            if key == b"x-request-start":
                state[SENT] = (value.decode("latin-1"), time.time())
                break
        deferred = state[DEFERRED] = {}

        async def sent(message):
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body") and "policy" in deferred:
                latency_ms = (time.perf_counter() - state[ARRIVAL]) * 1e3
                deferred.pop("policy").observe_latency(deferred.pop("decision"), latency_ms)

        return await self.app(scope, receive, sent)


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
        return {"error": {"field": error.field, "problem": error.problem, "accepted": error.accepted,
                          "message": str(error)}}
    return {"error": {"message": str(error)}}


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
    async def classify_image(self, ctx: bentoml.Context, images: t.Any = None, latency_budget_ms: t.Any = None,
                             min_accuracy: t.Any = None, variant: t.Any = None, strict: t.Any = False) -> dict:
        """Classify 28x28 grayscale images (pixel values 0-255) as Fashion-MNIST classes."""
        return await self._call(ctx, "cnn", lambda o, t0: self.gateway.classify_image(images, o, t0),
                                RouteOptions(latency_budget_ms, min_accuracy, variant, strict))

    @bentoml.api(route="/v1/classify_text")
    async def classify_text(self, ctx: bentoml.Context, texts: t.Any = None, latency_budget_ms: t.Any = None,
                            min_accuracy: t.Any = None, variant: t.Any = None, strict: t.Any = False) -> dict:
        """Classify movie-review snippets as fresh or rotten."""
        return await self._call(ctx, "rnn", lambda o, t0: self.gateway.classify_text(texts, o, t0),
                                RouteOptions(latency_budget_ms, min_accuracy, variant, strict))

    @bentoml.api(route="/v1/recommend")
    async def recommend(self, ctx: bentoml.Context, user_id: t.Any = None, k: t.Any = None,
                        candidate_item_ids: t.Any = None, latency_budget_ms: t.Any = None, max_rmse: t.Any = None,
                        min_accuracy: t.Any = None, variant: t.Any = None, strict: t.Any = False) -> dict:
        """Top-k movies for a MovieLens user, by predicted rating (default: the whole catalogue, k=10)."""
        options = RouteOptions(latency_budget_ms, max_rmse, variant, strict)

        async def run(o: RouteOptions, arrival: float | None) -> dict:
            if min_accuracy is not None:
                raise InvalidRequestError("min_accuracy", "the recommender is measured by RMSE, not accuracy",
                                          "max_rmse: the highest test RMSE you accept, e.g. 0.95")
            return await self.gateway.recommend(user_id, k, candidate_item_ids, o, arrival)

        return await self._call(ctx, "recsys", run, options)

    async def _call(self, ctx: bentoml.Context, family: str, handler, options: RouteOptions) -> dict:
        try:
            state = ctx.request.scope.get("state", {})
            if options.latency_budget_ms is None:
                header = check_budget_header(ctx.request.headers.get("x-latency-budget-ms"))
                options = replace(options, latency_budget_ms=header)
            if SENT in state:
                options = replace(options, elapsed_ms=elapsed_since_request_start(*state[SENT]))
            if DEFERRED in state:
                options = replace(options, deferred=state[DEFERRED])
            result = await handler(options, state.get(ARRIVAL))
        except OverloadError as error:
            ctx.response.status_code = 503
            ctx.response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
            self.observer.rejected(family, "overload")
            return _error_body(error)
        except UnknownFamilyError as error:
            ctx.response.status_code = 404
            self.observer.rejected(family, "client_error")
            return _error_body(error)
        except InvalidRequestError as error:
            ctx.response.status_code = 400
            self.observer.rejected(family, "client_error")
            return _error_body(error)
        ctx.response.headers["X-FlexServe-Variant"] = result["variant"]
        ctx.response.headers["X-FlexServe-Budget-Met"] = json.dumps(result["budget_met"])
        # Already plain JSON types: skip BentoML's validation of the returned dict (~0.1 ms a request).
        return Response(json.dumps(result, separators=(",", ":")), media_type="application/json")


FlexServe.add_asgi_middleware(BodyLimit)
FlexServe.add_asgi_middleware(ArrivalStamp)
