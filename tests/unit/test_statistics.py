"""contract/statistics.py on inputs whose answers are known (published t tables, hand-worked intervals)."""

import math

import numpy as np
import pytest

from contract.statistics import (
    binomial_se,
    mean_interval,
    paired_difference,
    rmse_se,
    t_cdf,
    t_quantile,
)


@pytest.mark.parametrize(
    ("df", "expected"),
    [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262), (30, 2.042), (120, 1.980)],
)
def test_t_quantiles_match_the_published_two_sided_95_percent_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)


def test_t_distribution_is_symmetric_and_tends_to_the_normal():
    assert t_cdf(0.0, 5) == pytest.approx(0.5)
    assert t_cdf(-1.3, 7) == pytest.approx(1 - t_cdf(1.3, 7))
    assert t_quantile(0.025, 4) == pytest.approx(-2.776, abs=5e-4)
    assert t_quantile(0.975, 100_000) == pytest.approx(1.95996, abs=1e-3)
    assert t_quantile(0.95, 10) == pytest.approx(1.812, abs=5e-4)  # a one-sided 95% value


def test_binomial_standard_error():
    assert binomial_se(0.5, 100) == pytest.approx(0.05)
    assert binomial_se(0.775, 1280) == pytest.approx(0.01167, abs=1e-5)  # the text test split's ~1.2 points
    with pytest.raises(ValueError, match="n >= 1"):
        binomial_se(0.5, 0)


def test_rmse_standard_error_by_the_delta_method():
    squared = np.array([1.0, 4.0, 9.0, 16.0])  # mean 7.5, sd (ddof=1) 6.5574
    expected = 6.557439 / math.sqrt(4) / (2 * math.sqrt(7.5))
    assert rmse_se(squared) == pytest.approx(expected, rel=1e-6)
    assert rmse_se(np.full(10, 0.81)) == pytest.approx(0.0, abs=1e-12)  # every error the same: no sampling spread


def test_rmse_standard_error_agrees_with_the_spread_over_resampled_test_sets():
    rng = np.random.default_rng(0)
    squared = rng.gamma(0.6, 1.5, size=4000)
    resampled = [math.sqrt(rng.choice(squared, squared.size).mean()) for _ in range(400)]
    assert rmse_se(squared) == pytest.approx(np.std(resampled), rel=0.15)


def test_mean_interval_by_hand():
    interval = mean_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, half-width 4.303 / sqrt(3)
    assert (interval.mean, interval.sd, interval.n) == (2.0, 1.0, 3)
    assert interval.low == pytest.approx(2 - 2.4843, abs=1e-3)
    assert interval.high == pytest.approx(2 + 2.4843, abs=1e-3)
    assert not interval.excludes(0.0) and interval.excludes(5.0)


def test_one_run_concludes_nothing():
    interval = mean_interval([0.91])
    assert math.isinf(interval.low) and math.isinf(interval.high) and not interval.excludes(0.0)


def test_a_paired_difference_uses_the_pairs_not_the_two_spreads():
    kd = [0.920, 0.930, 0.925]  # three seeds: the seeds move both arms together
    plain = [0.910, 0.915, 0.910]
    diff = paired_difference(kd, plain)  # differences 0.010, 0.015, 0.015
    assert diff.mean == pytest.approx(0.013333, abs=1e-6)
    assert diff.low == pytest.approx(0.013333 - 4.303 * 0.0028868 / math.sqrt(3), abs=1e-4)
    assert diff.above(0.0) and diff.excludes(0.0)
    # Unpaired, the same numbers overlap: the seed-to-seed spread hides the gain.
    assert mean_interval(kd).low < mean_interval(plain).high
    with pytest.raises(ValueError, match="pairs"):
        paired_difference([1.0, 2.0], [1.0])


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="finite"):
        mean_interval([])
    with pytest.raises(ValueError, match="level"):
        mean_interval([1.0, 2.0], level=1.5)
