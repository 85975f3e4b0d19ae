"""SLA classes and verdicts (pure logic)."""

import json

import pytest

from loadtest.sla import SlaClass, SlaSpec, check, load_spec, parse_classes


def test_parse_classes_with_and_without_weights():
    classes = parse_classes("interactive=5:0.3, standard=20:0.5,batch=200")
    assert classes == (SlaClass("interactive", 5, 0.3), SlaClass("standard", 20, 0.5), SlaClass("batch", 200, 1.0))


@pytest.mark.parametrize("text", ["fast", "a=x", "a=-1", "a=5:0", "=5", "a=5,a=6"])
def test_malformed_classes_say_what_is_expected(text):
    with pytest.raises(ValueError):
        parse_classes(text)


def test_policy_from_a_file_overrides_thresholds(tmp_path):
    path = tmp_path / "sla.json"
    path.write_text(json.dumps({"classes": [{"name": "x", "budget_ms": 7}], "percentile": 99, "min_budget_met": 0.5}))
    spec = load_spec(path, "ignored=1", 95, 0.01, 0.9)
    assert spec.classes == (SlaClass("x", 7, 1.0),) and spec.percentile == 99 and spec.min_budget_met == 0.5
    assert spec.max_failure_ratio == 0.01


def test_a_class_within_everything_passes():
    spec = SlaSpec((SlaClass("std", 20, 1),))
    assert check(spec, "std", requests=100, failures=0, percentile_ms=19.0, budget_met=95).ok


def test_each_broken_sla_says_by_how_much():
    spec = SlaSpec((SlaClass("std", 20, 1),), max_failure_ratio=0.01, min_budget_met=0.9)
    result = check(spec, "std", requests=100, failures=5, percentile_ms=30.0, budget_met=50)
    assert not result.ok and len(result.problems) == 3
    assert "over by 10.0 ms" in result.problems[0]
    assert "5.00% > 1.00%" in result.problems[1]
    assert "52.6% < 90.0%" in result.problems[2]  # 50 of the 95 answered
    assert check(spec, "std", 0, 0, 0.0, 0).problems == ["no requests were made"]
