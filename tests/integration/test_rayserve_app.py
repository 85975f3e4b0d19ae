"""The Ray Serve application as `flexserve serve --engine ray` builds it (no Ray started): replicas or
autoscaling, the limits from the profiles, the router, the replicas' environment."""

from __future__ import annotations

import pytest

from serving.rayserve import STATS_PERIOD_S, app, deployment, replica_limits


def _config(application):
    bound = application._bound_deployment
    return bound._deployment_config, bound.init_args[0]


def test_autoscaling_on_ongoing_requests_with_limits_from_the_profiles(profiled_repo):
    config, env = _config(deployment(repo=profiled_repo, autoscale=(1, 3), parallelism=2))
    limits = replica_limits(profiled_repo, parallelism=2)
    scaling = config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (1, 3)
    assert scaling.target_ongoing_requests == limits.target_ongoing_requests == 4
    assert config.max_ongoing_requests == limits.max_ongoing_requests
    assert config.request_router_config.request_router_class.endswith("LeastPredictedLatencyRouter")
    assert config.request_router_config.request_routing_stats_period_s == STATS_PERIOD_S
    # each replica: the repository asked for, up to 3 workers (replicas) of 2 model threads
    assert env["FLEXSERVE_REPO"] == str(profiled_repo.resolve())
    assert (env["FLEXSERVE_WORKERS"], env["FLEXSERVE_PARALLELISM"]) == ("3", "2")


def test_fixed_replicas_and_rays_own_router(profiled_repo, monkeypatch):
    monkeypatch.setenv("FLEXSERVE_MODEL_TAG", "some-tag:latest")  # --repo wins over a tag in the environment
    config, env = _config(app({"repo": str(profiled_repo), "replicas": "3", "router": "p2c"}))
    assert config.num_replicas == 3 and config.autoscaling_config is None
    router = config.request_router_config
    assert router.request_router_class.endswith("PowerOfTwoChoicesRequestRouter")
    assert router.request_routing_stats_period_s != STATS_PERIOD_S  # Ray's period: nobody reads the reports
    assert "FLEXSERVE_MODEL_TAG" not in env and env["FLEXSERVE_WORKERS"] == "3"


def test_a_bad_router_or_autoscale_names_what_is_accepted(profiled_repo):
    with pytest.raises(ValueError, match="router must be one of least-latency, p2c"):
        deployment(repo=profiled_repo, replicas=1, router="round-robin")
    with pytest.raises(ValueError, match="autoscale must be MIN:MAX"):
        app({"repo": str(profiled_repo), "autoscale": "3:1"})
