"""FlexServe on Ray Serve: the gateway as a Ray Serve application, for more than one machine.

    flexserve serve --engine ray [--replicas N | --autoscale MIN:MAX] [--address RAY_ADDRESS]
    serve run serving.rayserve:app repo=artifacts/model_repository replicas=2

Each replica runs the BentoML service's own ASGI app (`serving.service.FlexServe.to_asgi()`) behind
Ray's HTTP proxy: the same endpoints, schemas, error bodies, /docs.json and /metrics as `flexserve
serve`, each replica with its own sessions and policies (`serving.gateway`), as a BentoML worker has.
The same replicas answer gRPC through Ray Serve's gRPC proxy (`serving/proto/flexserve.proto`; an
example client in `serving/clients/ray_grpc.py`), validated with the HTTP endpoints' own request
models.

Routing between replicas: `LeastPredictedLatencyRouter` (Ray Serve's custom request router API) sends
each request to the replica whose policy predicts the lowest latency for it, from what each replica
reports every `STATS_PERIOD_S` (`record_routing_stats`: its learned service times per family) and the
router's live count of each replica's requests in flight; `--router p2c` keeps Ray's default power of
two choices. `max_ongoing_requests` comes from the profiles (`replica_limits`).

Imported only by the Ray engine: `ray[serve]` is needed there and nowhere else in the serving half.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.config import AutoscalingConfig, RequestRouterConfig
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from serving.endpoints import FAMILIES

log = logging.getLogger("flexserve.rayserve")

APP_NAME = "flexserve"
GRPC_SERVICER = "serving.proto.flexserve_pb2_grpc.add_FlexServeServicer_to_server"
STATS_PERIOD_S = 0.5  # how often each replica reports its learned service times to the routers
ROUTERS = {
    "least-latency": "serving.rayserve:LeastPredictedLatencyRouter",
    "p2c": "ray.serve._private.request_router.pow_2_router:PowerOfTwoChoicesRequestRouter",
}
# gRPC methods and HTTP paths -> the family they serve (the router predicts per family).
METHOD_FAMILIES = {"ClassifyImage": "cnn", "ClassifyText": "rnn", "Recommend": "recsys"}
LOGGING = {"enable_access_log": False, "log_level": "WARNING"}  # Ray's per-request access log costs CPU
TARGET_ONGOING_PER_THREAD = 2  # autoscaling's target: one request running and one waiting per model thread


@dataclass(frozen=True)
class ReplicaLimits:
    max_ongoing_requests: int
    target_ongoing_requests: int


def replica_limits(repo: Path, parallelism: int, budget_ms: float | None = None) -> ReplicaLimits:
    """From the profiles: a replica takes at most as many requests as its `parallelism` model threads
    can finish within the default budget on the fastest variant of the slowest family (beyond that a
    request would wait past any budget the policy can meet: better queued at the proxy, where Ray can
    send it to a replica that frees up first); autoscaling aims at `TARGET_ONGOING_PER_THREAD` per
    thread, the queue at which waiting starts to cost as much as serving."""
    from serving.policy import DEFAULT_LATENCY_BUDGET_MS, policy_from_manifest
    from serving.repository import load_repository

    budget_ms = budget_ms or DEFAULT_LATENCY_BUDGET_MS
    loaded = load_repository(repo, verify=False)
    slowest = 0.0
    for family in loaded.families:
        section = loaded.family(family)
        policy = policy_from_manifest(family, section)
        rows = section.rows_per_request
        slowest = max(slowest, policy.profile_of(policy.fastest(rows)).at(rows))
    per_thread = max(1, math.floor(budget_ms / max(slowest, 1e-3)))
    return ReplicaLimits(
        max_ongoing_requests=max(parallelism, min(parallelism * per_thread, 1000)),
        target_ongoing_requests=parallelism * TARGET_ONGOING_PER_THREAD,
    )


class FlexServeReplica:
    """One replica: the BentoML service's ASGI app (its lifespan starts a `FlexServe` instance, which
    loads the repository named in `env`) plus the gRPC methods and the routing stats."""

    def __init__(self, env: dict[str, str]):
        os.environ.update(env)  # FLEXSERVE_*: read by the gateway's configuration, as under `bentoml serve`
        import bentoml

        from serving.service import FlexServe

        context = serve.get_replica_context()
        bentoml.server_context.worker_index = context.rank.rank + 1 if context.rank is not None else 1
        self._asgi = FlexServe.to_asgi()

    def __serve_build_asgi_app__(self):
        return self._asgi

    @property
    def _gateway(self):
        from serving import routes

        return routes.app.state.gateway

    # -- the router's view ------------------------------------------------------------------
    def record_routing_stats(self) -> dict[str, Any]:
        """What `LeastPredictedLatencyRouter` ranks this replica by: per family, the latency its policy
        predicts for a one-row request to the variant an idle replica serves a loose budget with (the
        first in routing order: the fastest of those tied for best; profiled p95 x its learned slowdown
        + its learned overhead), and its model threads."""
        gateway = self._gateway
        if gateway is None:
            return {}
        state = gateway.variants()
        idle = {}
        for family, section in state["families"].items():
            first = section["variants"][0]  # in routing order
            idle[family] = first["profiled_p95_ms"] * first["slowdown"] + section["overhead_ms"]
        return {"parallelism": state["parallelism"], "idle_ms": idle}

    # -- gRPC (Ray Serve's gRPC proxy calls these by the .proto's method names) -------------------
    async def ClassifyText(self, request, grpc_context=None):
        from serving.proto import flexserve_pb2 as pb

        body = {"texts": list(request.texts)}
        answer = await self._grpc("classify_text", "rnn", body, request.routing, "min_accuracy", grpc_context)
        return pb.Classification() if answer is None else pb.Classification(**_classification(answer))

    async def ClassifyImage(self, request, grpc_context=None):
        import numpy as np

        from serving.proto import flexserve_pb2 as pb

        pixels = np.asarray(request.pixels, dtype=np.float64)
        count = int(request.count)
        if count < 1 or pixels.size != count * 28 * 28:
            if self._gateway is not None:
                self._gateway.observer.rejected("cnn", "client_error")
            _abort(
                grpc_context,
                "INVALID_ARGUMENT",
                "pixels",
                f"has {pixels.size} values for count {count}",
                "count x 28 x 28 pixel values, count in [1, 64]",
            )
            return pb.Classification()
        body = {"images": pixels.reshape(count, 28, 28).tolist()}
        answer = await self._grpc("classify_image", "cnn", body, request.routing, "min_accuracy", grpc_context)
        return pb.Classification() if answer is None else pb.Classification(**_classification(answer))

    async def Recommend(self, request, grpc_context=None):
        from serving.proto import flexserve_pb2 as pb

        body: dict = {"user_id": request.user_id}
        if request.k:
            body["k"] = request.k
        if request.candidate_item_ids:
            body["candidate_item_ids"] = list(request.candidate_item_ids)
        answer = await self._grpc("recommend", "recsys", body, request.routing, "max_rmse", grpc_context)
        if answer is None:
            return pb.Recommendation()  # the status set on grpc_context is what the client sees
        items = [
            pb.Item(item_id=int(i["item_id"]), title=i["title"], predicted_rating=i["predicted_rating"])
            for i in answer["items"]
        ]
        return pb.Recommendation(items=items, routed=pb.Routed(**_routed(answer)))

    async def _grpc(self, endpoint: str, family: str, body: dict, routing, floor_field: str, grpc_context):
        """Validate `body` with the HTTP endpoint's own request model, route and run it: the answer,
        or None after setting the gRPC status (the HTTP status's counterpart) and details on
        `grpc_context` (Ray's proxy answers with that status, not the empty message returned)."""
        from pydantic import ValidationError

        from serving.edge import beyond_schema, invalid, refusal
        from serving.errors import InvalidRequestError, OverloadError
        from serving.gateway import RequestContext
        from serving.service import FlexServe

        arrived = time.perf_counter()
        for name in ("latency_budget_ms", floor_field, "variant"):
            if routing.HasField(name):
                body[name] = getattr(routing, name)
        if routing.strict:
            body["strict"] = True
        gateway = self._gateway
        if gateway is None:
            return _abort(grpc_context, "UNAVAILABLE", None, "the gateway is starting", "a retry in a second")
        try:
            try:
                fields = FlexServe.apis[endpoint].input_spec.model_validate(body)
            except ValidationError as error:
                raise invalid(error) from None
            routed = dict(fields)
            request = RequestContext(
                routed.pop("latency_budget_ms", None),
                routed.pop(floor_field, None),
                routed.pop("variant", None),
                routed.pop("strict", False),
                arrived_at=arrived,
            )
            with beyond_schema():
                answer, completion = await gateway.infer(family, routed, request)
        except (InvalidRequestError, OverloadError) as error:
            status, _, outcome = refusal(error)
            gateway.observer.rejected(family, outcome)
            if isinstance(error, OverloadError):
                return _abort(grpc_context, GRPC_STATUS[status], None, str(error), None)
            return _abort(grpc_context, GRPC_STATUS[status], error.field, error.problem, error.accepted)
        asyncio.get_running_loop().call_soon(completion)  # once the answer is on its way
        return answer


# HTTP status -> gRPC status code name (grpc.StatusCode's)
GRPC_STATUS = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    422: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
}


def _abort(grpc_context, code: str, field: str | None, problem: str, accepted: str | None) -> None:
    import grpc

    from serving.errors import InvalidRequestError

    message = InvalidRequestError(field, problem, accepted).body()["error"]["message"] if field else problem
    if grpc_context is not None:
        grpc_context.set_code(getattr(grpc.StatusCode, code))
        grpc_context.set_details(message)
    return None


def _routed(answer: dict) -> dict:
    keys = ("variant", "backend", "version", "worker", "latency_ms", "budget_ms", "budget_met", "reason")
    return {key: answer[key] for key in keys}


def _classification(answer: dict) -> dict:
    from serving.proto import flexserve_pb2 as pb

    predictions = [
        pb.Prediction(label=p.get("label") or "", class_id=p["class_id"], probability=p["probability"])
        for p in answer["predictions"]
    ]
    return {"predictions": predictions, "routed": pb.Routed(**_routed(answer))}


class LeastPredictedLatencyRouter(RequestRouter):
    """Each request to the replica whose policy predicts the lowest latency for it: the replica's
    learned idle latency for the request's family (`FlexServeReplica.record_routing_stats`) plus the
    wait for what this router has in flight there, spread over its model threads. The in-flight
    counts are Ray's own per-router queue-length cache (incremented on send, decremented on
    completion, corrected by probes), so a burst spreads at once rather than after the next report.
    Candidates are returned best first, one per rank: Ray sends to the first that has room
    (`max_ongoing_requests`), probing the queue length where its cache has none."""

    def initialize_state(self, **kwargs):
        self._default_ms = float(kwargs.get("default_ms", 1.0))

    def predicted_ms(self, replica: RunningReplica, family: str | None) -> float:
        queued = self.replica_queue_len_cache.get(replica.replica_id) or 0
        return predicted_ms(replica.routing_stats or {}, queued, family, self._default_ms)

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if pending_request is not None:
            # When every ranked replica is full, Ray backs off before asking again (no busy loop of probes).
            pending_request.routing_context.should_backoff = True
        if not candidate_replicas:
            return []
        family = _family_of(pending_request)
        # Shuffled first: replicas predicted alike (idle ones) share the load rather than the first taking it.
        shuffled = random.sample(candidate_replicas, len(candidate_replicas))
        ranked = sorted(shuffled, key=lambda r: self.predicted_ms(r, family))
        return [[replica] for replica in ranked]


def predicted_ms(stats: dict, queued: int, family: str | None, default_ms: float = 1.0) -> float:
    """A replica's predicted latency for a request of `family` (None: any) with `queued` requests
    already there: its idle latency for the family (the mean over families when unknown; `default_ms`
    before its first report) x (1 + queued / its model threads)."""
    idle = stats.get("idle_ms") or {}
    service = idle.get(family) if family else None
    if service is None:
        service = sum(idle.values()) / len(idle) if idle else default_ms
    return service * (1 + queued / max(1, int(stats.get("parallelism", 1))))


def _family_of(pending_request: PendingRequest | None) -> str | None:
    """The family a request is for, where the router can tell without reading the body: the gRPC
    method, or the HTTP route Ray matched; None (any family) otherwise."""
    if pending_request is None:
        return None
    metadata = pending_request.metadata
    method = METHOD_FAMILIES.get(metadata.call_method)
    return method if method is not None else FAMILIES.get(metadata.route)


def deployment(
    repo: Path | None = None,
    model_tag: str | None = None,
    replicas: int | None = None,
    autoscale: tuple[int, int] | None = None,
    parallelism: int = 1,
    router: str = "least-latency",
    env: dict[str, str] | None = None,
):
    """The FlexServe application: one deployment of `FlexServeReplica`, `replicas` of it (default:
    one per CPU Ray reports, divided by `parallelism`) or autoscaled between `autoscale`'s bounds."""
    import ray

    from serving.gateway import GatewayConfig

    if router not in ROUTERS:
        raise ValueError(f"router must be one of {', '.join(ROUTERS)}, got {router!r}")

    settings = {k: v for k, v in (env or os.environ).items() if k.startswith("FLEXSERVE_")}
    if model_tag:
        settings["FLEXSERVE_MODEL_TAG"] = model_tag
    elif repo is not None:
        settings["FLEXSERVE_REPO"] = str(Path(repo).resolve())
        settings.pop("FLEXSERVE_MODEL_TAG", None)  # the repository asked for, not a tag in the environment
    config = GatewayConfig.from_env(settings)
    if replicas is None and autoscale is None:
        cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else os.cpu_count() or 1
        replicas = max(1, cpus // parallelism)
    most = autoscale[1] if autoscale else replicas
    settings |= {"FLEXSERVE_WORKERS": str(most), "FLEXSERVE_PARALLELISM": str(parallelism)}
    limits = replica_limits(config.repo, parallelism, config.default_budget_ms) if not model_tag else None
    options: dict[str, Any] = {
        "name": "FlexServe",
        "ray_actor_options": {"num_cpus": parallelism},
        "logging_config": LOGGING,
        "request_router_config": RequestRouterConfig(
            request_router_class=ROUTERS[router],
            # Only the least-latency router reads the replicas' reports: the others keep Ray's period.
            **({"request_routing_stats_period_s": STATS_PERIOD_S} if router == "least-latency" else {}),
        ),
    }
    if limits is not None:
        options["max_ongoing_requests"] = limits.max_ongoing_requests
    if autoscale:
        options["autoscaling_config"] = AutoscalingConfig(
            min_replicas=autoscale[0],
            max_replicas=autoscale[1],
            target_ongoing_requests=(limits.target_ongoing_requests if limits else TARGET_ONGOING_PER_THREAD),
        )
    else:
        options["num_replicas"] = replicas
    ingress = serve.deployment(**options)(serve.ingress()(FlexServeReplica))
    return ingress.bind(settings)


def app(args: dict[str, str]):
    """`serve run serving.rayserve:app [repo=PATH] [replicas=N | autoscale=MIN:MAX] [parallelism=P]
    [router=least-latency|p2c]`: Ray Serve's application builder."""
    autoscale = parse_autoscale(args["autoscale"]) if args.get("autoscale") else None
    return deployment(
        repo=Path(args.get("repo") or os.environ.get("FLEXSERVE_REPO") or "artifacts/model_repository"),
        model_tag=args.get("model_tag"),
        replicas=int(args["replicas"]) if args.get("replicas") else None,
        autoscale=autoscale,
        parallelism=int(args.get("parallelism", 1)),
        router=args.get("router", "least-latency"),
    )


def parse_autoscale(value: str) -> tuple[int, int]:
    """`MIN:MAX` -> (min, max), 0 <= min <= max, max >= 1."""
    try:
        low, high = (int(part) for part in value.split(":"))
    except ValueError:
        raise ValueError(f"autoscale must be MIN:MAX (two integers, e.g. 1:4), got {value!r}") from None
    if not 0 <= low <= high or high < 1:
        raise ValueError(f"autoscale must be MIN:MAX with 0 <= MIN <= MAX and MAX >= 1, got {value!r}")
    return low, high
