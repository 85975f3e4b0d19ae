"""The Ray Serve engine's pure parts: the least-predicted-latency ranking and the --autoscale option."""

from __future__ import annotations

import pytest

from serving.rayserve import parse_autoscale, predicted_ms

FAST = {"parallelism": 2, "idle_ms": {"rnn": 1.0, "cnn": 4.0}}
SLOW = {"parallelism": 2, "idle_ms": {"rnn": 3.0, "cnn": 4.0}}  # its policy learned a 3x slowdown on rnn


def test_the_replica_predicted_fastest_for_the_family_wins():
    assert predicted_ms(FAST, 0, "rnn") < predicted_ms(SLOW, 0, "rnn")
    # ... until its queue costs more than the other's slower service
    assert predicted_ms(FAST, 6, "rnn") > predicted_ms(SLOW, 0, "rnn")
    assert predicted_ms(FAST, 6, "rnn") == pytest.approx(1.0 * (1 + 6 / 2))
    # the same cnn speed: the shorter queue wins
    assert predicted_ms(FAST, 1, "cnn") > predicted_ms(SLOW, 0, "cnn")


def test_an_unknown_family_or_a_replica_without_a_report():
    assert predicted_ms(FAST, 0, None) == pytest.approx(2.5)  # the mean over families
    assert predicted_ms(FAST, 0, "recsys") == pytest.approx(2.5)
    assert predicted_ms({}, 3, "rnn", default_ms=2.0) == pytest.approx(2.0 * 4)  # one thread assumed


def test_autoscale_bounds():
    assert parse_autoscale("1:4") == (1, 4) and parse_autoscale("0:1") == (0, 1)
    for bad in ("4", "4:1", "a:b", "0:0", "-1:2"):
        with pytest.raises(ValueError, match="autoscale must be MIN:MAX"):
            parse_autoscale(bad)
