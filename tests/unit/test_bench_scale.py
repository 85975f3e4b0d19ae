"""bench-scale's goodput search and its targets, on known step outcomes (no servers)."""

from __future__ import annotations

import pytest

from loadtest import bench_scale


def _server(capacity: float):
    """A fake step: >= 99% attainment up to `capacity` req/s, 90% past it."""
    seen = []

    def measure(rate: float) -> dict:
        seen.append(rate)
        return {"load_rps": rate, "slo_attainment": 1.0 if rate <= capacity else 0.9}

    return measure, seen


@pytest.mark.parametrize("capacity", [7.0, 21.0, 45.0, 100.0, 333.0, 1234.0])
def test_goodput_is_within_the_search_resolution_below_the_capacity(capacity):
    measure, seen = _server(capacity)
    found, steps = bench_scale.goodput(measure, log=lambda _: None)
    resolution = bench_scale.STEP ** (1 / 2**bench_scale.BISECTIONS)
    assert capacity / resolution <= found <= capacity
    assert len(steps) == len(seen) and seen[0] == bench_scale.START_RPS


def test_no_load_holds_or_every_load_holds():
    measure, seen = _server(1.0)
    assert bench_scale.goodput(measure, log=lambda _: None)[0] == 0.0
    assert min(seen) >= bench_scale.MIN_RPS
    measure, seen = _server(1e9)
    found, _ = bench_scale.goodput(measure, log=lambda _: None)
    assert found == max(seen) and found <= bench_scale.MAX_RPS


def test_markdown_reports_every_server_and_each_target_verdict():
    summary = {
        "servers": [
            {
                "family": "rnn",
                "server": "gateway x1",
                "goodput_rps": 300.0,
                "goodput_runs": [290.0, 310.0],
                "cpu_ms_per_request": 2.5,
            },
            {
                "family": "rnn",
                "server": "gateway x2",
                "goodput_rps": 520.0,
                "goodput_runs": [500.0, 540.0],
                "cpu_ms_per_request": 2.6,
            },
        ],
        "simulated": [
            {
                "family": "rnn",
                "server": "gateway x1",
                "measured_rps": 300.0,
                "simulated_rps": 330.0,
                "http_cpu_ms": 1.4,
                "cores": 1.8,
            }
        ],
        "targets": [{"target": "rnn: 2 gateway workers >= 1.6x the goodput of 1", "measured": "1.73x", "pass": True}],
    }
    text = bench_scale.markdown(summary)
    assert "| rnn | gateway x2 | 520 [500, 540] | 2.60 |" in text
    assert "| rnn gateway x1 | 300 | 330 | 1.40 ms | 1.8 |" in text and "| 1.73x | PASS |" in text
