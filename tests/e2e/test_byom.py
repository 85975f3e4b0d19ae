"""Bring your own model, end to end: families imported with `flexserve import` in subprocesses (the
`byom_repo` fixture), served by a real `bentoml serve` over HTTP; a variant that fails, counted in
/metrics; and new repository versions going live under load, with no failed request and every
answer from a variant of the version that routed it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest

from contract.layout import new_version, version_of
from contract.manifest import read_manifest, write_manifest
from loadtest.servers import ServerProcess

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def repo(byom_repo, tmp_path_factory) -> Path:
    """A copy: the tests here write new versions into it."""
    copy = tmp_path_factory.mktemp("swap") / "model_repository"
    shutil.copytree(byom_repo, copy, symlinks=True)
    return copy


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    env = {
        **os.environ,
        "FLEXSERVE_REPO": str(repo),
        "FLEXSERVE_WATCH_S": "0.2",
        "FLEXSERVE_WORKERS": "1",  # one process is enough here (two: test_serve.py's CLI test)
        "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml-serve")),
    }
    log = tmp_path_factory.mktemp("logs") / "serve.log"
    with ServerProcess("serving.service:FlexServe", env=env, cwd=ROOT, log=log) as process:
        yield process.url


def v2(first: float = 0.5, rows: int = 2, **parameters) -> dict:
    features = np.random.default_rng(3).normal(size=(rows, 20)).astype(np.float32)
    features[:, 0] = first
    tensor = {"name": "FEATURES", "shape": [rows, 20], "datatype": "FP32", "data": features.ravel().tolist()}
    return {"inputs": [tensor], "parameters": parameters}


def test_an_imported_family_is_served_over_http_by_budget(server):
    meta = httpx.get(f"{server}/v2/models/tabular").json()
    assert meta["inputs"][0]["name"] == "FEATURES" and len(meta["parameters"]["variants"]) == 6
    loose = httpx.post(f"{server}/v2/models/tabular/infer", json=v2(latency_budget_ms=1000))
    tight = httpx.post(f"{server}/v2/models/tabular/infer", json=v2(latency_budget_ms=0.01))
    assert loose.status_code == 200 and loose.headers["x-flexserve-variant"].startswith("tabular_big")
    assert tight.json()["parameters"]["variant"].startswith("tabular_small")
    friendly = httpx.post(f"{server}/v1/predict/tabular", json={"inputs": {"FEATURES": [[0.0] * 20]}})
    assert friendly.status_code == 200 and friendly.json()["predictions"][0]["label"] in ("red", "green", "blue")
    bad = httpx.post(f"{server}/v2/models/tabular/infer", json={"inputs": [{"name": "FEATURES"}]})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "inputs[0].shape"


def test_a_failing_variant_is_benched_logged_and_counted(server):
    trapped = httpx.post(f"{server}/v2/models/trap/infer", json=v2(first=-500.0, latency_budget_ms=0.01))
    assert trapped.status_code == 200, trapped.text
    assert trapped.json()["parameters"]["variant"].startswith("trap_big")
    assert "benched" in trapped.json()["parameters"]["reason"]
    metrics = httpx.get(f"{server}/metrics").text
    assert 'flexserve_variant_failures_total{family="trap",variant="trap_small_fp32"}' in metrics
    refused = httpx.post(f"{server}/v2/models/trap/infer", json=v2(first=-5000.0))
    assert refused.status_code == 422  # the request is the likely cause: nothing to retry, nothing benched
    assert "every trap variant that could serve it failed" in refused.json()["error"]["problem"]


def test_a_reload_on_loopback_is_a_no_op_while_the_live_version_is_served(server):
    answer = httpx.post(f"{server}/v1/admin/reload")
    assert answer.status_code == 200 and answer.json()["reloaded"] is False


class Load:
    """Closed-loop clients (two threads) sending an imported and a built-in family's requests."""

    def __init__(self, url: str):
        self.url, self.answers, self.failures = url, [], []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(2)]

    def _run(self, i: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                if i == 0:
                    response = client.post("/v2/models/tabular/infer", json=v2(latency_budget_ms=1000))
                else:
                    response = client.post(
                        "/v1/classify_text", json={"texts": ["a fine film"], "latency_budget_ms": 500}
                    )
                if response.status_code != 200:
                    self.failures.append((response.status_code, response.text[:300]))
                    continue
                body = response.json()
                meta = body.get("parameters", body)
                self.answers.append((body.get("model_version", body.get("version")), meta["variant"]))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def _live_version(server: str) -> str:
    return httpx.get(f"{server}/v1/variants").json()["version"]


def _wait_for(server: str, version: str) -> None:
    deadline = time.monotonic() + 60
    while _live_version(server) != version:
        assert time.monotonic() < deadline, f"the gateway did not load version {version}"
        time.sleep(0.1)


def test_new_versions_go_live_under_load_without_a_failed_request(server, repo):
    variants_of = {version_of(repo): {v.name for f in read_manifest(repo).families.values() for v in f.variants}}

    def went_live() -> None:
        variants_of[version_of(repo)] = {v.name for f in read_manifest(repo).families.values() for v in f.variants}
        _wait_for(server, version_of(repo))

    with Load(server) as load:
        time.sleep(1.0)
        chosen = next(variant for _, variant in load.answers if variant.startswith("tabular"))
        with new_version(repo) as stage:  # the variant the loose budget was getting goes away
            manifest = read_manifest(stage)
            section = manifest.families["tabular"]
            kept = tuple(v for v in section.variants if v.name != chosen)
            write_manifest(stage, manifest.with_family("tabular", replace(section, variants=kept)))
        went_live()
        without = len(load.answers)
        quick = ["--min-runs", "5", "--seconds", "0.01"]
        profiled = subprocess.run(  # a real writer: new profiles for one family
            [sys.executable, "-m", "flexserve", "profile", "--repo", str(repo), "--family", "rnn", *quick],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert profiled.returncode == 0, profiled.stderr[-2000:]
        went_live()
        time.sleep(1.0)
    assert load.failures == []
    assert {version for version, _ in load.answers} == set(variants_of)  # all three versions answered
    assert all(variant in variants_of[version] for version, variant in load.answers), json.dumps(variants_of)
    assert chosen not in {variant for _, variant in load.answers[without:]}
