"""The BentoML HTTP gateway: `flexserve serve`, or `bentoml serve` in the repository root (see
bentofile.yaml).

A thin adapter: `serving/gateway.py` does the work. This module is the edge for the built-in
families' friendly endpoints (`serving/routes.py` for everything else: the Open Inference Protocol,
any family's friendly JSON, reload, variants): it builds each request's `RequestContext` once
(`serving/edge.py`), maps errors to HTTP status codes, hands the gateway's `Completion` to BentoML to
call once the response has been sent, and turns what happens into Prometheus metrics.

    POST /v1/classify_image   {"images": [[[0..255] x 28] x 28, ...]}
    POST /v1/classify_text    {"texts": ["...", ...]}
    POST /v1/recommend        {"user_id": 1, "k": 10, "candidate_item_ids": [...]}
Every POST also takes `latency_budget_ms`, `min_accuracy` (`max_rmse` for /v1/recommend),
`variant` and `strict`. Configuration: the FLEXSERVE_* environment (`GatewayConfig.from_env`).
"""

from __future__ import annotations

import gc
import json
import typing as t

import bentoml
from starlette.responses import Response

from serving import routes
from serving.edge import error_body, refusal, request_context
from serving.errors import InvalidRequestError, OverloadError
from serving.gateway import Completion, Gateway, GatewayConfig
from serving.metrics import PrometheusObserver
from serving.middleware import ArrivalTime, BodyLimit


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
    http={"host": "127.0.0.1", "port": 3000},
    # 429 past max_concurrency; a request is never held past its own budget by the policy,
    # and never past the timeout (504) by BentoML.
    traffic={"timeout": 30, "max_concurrency": 256},
    workers=1,  # one process: the variants, the policy state and the threads live here
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
        self.gateway = Gateway(GatewayConfig.from_env(), observer=self.observer)
        routes.app.state.gateway, routes.app.state.observer = self.gateway, self.observer

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
        return await self._answer(ctx, "cnn", {"images": images}, latency_budget_ms, min_accuracy, variant, strict)

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
        return await self._answer(ctx, "rnn", {"texts": texts}, latency_budget_ms, min_accuracy, variant, strict)

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
        floors = {name: v for name, v in (("min_accuracy", min_accuracy), ("max_rmse", max_rmse)) if v is not None}
        try:
            floor = self.gateway.family("recsys").floor(floors)
        except InvalidRequestError as error:
            return self._refuse(ctx, "recsys", error)
        body = {"user_id": user_id, "k": k, "candidate_item_ids": candidate_item_ids}
        return await self._answer(ctx, "recsys", body, latency_budget_ms, floor, variant, strict)

    # -- the edge ---------------------------------------------------------------------------
    async def _answer(
        self,
        ctx: bentoml.Context,
        family: str,
        body: dict,
        budget: object,
        floor: object,
        variant: object,
        strict: object,
    ) -> Response | dict:
        try:
            request = request_context(ctx.request, budget, floor, variant, strict)
            answer, completion = await self.gateway.infer(family, body, request)
        except (InvalidRequestError, OverloadError) as error:
            return self._refuse(ctx, family, error)
        return self._respond(ctx, answer, completion)

    def _respond(self, ctx: bentoml.Context, answer: dict, completion: Completion) -> Response:
        ctx.response.headers["X-FlexServe-Variant"] = answer["variant"]
        ctx.response.headers["X-FlexServe-Budget-Met"] = json.dumps(answer["budget_met"])
        ctx.response.background.add_task(routes.report, completion)  # after the last byte is sent
        # Already plain JSON types: skip BentoML's validation of the returned dict (~0.1 ms a request).
        return Response(json.dumps(answer, separators=(",", ":")), media_type="application/json")

    def _refuse(self, ctx: bentoml.Context, family: str, error: InvalidRequestError | OverloadError) -> dict:
        """A client's mistake (400, 404) or a strict request nothing can meet (503 + Retry-After)."""
        status, headers, outcome = refusal(error)
        ctx.response.status_code = status
        ctx.response.headers.update(headers)
        self.observer.rejected(family, outcome)
        return error_body(error)


FlexServe.add_asgi_middleware(ConfiguredBodyLimit)
FlexServe.add_asgi_middleware(ArrivalTime)
