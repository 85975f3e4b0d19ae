"""Real headless Locust runs (`flexserve loadtest`, TextUser) against a tiny local HTTP server that
answers /v1/classify_text like the gateway and fails every Nth request with a 500: the exit code is
the SLA verdict's, so failed requests within --max-failure-ratio still pass (exit code 0; left to
Locust, any failed request would make it 1) and a broken SLA fails the run (exit code 1)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flexserve.cli import main

FAIL_EVERY = 10  # the server fails one request in 10 with a 500


class _Gateway(BaseHTTPRequestHandler):
    """POST /v1/classify_text answered as the gateway does (body and X-FlexServe-* headers)."""

    protocol_version = "HTTP/1.1"  # keep-alive, as Locust's FastHttpUser expects of the gateway
    disable_nagle_algorithm = True  # headers and body go out at once (no 40 ms delayed-ACK stalls)
    counter = 0
    lock = threading.Lock()

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        with _Gateway.lock:
            _Gateway.counter += 1
            fail = _Gateway.counter % FAIL_EVERY == 0
        if self.path != "/v1/classify_text":
            self._send(404, {"error": f"no route {self.path}"})
        elif fail:
            self._send(500, {"error": "injected failure"})
        else:
            answer = {
                "predictions": [{"label": "fresh", "class_id": 1, "probability": 0.93}],
                "variant": "rnn_distilled_fp16",
                "backend": "onnxruntime",
                "version": "000001",
                "latency_ms": 0.4,
                "budget_ms": request.get("latency_budget_ms"),
                "budget_met": True,
                "reason": "most accurate; predicted 0.3 ms fits the budget",
            }
            self._send(200, answer, {"X-FlexServe-Variant": answer["variant"], "X-FlexServe-Budget-Met": "true"})

    def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_):
        pass


@pytest.fixture
def gateway() -> Iterator[str]:
    _Gateway.counter = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def loadtest(host: str, out, *options: str) -> int:
    """`flexserve loadtest`: 2 users for 2 s, one relaxed SLA class, TextUser only."""
    argv = ["loadtest", "--host", host, "--users", "2", "--spawn-rate", "2", "--duration", "2s"]
    return main([*argv, "--sla", "relaxed=5000", "--out", str(out), *options, "TextUser"])


def verdict(out) -> dict:
    return json.loads((out / "sla.json").read_text())["classes"][0]


def test_failures_within_the_allowed_ratio_pass_with_exit_code_0(gateway, tmp_path, capfd):
    code = loadtest(gateway, tmp_path, "--max-failure-ratio", "0.25")
    output = capfd.readouterr().out
    v = verdict(tmp_path)
    assert v["failures"] > 0 and v["failures"] / v["requests"] <= 0.25, v  # some failed, within the ratio
    assert v["ok"] and "PASS relaxed" in output
    assert code == 0, output[-3000:]


def test_failures_over_the_ratio_fail_with_exit_code_1(gateway, tmp_path, capfd):
    code = loadtest(gateway, tmp_path)  # the default --max-failure-ratio, 1%
    output = capfd.readouterr().out
    v = verdict(tmp_path)
    assert v["requests"] >= FAIL_EVERY and not v["ok"], v
    assert "FAIL relaxed" in output and "SLA broken: failure ratio" in output
    assert code == 1, output[-3000:]
