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


def transfer_section(test: dict, val: dict) -> SimpleNamespace:
    return SimpleNamespace(training={"transfer": {"study": {"test": test, "val": val}}})


def test_transfer_targets_compare_the_better_transferred_path_on_validation_with_scratch():
    from loadtest.report import transfer_targets

    test = {
        "scratch": {"10": [0.80, 0.82, 0.81], "all": [0.990, 0.992, 0.991]},
        "frozen": {"10": [0.95, 0.96, 0.95], "all": [0.90, 0.91, 0.90]},  # the best test scores at 10 ...
        "finetune": {"10": [0.92, 0.93, 0.925], "all": [0.989, 0.990, 0.988]},
    }
    val = {
        "scratch": {"10": [0.8] * 3, "all": [0.99] * 3},
        "frozen": {"10": [0.85] * 3, "all": [0.90] * 3},
        "finetune": {"10": [0.90] * 3, "all": [0.99] * 3},  # ... but finetune is better on validation
    }
    ten, every = transfer_targets("digits", transfer_section(test, val))
    assert ten[0] == "digits transfer at 10 labels/class >= +10 points vs scratch, 95% interval above 0"
    assert ten[1].startswith("finetune +11.50 [") and ten[2]
    assert every[0] == "digits transfer at all labels/class >= -0.5 points vs scratch"
    assert every[1].startswith("finetune -0.20 [") and every[2]  # 0.2 points lost: within the 0.5 allowed
    test["finetune"]["10"] = [0.90, 0.93, 0.89]  # +9.67 on average: short of 10
    assert not transfer_targets("digits", transfer_section(test, val))[0][2]


def compared() -> dict:
    """A multi-task family's `training.multitask` from a build with the single-task comparison."""
    return {
        "multitask": {
            "polarity_accuracy": 0.780,
            "subjectivity_balanced_accuracy": 0.950,
            "params": 110,
            "latency_ms": 4.0,
        },
        "single_task": {
            "polarity": {"metric": "accuracy", "test_metric": 0.785, "params": 100, "latency_ms": 4.0},
            "subjectivity": {"metric": "balanced_accuracy", "test_metric": 0.965, "params": 100, "latency_ms": 4.0},
        },
        "latency": "p50 of one typical request",
    }


def test_multitask_targets_hold_each_head_to_its_single_task_model_and_the_costs_to_a_share():
    from loadtest.report import multitask_targets

    rows = multitask_targets("text_multitask", SimpleNamespace(training={"multitask": compared()}))
    assert [(name.split(" within")[0], ok) for name, _, ok in rows[:2]] == [
        ("text_multitask polarity accuracy", True),  # -0.5 points
        ("text_multitask subjectivity balanced_accuracy", False),  # -1.5 points
    ]
    assert rows[2][1].startswith("0.55x") and rows[2][2]  # 110 of 200 parameters
    assert rows[3][1].startswith("0.50x") and rows[3][2]


def test_a_multitask_family_built_without_the_comparison_says_how_to_measure_it():
    from loadtest.report import VERDICTS, multitask_targets

    info = {"loss_weights": {}, "multitask": {"polarity_accuracy": 0.78, "params": 110}}
    [(name, measured, ok)] = multitask_targets("text_multitask", SimpleNamespace(training={"multitask": info}))
    assert name.startswith("text_multitask within 1 point of single-task models")
    assert ok is None and VERDICTS[ok] == "NOT MEASURED"
    assert "flexserve train --family text_multitask --compare-single-task" in measured


def test_the_multitask_table_sets_each_head_beside_its_single_task_model_and_is_empty_without_them():
    from loadtest.report import multitask_table

    def manifest(info: dict) -> SimpleNamespace:
        return SimpleNamespace(families={"text_multitask": SimpleNamespace(training={"multitask": info})})

    table = multitask_table(manifest(compared()))
    assert "| multi-task | 0.7800 | 0.9500 | 110 | 4.000 |" in table
    assert "| single-task polarity | 0.7850 | - | 100 | 4.000 |" in table
    assert "| single-task subjectivity | - | 0.9650 | 100 | 4.000 |" in table
    assert "| both single-task | | | 200 | 8.000 |" in table
    assert multitask_table(manifest({"loss_weights": {}, "multitask": {"params": 110}})) == ""
