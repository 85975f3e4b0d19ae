"""FlexServe on a real local Ray Serve: `flexserve serve --engine ray` (HTTP through Ray's proxy, gRPC
through its gRPC proxy, the least-predicted-latency router) and `serve run serving.rayserve:app`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest

from serving.process import free_port, interruptible, stop_group
from serving.proto import flexserve_pb2 as pb
from serving.proto.flexserve_pb2_grpc import FlexServeStub
from serving.rayserve import replica_limits

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
APPLICATION = (("application", "flexserve"),)


def _wait_ready(process: subprocess.Popen, url: str, log: Path, replicas: int = 2, timeout_s: float = 180) -> None:
    """Until every replica has answered (the first one up makes the proxy answer)."""
    deadline, seen = time.monotonic() + timeout_s, set()
    while len(seen) < replicas and time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-4000:]
        try:
            seen.add(httpx.get(f"{url}/v1/variants", timeout=2).json()["worker"])
        except (httpx.HTTPError, KeyError, ValueError):
            time.sleep(0.5)
    if len(seen) < replicas:
        stop_group(process)
        raise AssertionError(f"Ray Serve was not ready within {timeout_s:.0f} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def ray_server(profiled_quick_repo, tmp_path_factory):
    port, grpc_port = free_port(), free_port()
    env = {**os.environ, "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml-ray"))}
    env.pop("FLEXSERVE_REPO", None)
    env.pop("RAY_ADDRESS", None)  # a Ray of its own, never someone else's cluster
    command = [sys.executable, "-m", "flexserve", "serve", "--engine", "ray", "--replicas", "2"]
    command += ["--repo", str(profiled_quick_repo), "--port", str(port), "--grpc-port", str(grpc_port)]
    log = tmp_path_factory.mktemp("ray-logs") / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    _wait_ready(process, url, log)
    try:
        yield url, f"127.0.0.1:{grpc_port}"
    finally:
        process.send_signal(signal.SIGTERM)  # the CLI stops its local Ray (and Serve in it)
        try:
            assert process.wait(timeout=60) == 0
        finally:
            stop_group(process)


def test_the_http_api_through_rays_proxy_is_the_gateways(ray_server):
    url, _ = ray_server
    answer = httpx.post(f"{url}/v1/classify_text", json={"texts": ["a fine film"], "latency_budget_ms": 500})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["variant"].startswith("rnn_") and body["predictions"][0]["label"] in ("fresh", "rotten")
    assert answer.headers["X-FlexServe-Worker"] == str(body["worker"]) and body["worker"] in (1, 2)
    bad = httpx.post(f"{url}/v1/classify_text", json={"texts": [], "latency_budget": 5})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "texts"  # FlexServe's error body
    assert httpx.post(f"{url}/v1/recommend", json={"user_id": 1, "k": 3}).json()["items"]
    v2 = httpx.post(
        f"{url}/v2/models/rnn/infer",
        json={"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["ok"]}]},
    )
    assert v2.status_code == 200 and v2.json()["parameters"]["worker"] in (1, 2)
    assert httpx.get(f"{url}/docs.json").json()["openapi"].startswith("3.1")
    state = httpx.get(f"{url}/v1/variants").json()
    assert (state["workers"], state["parallelism"]) == (2, 1)


def test_both_replicas_answer_and_each_holds_its_own_policy(ray_server):
    url, _ = ray_server

    def post(_):
        return httpx.post(f"{url}/v1/classify_text", json={"texts": ["a fine film"]}, timeout=30)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(64)))
    assert all(a.status_code == 200 for a in answers)
    assert {a.json()["worker"] for a in answers} == {1, 2}


def test_grpc_through_rays_grpc_proxy(ray_server):
    url, target = ray_server
    with grpc.insecure_channel(target) as channel:
        stub = FlexServeStub(channel)
        text = stub.ClassifyText(
            pb.TextRequest(texts=["a fine film", "a dull one"], routing=pb.Routing(latency_budget_ms=500)),
            metadata=APPLICATION,
            timeout=30,
        )
        assert len(text.predictions) == 2 and text.routed.variant.startswith("rnn_") and text.routed.worker in (1, 2)
        # the same variant over HTTP gives the same probabilities
        pinned = {"texts": ["a fine film", "a dull one"], "variant": text.routed.variant}
        http = httpx.post(f"{url}/v1/classify_text", json=pinned).json()
        assert [p.probability for p in text.predictions] == pytest.approx(
            [p["probability"] for p in http["predictions"]], abs=1e-6
        )
        image = stub.ClassifyImage(pb.ImageRequest(pixels=[0.0] * 784, count=1), metadata=APPLICATION, timeout=30)
        assert image.routed.variant.startswith("cnn_") and len(image.predictions) == 1
        movies = stub.Recommend(pb.RecommendRequest(user_id=1, k=3), metadata=APPLICATION, timeout=30)
        assert len(movies.items) == 3 and movies.routed.variant.startswith("recsys_")
        for call, request, code, field in [
            (stub.ClassifyText, pb.TextRequest(texts=[]), grpc.StatusCode.INVALID_ARGUMENT, "texts"),
            (
                stub.ClassifyImage,
                pb.ImageRequest(pixels=[300.0] * 784, count=1),
                grpc.StatusCode.INVALID_ARGUMENT,
                "images[0]",
            ),
            (
                stub.ClassifyImage,
                pb.ImageRequest(pixels=[0.0] * 10, count=1),
                grpc.StatusCode.INVALID_ARGUMENT,
                "pixels",
            ),
            (stub.Recommend, pb.RecommendRequest(user_id=10**9), grpc.StatusCode.FAILED_PRECONDITION, "user_id"),
        ]:
            with pytest.raises(grpc.RpcError) as refused:
                call(request, metadata=APPLICATION, timeout=30)
            assert refused.value.code() == code and refused.value.details().startswith(field), refused.value.details()
    # the server kept serving, and the example client works
    example = subprocess.run(
        [sys.executable, "-m", "serving.clients.ray_grpc", target, "a fine film"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert example.returncode == 0 and "variant rnn_" in example.stdout, example.stderr


def test_max_ongoing_requests_comes_from_the_profiles(profiled_quick_repo):
    limits = replica_limits(profiled_quick_repo, parallelism=2)
    assert limits.target_ongoing_requests == 4
    assert 2 <= limits.max_ongoing_requests <= 1000 and limits.max_ongoing_requests % 2 == 0
    tighter = replica_limits(profiled_quick_repo, parallelism=2, budget_ms=20)
    assert tighter.max_ongoing_requests < limits.max_ongoing_requests


def test_serve_run_with_a_serve_config_file(profiled_quick_repo, tmp_path):
    """Ray's own CLI: `serve run` of a Serve config whose application is `serving.rayserve:app`."""
    port = free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(
        f"http_options: {{host: 127.0.0.1, port: {port}}}\n"
        "applications:\n"
        "  - name: flexserve\n"
        "    route_prefix: /\n"
        "    import_path: serving.rayserve:app\n"
        f"    args: {{repo: '{profiled_quick_repo}', replicas: 1, router: p2c}}\n"
    )
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml")}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "serve-run.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "serve"), "run", str(config)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=interruptible,  # SIGINT stops it even when the tests run in a background job
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, url, log, replicas=1)
        answer = httpx.post(f"{url}/v1/classify_image", json={"images": [[[0] * 28] * 28]})
        assert answer.status_code == 200 and answer.json()["variant"].startswith("cnn_"), answer.text
        assert httpx.get(f"{url}/v1/variants").json()["workers"] == 1
    finally:
        process.send_signal(signal.SIGINT)  # as Ctrl-C: `serve run` shuts the application and its Ray down
        try:
            process.wait(timeout=60)
        finally:
            stop_group(process)
