"""A real `bentoml serve` in a subprocess on the --quick repository (real data, real models),
called over HTTP with httpx and with `bentoml.SyncHTTPClient`; and the built bento."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from loadtest.servers import BENTOML, ServerProcess
from serving.policy import policy_from_manifest
from serving.repository import load_repository
from training import BUILT_IN_FAMILIES
from training.data import encode_texts, load_digits, load_fashion_mnist

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(profiled_quick_repo, tmp_path_factory):
    env = {
        **os.environ,
        "FLEXSERVE_REPO": str(profiled_quick_repo),
        "FLEXSERVE_WORKERS": "1",  # one process is enough here (two: test_serve.py's CLI test)
        "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml-serve")),
    }
    with ServerProcess(
        "serving.service:FlexServe", env=env, cwd=ROOT, log=tmp_path_factory.mktemp("logs") / "serve.log"
    ) as server:
        yield server.url


@pytest.fixture(scope="module")
def images():
    data = load_fashion_mnist()
    return data.test.inputs["IMAGES"][:4, 0].astype(float).tolist(), data.test.targets[:4]


@pytest.mark.slow
def test_classify_image_over_http_equals_onnx_runtime(server, images, profiled_quick_repo):
    pixels, _ = images
    response = httpx.post(f"{server}/v1/classify_image", json={"images": pixels, "latency_budget_ms": 10_000})
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["x-flexserve-variant"] == body["variant"]
    variant = next(v for v in load_repository(profiled_quick_repo).variants("cnn") if v.name == body["variant"])
    logits = ort.InferenceSession(str(variant.path)).run(None, {"IMAGES": np.array(pixels, np.float32)[:, None]})[0]
    assert [p["class_id"] for p in body["predictions"]] == logits.argmax(1).tolist()


@pytest.mark.slow
def test_handwritten_digits_are_answered_by_a_budget_routed_transferred_variant(server, profiled_quick_repo):
    """The digits family (transferred from the image family's CNN) through the family contract's
    endpoint, on real digits from its test split: the answer is the variant's own in ONNX Runtime."""
    data = load_digits()
    pixels = data.test.inputs["IMAGES"][:6, 0].astype(float).tolist()
    response = httpx.post(f"{server}/v1/predict/digits", json={"images": pixels, "latency_budget_ms": 10_000})
    assert response.status_code == 200, response.text
    body = response.json()
    repo = load_repository(profiled_quick_repo)
    variant = next(v for v in repo.variants("digits") if v.name == body["variant"])
    logits = ort.InferenceSession(str(variant.path)).run(None, {"IMAGES": np.array(pixels, np.float32)[:, None]})[0]
    assert [p["class_id"] for p in body["predictions"]] == logits.argmax(1).tolist()
    assert [p["label"] for p in body["predictions"]] == [str(c) for c in logits.argmax(1)]


@pytest.mark.slow
def test_one_request_answers_polarity_and_subjectivity_for_each_text(server, profiled_quick_repo):
    texts = ["A moving, superbly acted film.", "A young farmer leaves his village to find his missing brother."]
    response = httpx.post(f"{server}/v1/predict/text_multitask", json={"texts": texts, "latency_budget_ms": 10_000})
    assert response.status_code == 200, response.text
    body = response.json()
    repo = load_repository(profiled_quick_repo)
    variant = next(v for v in repo.variants("text_multitask") if v.name == body["variant"])
    tokens, lengths = encode_texts(texts, repo.artifact("text_multitask", "vocab"))
    longest = int(lengths.max())
    logits = ort.InferenceSession(str(variant.path)).run(None, {"TOKENS": tokens[:, :longest], "LENGTHS": lengths})[0]
    assert len(body["predictions"]) == 2
    for row, answer in enumerate(body["predictions"]):
        assert set(answer) == {"polarity", "subjectivity"}
        assert answer["polarity"]["label"] == ["rotten", "fresh"][int(logits[row, :2].argmax())]
        assert answer["subjectivity"]["label"] == ["plot", "review"][int(logits[row, 2:].argmax())]
    bad = httpx.post(f"{server}/v1/predict/text_multitask", json={"texts": "not a list"})
    # The generic endpoint's schema does not type a family's own fields: its adapter refuses them, 422.
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "texts", bad.text


@pytest.mark.slow
def test_a_tight_budget_gets_a_faster_variant_than_a_loose_one(server, images, profiled_quick_repo):
    pixels, _ = images
    repo = load_repository(profiled_quick_repo)
    policy = policy_from_manifest("cnn", repo.family("cnn"))
    best = policy.variant_names[0]  # what a loose budget gets: the fastest of the variants tied for best
    best_p95 = policy.profile_of(best).at(1, "p95")
    fastest_p95 = policy.profile_of(policy.fastest()).at(1, "p95")
    tight_budget = (best_p95 + fastest_p95) / 2 / 0.9  # fits the fastest, not the best
    loose = httpx.post(f"{server}/v1/classify_image", json={"images": pixels[:1], "latency_budget_ms": 10_000}).json()
    tight = httpx.post(
        f"{server}/v1/classify_image",
        json={"images": pixels[:1]},
        headers={"X-Latency-Budget-Ms": f"{tight_budget:.3f}"},
    ).json()
    assert loose["variant"] == best and best in policy.tied_for_best()
    assert tight["variant"] != loose["variant"]
    assert policy.profile_of(tight["variant"]).at(1) < policy.profile_of(loose["variant"]).at(1)


@pytest.mark.slow
def test_text_and_recommend_with_the_bentoml_client(server, profiled_quick_repo):
    import bentoml

    repo = load_repository(profiled_quick_repo)
    texts = ["A gorgeous, moving film with a great cast.", "Tedious, overlong and badly acted."]
    with bentoml.SyncHTTPClient(server) as client:
        answer = client.classify_text(texts=texts, latency_budget_ms=10_000)
        top = client.recommend(user_id=1, k=5)
    assert [p["label"] for p in answer["predictions"]] and answer["variant"].startswith("rnn_")
    variant = next(v for v in repo.variants("rnn") if v.name == answer["variant"])
    tokens, lengths = encode_texts(texts, repo.artifact("rnn", "vocab"))
    logits = ort.InferenceSession(str(variant.path)).run(None, {"TOKENS": tokens, "LENGTHS": lengths})[0]
    assert [p["class_id"] for p in answer["predictions"]] == logits.argmax(1).tolist()
    assert len(top["items"]) == 5 and all(item["title"] for item in top["items"])
    assert top["variant"].startswith("recsys_") and top["budget_ms"] > 0


def test_a_new_user_is_fitted_inside_the_request_by_bentoml_serve(server):
    rated = [{"item_id": 50, "rating": 5}, {"item_id": 181, "rating": 5}, {"item_id": 288, "rating": 1}]
    answer = httpx.post(f"{server}/v1/recommend", json={"ratings": rated, "k": 5}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["cold_start"] == {"fitted_from_ratings": 3} and body["variant"].startswith("recsys_")
    assert len(body["items"]) == 5 and not {i["item_id"] for i in body["items"]} & {50, 181, 288}

    def itself(rating: int) -> float:  # one movie, rated 5 or 1, scored on one pinned variant
        one = {"ratings": [{"item_id": 2, "rating": rating}], "candidate_item_ids": [2], "k": 1}
        reply = httpx.post(f"{server}/v1/recommend", json=one | {"variant": "recsys_full_int8"}, timeout=30)
        assert reply.status_code == 200, reply.text
        return reply.json()["items"][0]["predicted_rating"]

    assert itself(5) > itself(1)
    bad = httpx.post(f"{server}/v1/recommend", json={"ratings": [{"item_id": 50, "rating": 9}]}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "ratings[0].rating"


@pytest.mark.slow
def test_errors_metrics_and_variants_over_http(server):
    bad = httpx.post(f"{server}/v1/classify_image", json={"images": [[[1e6] * 28] * 28]})
    error = bad.json()["error"]  # the schema's refusal, in FlexServe's error body
    assert bad.status_code == 400 and error["field"].startswith("images[0]") and "255" in error["accepted"]
    assert httpx.post(f"{server}/v1/recommend", json={"user_id": 1, "k": 0}).status_code == 400
    impossible = httpx.post(
        f"{server}/v1/classify_text", json={"texts": ["fine"], "latency_budget_ms": 0.001, "strict": True}
    )
    assert impossible.status_code == 422 and impossible.json()["error"]["field"] == "latency_budget_ms"
    for path in ("/v1/classify_image", "/v1/classify_text", "/v1/recommend", "/v2/models/rnn/infer"):
        form = httpx.post(f"{server}{path}", content=b"{}", headers={"Content-Type": "multipart/form-data"})
        assert form.status_code == 415 and form.json()["error"]["field"] == "Content-Type", (path, form.text)
        broken = httpx.post(f"{server}{path}", content=b"{}", headers={"Content-Type": "json"})
        assert broken.status_code == 400, (path, broken.text)
    answered = httpx.post(f"{server}/v1/classify_text", json={"texts": ["fine"], "latency_budget_ms": 10_000})
    assert answered.status_code == 200  # so that this test's scrape holds an answered request too
    variants = httpx.get(f"{server}/v1/variants").json()
    assert set(variants["families"]) == set(BUILT_IN_FAMILIES)
    metrics = httpx.get(f"{server}/metrics").text
    assert 'flexserve_requests_total{family="cnn",outcome="client_error"' in metrics
    assert 'outcome="budget_met"' in metrics and "flexserve_request_latency_seconds_bucket" in metrics
    assert 'flexserve_requests_total{family="rnn",outcome="client_error"' in metrics
    # SLO attainment per budget class, and the policy's live state per variant (as /v1/variants)
    assert 'flexserve_slo_requests_total{budget_le_ms="+Inf",family="rnn",met="true"}' in metrics
    for variant in variants["families"]["rnn"]["variants"]:
        for gauge in ("flexserve_policy_predicted_latency_ms", "flexserve_policy_slowdown"):
            assert f'{gauge}{{family="rnn",variant="{variant["name"]}"}}' in metrics
    assert 'flexserve_policy_overhead_ms{family="recsys"}' in metrics


@pytest.mark.slow
def test_the_built_bento_carries_its_models_and_serves_every_family(profiled_quick_repo, cli, tmp_path):
    store = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml")}
    built = cli(["bento", "--repo", str(profiled_quick_repo)], env=store)
    assert built.returncode == 0, built.stderr[-3000:]
    tag = built.stdout.strip().splitlines()[-1]
    assert tag.startswith("flexserve:") and "flexserve-model-repository:" in built.stderr
    # Moved to another machine's store (`bentoml export` / `import`): the models travel inside it. A
    # plain tar (a .bento is xz-compressed: 12% smaller here, and 90 s to write instead of 2).
    exported = tmp_path / "flexserve.tar"
    moved = {**os.environ, "BENTOML_HOME": str(tmp_path / "elsewhere")}
    for args, env in ((["export", tag, str(exported)], store), (["import", str(exported)], moved)):
        done = subprocess.run([BENTOML, *args], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # Served from an empty directory with no FLEXSERVE_* variable at all.
    bare = {k: v for k, v in moved.items() if not k.startswith("FLEXSERVE_")}
    bare["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    empty = tmp_path / "empty"
    empty.mkdir()
    with ServerProcess(tag, env=bare, cwd=empty, log=tmp_path / "bento.log") as bento:
        text = httpx.post(f"{bento.url}/v1/classify_text", json={"texts": ["a fine film"], "latency_budget_ms": 50})
        image = httpx.post(f"{bento.url}/v1/classify_image", json={"images": [[[0.0] * 28] * 28]})
        user = httpx.post(f"{bento.url}/v1/recommend", json={"user_id": 1, "k": 3})
        families = httpx.get(f"{bento.url}/v1/variants").json()["families"]
    assert text.status_code == 200 and text.json()["variant"].startswith("rnn_")
    assert image.status_code == 200 and image.json()["variant"].startswith("cnn_")
    assert user.status_code == 200 and len(user.json()["items"]) == 3
    assert set(families) == set(BUILT_IN_FAMILIES)
    # The image `bentoml containerize` would build (Docker is not on this machine): its Dockerfile.
    dockerfile = tmp_path / "Dockerfile"
    script = f"import bentoml; bentoml.container.get_containerfile({tag!r}, output_path={str(dockerfile)!r})"
    made = subprocess.run([sys.executable, "-c", script], env=moved, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    text = dockerfile.read_text()
    assert "FROM python:3.11" in text and "BENTOML_CONTAINERIZED=true" in text and "EXPOSE 3000" in text


@pytest.mark.slow
def test_bench_gateway_prints_overhead_and_throughput(profiled_quick_repo, cli, tmp_path):
    result = cli(
        [
            "bench-gateway",
            "--repo",
            str(profiled_quick_repo),
            "--rounds",
            "5",
            "--seconds",
            "1",
            "--json",
            str(tmp_path / "g.json"),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "overhead / echo" in result.stdout and "requests/s at concurrency 8" in result.stdout
    rows = json.loads((tmp_path / "g.json").read_text())
    assert {r["family"] for r in rows["overhead"]} == set(BUILT_IN_FAMILIES)
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in rows["throughput"])


def test_bench_routing_compares_adaptive_with_pinned_variants(profiled_quick_repo, cli, tmp_path):
    out = tmp_path / "br"
    result = cli(
        [
            "bench-routing",
            "--repo",
            str(profiled_quick_repo),
            "--family",
            "cnn",
            "--loads",
            "5",
            "20",
            "--seconds",
            "1.5",
            "--repeats",
            "2",
            "--min-requests",
            "10",
            "--out",
            str(out),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[bench-routing] adaptive" in result.stderr and "bench-routing cnn: 100% 12/12 step" in result.stderr
    rows = json.loads((out / "rows.json").read_text())
    measured = {(r["routing"], r["load_rps"]): r for r in rows["measured"]}
    assert set(measured) == {(r, load) for r in ("adaptive", "full", "fastest") for load in (5.0, 20.0)}
    for r in measured.values():
        assert r["requests"] > 0 and r["errors"] == 0 and 0.0 <= r["slo_attainment"] <= 1.0
        assert len(r["slo_runs"]) == 2 and min(r["slo_runs"]) <= r["slo_attainment"] <= max(r["slo_runs"])
        assert sum(r["variant_mix"].values()) == pytest.approx(1.0, abs=0.01)
        assert r["server_cpu_ms_per_request"] > 0
    assert sum(r["client_cpu_cores"] for r in measured.values()) > 0  # the load generator's own CPU is measured
    # Pinned runs are served by their one variant only; the simulator ran the same loads.
    policy = policy_from_manifest("cnn", load_repository(profiled_quick_repo).family("cnn"))
    assert list(measured[("full", 5.0)]["variant_mix"]) == [policy.most_accurate]
    assert list(measured[("fastest", 20.0)]["variant_mix"]) == [policy.fastest(1)]
    assert {(r["policy"], r["load_rps"]) for r in rows["simulated"]} >= set(measured)
    report = (out / "report.md").read_text()
    assert "| adaptive | 20 |" in report and "adaptive holds >= 99% SLO" in report
    assert (out / "bench_routing.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_bentoml_example_client_runs(server):
    result = subprocess.run(
        [sys.executable, "-m", "serving.clients.bentoml_http", "--url", server, "--k", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("\n") == 4 and "variant: recsys_" in result.stdout


@pytest.mark.slow
def test_headless_load_test_passes_its_slas_and_writes_reports(server, cli, tmp_path):
    out = tmp_path / "lt"
    result = cli(
        [
            "loadtest",
            "--host",
            server,
            "--users",
            "3",
            "--spawn-rate",
            "3",
            "--duration",
            "15s",
            "--sla",
            "relaxed=5000:1",
            "--out",
            str(out),
        ]
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "sla.json").read_text())
    assert report["classes"][0]["ok"] and report["classes"][0]["requests"] > 10
    assert {r["name"].split(":")[0] for r in report["requests"]} == {"cnn", "rnn", "recsys"}  # the Locust users
    assert (out / "locust.html").stat().st_size > 1000 and "| relaxed |" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_an_impossible_sla_fails_the_run_and_says_which(server, cli, tmp_path):
    result = cli(
        [
            "loadtest",
            "--host",
            server,
            "--users",
            "2",
            "--duration",
            "5s",
            "--sla",
            "impossible=0.001",
            "--out",
            str(tmp_path / "lt"),
            "TextUser",
        ]
    )
    assert result.returncode != 0
    assert "FAIL impossible" in result.stdout and "SLA broken: p95" in result.stdout


@pytest.mark.slow
def test_sla_checks_run_on_the_master_in_distributed_mode(server, tmp_path):
    from serving.process import free_port

    locust = str(Path(sys.executable).parent / "locust")
    port = free_port()
    common = ["-f", str(ROOT / "loadtest" / "locustfile.py")]
    worker = subprocess.Popen(
        [locust, *common, "--worker", "--master-port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        master = subprocess.run(
            [
                locust,
                *common,
                "--master",
                "--master-bind-port",
                str(port),
                "--expect-workers",
                "1",
                "--host",
                server,
                "--headless",
                "-u",
                "2",
                "-r",
                "2",
                "-t",
                "6s",
                "--only-summary",
                "--sla",
                "relaxed=5000",
                "--sla-report",
                str(tmp_path / "sla.json"),
                "TextUser",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        worker.wait(timeout=30) if worker.poll() is None else None
    assert master.returncode == 0, master.stdout[-2000:] + master.stderr[-2000:]
    verdict = json.loads((tmp_path / "sla.json").read_text())["classes"][0]
    assert verdict["requests"] > 0 and verdict["budget_met"] > 0  # counted on the worker, checked on the master


def _two_workers_answer_and_their_metrics_add_up(url: str) -> None:
    """Each worker process answers with its own policy and says so; /metrics sums them."""
    from concurrent.futures import ThreadPoolExecutor

    def scrape() -> float:
        lines = httpx.get(f"{url}/metrics").text.splitlines()
        answered = [line for line in lines if line.startswith('flexserve_requests_total{family="rnn"')]
        return sum(float(line.rsplit(" ", 1)[1]) for line in answered if 'outcome="budget_m' in line)

    before = scrape()

    def post(_):  # a new connection each: the kernel hands connections to either worker
        return httpx.post(f"{url}/v1/classify_text", json={"texts": ["a fine film"]}, timeout=30)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(96)))
    assert all(a.status_code == 200 for a in answers)
    workers = {a.headers["X-FlexServe-Worker"] for a in answers}
    assert workers == {"1", "2"} and {str(a.json()["worker"]) for a in answers} == workers
    assert scrape() - before == len(answers)  # every worker's count, in one scrape
    state = httpx.get(f"{url}/v1/variants").json()
    assert (state["workers"], state["parallelism"]) == (2, 1) and state["worker"] in (1, 2)


@pytest.mark.slow
def test_flexserve_serve_starts_the_gateway_and_stops_on_sigterm(profiled_quick_repo, tmp_path):
    """What `make run` runs last: the CLI hands its process to `bentoml serve` on the given port, here
    with two worker processes."""
    import signal

    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml")}
    env.pop("FLEXSERVE_REPO", None)
    command = [sys.executable, "-m", "flexserve", "serve", "--repo", str(profiled_quick_repo), "--workers", "2"]
    # cwd not the checkout: the command finds the service itself
    with ServerProcess(command=command, env=env, cwd=tmp_path, log=tmp_path / "serve.log") as server:
        answer = httpx.post(f"{server.url}/v1/classify_text", json={"texts": ["a fine film"]}, timeout=30)
        assert answer.status_code == 200 and answer.json()["variant"].startswith("rnn_")
        _two_workers_answer_and_their_metrics_add_up(server.url)
        os.killpg(server.process.pid, signal.SIGTERM)
        assert server.process.wait(timeout=30) is not None
