"""The report's distillation target: PASS or FAIL from the paired interval over seeds, never one run."""

from types import SimpleNamespace

import pytest

from loadtest.report import distillation_gain, distillation_target


def section(kd: list[float], plain: list[float], higher_is_better: bool = True) -> SimpleNamespace:
    return SimpleNamespace(
        higher_is_better=higher_is_better,
        training={
            "distilled": {"test_metric_pytorch": kd[0]},
            "student_without_distillation": {"test_metric_pytorch": plain[0]},
            "seeds": {"seeds": list(range(len(kd))), "distilled": kd, "student_without_distillation": plain},
        },
    )


def test_a_consistent_gain_over_seeds_passes():
    name, measured, ok = distillation_target("cnn", section([0.920, 0.930, 0.925], [0.910, 0.915, 0.910]))
    assert ok and name == "cnn distillation gain >= 0.5 points, 95% interval above 0"
    assert measured.startswith("+1.33 [") and measured.endswith("points, 3 seeds")


def test_a_mean_gain_the_seeds_disagree_on_fails():
    gain = distillation_gain(section([0.920, 0.900, 0.930], [0.910, 0.910, 0.910]))
    assert gain.mean == pytest.approx(0.006667, abs=1e-6) and gain.low < 0  # +0.67 points, but the interval spans 0
    assert not distillation_target("cnn", section([0.920, 0.900, 0.930], [0.910, 0.910, 0.910]))[2]


def test_a_real_but_small_gain_fails_the_size_target():
    _, _, ok = distillation_target("rnn", section([0.912, 0.913, 0.912], [0.910, 0.911, 0.910]))
    assert not ok  # +0.2 points, interval above 0, below the 0.5 the target asks


def test_one_seed_concludes_nothing():
    one = section([0.95], [0.90])
    del one.training["seeds"]  # a manifest from before seeds: the single summaries are used
    _, measured, ok = distillation_target("rnn", one)
    assert not ok and measured == "1 seed: no interval (flexserve train --seeds 3)"


def test_for_rmse_the_gain_is_the_drop():
    rmse = section([0.930, 0.931, 0.929], [0.940, 0.942, 0.939], higher_is_better=False)
    assert distillation_gain(rmse).mean == pytest.approx(0.010333, abs=1e-6)
    name, measured, ok = distillation_target("recsys", rmse)
    assert ok and "RMSE" in name and measured.startswith("+0.0103 [")
