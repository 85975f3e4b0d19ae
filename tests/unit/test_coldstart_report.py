"""The cold-start bench's verdict and table from per-seed RMSEs (pure logic; the bench itself trains)."""

from __future__ import annotations

import pytest

from contract.coldstart import KS
from loadtest.bench_coldstart import BOUNDS, METHODS, ORDERS, accuracy_table


def rows(gain: float, bound_gain: float) -> dict:
    """Three seeds, every k alike: (a) 1.03, (b) 1.04 + seed noise, (c) (b) + gain, the bound (b) + bound_gain."""
    cells = {}
    for k in KS:
        b = [1.04, 1.05, 1.03]
        cells[str(k)] = {
            "item_mean": [1.03, 1.03, 1.03],
            "ordinary": b,
            "meta_learned": [v + gain for v in b],
            "oracle_penalty": [v - 0.001 for v in b],
            "oracle_meta": [v + bound_gain for v in b],
        }
    return {order: cells for order in ORDERS}


def test_the_target_holds_only_when_the_whole_interval_is_003_below_the_ordinary_fit():
    _, met = accuracy_table(rows(-0.04, -0.05))
    assert met["met"] and met["c_minus_b"] == pytest.approx(-0.04)
    _, short = accuracy_table(rows(-0.025, -0.03))
    assert not short["met"] and short["c_minus_b"] == pytest.approx(-0.025)
    assert short["bound_minus_b"] == pytest.approx([-0.03, -0.03, -0.03])


def test_the_table_shows_every_method_and_both_bounds_against_the_ordinary_fit():
    table, _ = accuracy_table(rows(-0.025, -0.03))
    assert all(label in table for label in [*METHODS.values(), *BOUNDS.values()])
    k5 = next(line for line in table.splitlines() if line.startswith("| 5 |"))
    assert "-0.0250 [-0.0250, -0.0250]" in k5 and "(-0.0300)" in k5 and "(-0.0010)" in k5
