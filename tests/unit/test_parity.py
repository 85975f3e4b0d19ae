"""What the export's parity check accepts, per precision and problem (pure numpy)."""

import numpy as np

from training.export import compare_outputs

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(0, 3, (256, 10)).astype(np.float32)


def flip(logits: np.ndarray, rows: int) -> np.ndarray:
    """The same logits with the top class of the first `rows` rows moved to another class."""
    out = logits.copy()
    for r in range(rows):
        top = int(out[r].argmax())
        out[r, (top + 1) % out.shape[1]] = out[r, top] + 5.0
    return out


def test_an_int8_classifier_may_flip_a_few_borderline_rows():
    report, problems = compare_outputs(LOGITS, flip(LOGITS, 3), "classification", "int8")
    assert report["max_abs_diff"] > 0.5 and report["top1_agreement"] < 1.0
    assert problems == []  # 3 rows in 256 flipped: within the agreement bound, however far each moved


def test_an_int8_classifier_that_flips_many_rows_fails():
    _, problems = compare_outputs(LOGITS, flip(LOGITS, 40), "classification", "int8")
    assert any("top-1 agreement" in p for p in problems)


def test_fp32_and_fp16_classifiers_keep_a_per_row_bound():
    _, problems = compare_outputs(LOGITS, flip(LOGITS, 1), "classification", "fp16")
    assert any(p.startswith("max |diff|") for p in problems)
    assert compare_outputs(LOGITS, LOGITS + 1e-7, "classification", "fp32")[1] == []


def test_int8_ratings_keep_a_per_row_bound_of_half_a_star():
    ratings = RNG.uniform(1, 5, 256).astype(np.float32)
    off = ratings.copy()
    off[7] += 0.6
    assert any(p.startswith("max |diff| 0.6") for p in compare_outputs(ratings, off, "regression", "int8")[1])
    off[7] = ratings[7] + 0.4
    assert compare_outputs(ratings, off, "regression", "int8")[1] == []
