"""The request codecs alone: raw JSON values -> model tensors, outputs -> answers (pure numpy)."""

import numpy as np
import pytest

from contract.manifest import FamilySection
from serving.errors import InvalidRequestError
from serving.preprocess import MAX_BATCH, MAX_K, MAX_TEXT_CHARS, Catalog, ImageCodec, TextCodec

LABELS = ["zero", "one", "two"]


def field_of(call) -> str:
    with pytest.raises(InvalidRequestError) as error:
        call()
    return error.value.field


# -- images -----------------------------------------------------------------------------------
IMAGE = ImageCodec(LABELS, 0.0, 255.0, 2, 3)
GOOD = [[0, 1, 2], [253, 254, 255]]


def test_images_become_a_float32_batch_with_a_channel_axis():
    feeds = IMAGE.encode([GOOD, GOOD])
    assert feeds["IMAGES"].shape == (2, 1, 2, 3) and feeds["IMAGES"].dtype == np.float32
    assert feeds["IMAGES"][1, 0, 1, 2] == 255.0


def test_image_codec_reads_its_shape_range_and_labels_from_the_manifest():
    section = FamilySection.from_json(
        {
            "task": "classification",
            "metric": "accuracy",
            "higher_is_better": True,
            "variants": [],
            "inputs": [{"name": "IMAGES", "dtype": "float32", "shape": [-1, 1, 28, 28]}],
            "outputs": [],
            "contract": {"labels": LABELS, "input_range": [0, 1]},
        }
    )
    codec = ImageCodec.from_manifest(section)
    assert (codec.height, codec.width, codec.high, codec.labels) == (28, 28, 1.0, LABELS)


@pytest.mark.parametrize(
    "images, field",
    [
        ("not a list", "images"),
        ([], "images"),
        ([GOOD] * (MAX_BATCH + 1), "images"),
        ([[[0, 1], [2, 3]]], "images[0]"),  # 2x2, not 2x3
        ([GOOD, [[0, 1, 2], [3, 4]]], "images[1]"),  # ragged
        ([[[0, 1, "x"], [3, 4, 5]]], "images[0]"),  # not a number
        ([[[0, 1, True], [3, 4, 5]]], "images"),  # a bool is not a pixel
        ([[[0, 1, float("nan")], [3, 4, 5]]], "images[0]"),
        ([GOOD, [[0, 1, 2], [3, 4, 256]]], "images[1]"),  # outside [0, 255]
    ],
)
def test_bad_images_name_the_offending_field(images, field):
    assert field_of(lambda: IMAGE.encode(images)) == field


def test_logits_decode_to_labels_and_probabilities():
    answer = IMAGE.decode(np.array([[0.0, 5.0, 0.0], [9.0, 0.0, 0.0]], dtype=np.float32))
    assert [a["label"] for a in answer] == ["one", "zero"] and [a["class_id"] for a in answer] == [1, 0]
    assert answer[0]["probability"] == pytest.approx(np.exp(5) / (np.exp(5) + 2), abs=1e-6)


# -- texts ------------------------------------------------------------------------------------
VOCAB = ["<pad>", "<unk>", "a", "good", "film", "."]
TEXT = TextCodec.from_manifest(
    FamilySection.from_json(
        {
            "task": "classification",
            "metric": "accuracy",
            "higher_is_better": True,
            "variants": [],
            "inputs": [],
            "outputs": [],
            "contract": {
                "labels": LABELS,
                "tokenizer": {"pattern": r"\w+|[^\w\s]", "lowercase": True, "max_tokens": 4, "pad_id": 0, "unk_id": 1},
            },
        }
    ),
    VOCAB,
)


def test_texts_are_tokenised_padded_to_the_longest_and_truncated_like_training():
    feeds = TEXT.encode(["A GOOD film.", "good", "a good good good good film"])
    assert feeds["TOKENS"].tolist() == [[2, 3, 4, 5], [3, 0, 0, 0], [2, 3, 3, 3]]
    assert feeds["LENGTHS"].tolist() == [4, 1, 4] and feeds["TOKENS"].dtype == np.int64


def test_unknown_words_map_to_the_unknown_id():
    assert TEXT.encode(["terrible film"])["TOKENS"].tolist() == [[1, 4]]


@pytest.mark.parametrize(
    "texts, field",
    [
        ("a film", "texts"),
        ([], "texts"),
        ([3], "texts[0]"),
        (["fine", "   "], "texts[1]"),
        (["x" * (MAX_TEXT_CHARS + 1)], "texts[0]"),
        (["ok"] * (MAX_BATCH + 1), "texts"),
    ],
)
def test_bad_texts_name_the_offending_field(texts, field):
    assert field_of(lambda: TEXT.encode(texts)) == field


# -- the catalogue ----------------------------------------------------------------------------
CATALOG = Catalog(
    {
        "genres": ["Drama", "Comedy"],
        "users": [{"user_id": 7, "features": [0, 1, 0, 3]}, {"user_id": 9, "features": [1, 2, 1, 4]}],
        "items": [
            {
                "item_id": 10 + i,
                "title": f"Movie {i}",
                "features": [i, 2],
                "genres": ["Drama"] if i % 2 else ["Comedy"],
                "title_tokens": [i + 2, 0],
            }
            for i in range(5)
        ],
    },
    (1.0, 5.0),
)


def test_a_user_scores_the_whole_catalogue_by_default():
    feeds, candidates, k = CATALOG.encode(9, 3, None)
    assert candidates.tolist() == [0, 1, 2, 3, 4] and k == 3
    assert feeds["USER_FEATURES"].tolist() == [[1, 2, 1, 4]] * 5
    assert feeds["ITEM_GENRES"].tolist()[:2] == [[0.0, 1.0], [1.0, 0.0]]
    assert feeds["ITEM_TITLE"].shape == (5, 2)


def test_candidates_and_top_k_decode_sorted_with_titles():
    feeds, candidates, k = CATALOG.encode(7, 2, [13, 11, 14])
    assert candidates.tolist() == [3, 1, 4] and feeds["ITEM_FEATURES"][:, 0].tolist() == [3, 1, 4]
    top = CATALOG.decode(np.array([3.0, 4.5, 2.0], dtype=np.float32), candidates, k)
    assert [t["item_id"] for t in top] == [11, 13] and top[0]["title"] == "Movie 1"
    assert top[0]["predicted_rating"] == 4.5


def test_scoring_needs_no_k():
    feeds, candidates = CATALOG.score(7, [10])
    assert candidates.tolist() == [0] and len(feeds["ITEM_TITLE"]) == 1


@pytest.mark.parametrize(
    "user, k, candidates, field",
    [
        (True, 3, None, "user_id"),
        ("7", 3, None, "user_id"),
        (8, 3, None, "user_id"),
        (7, 0, None, "k"),
        (7, 6, None, "k"),
        (7, 2, [10], "k"),
        (7, 1.5, None, "k"),
        (7, 1, [], "candidate_item_ids"),
        (7, 1, "10", "candidate_item_ids"),
        (7, 1, [10, 10], "candidate_item_ids"),
        (7, 1, [10, 99], "candidate_item_ids[1]"),
        (7, 1, [False], "candidate_item_ids[0]"),
    ],
)
def test_bad_recommend_fields_are_named(user, k, candidates, field):
    assert field_of(lambda: CATALOG.encode(user, k, candidates)) == field


def test_k_is_capped_even_when_there_are_more_candidates():
    items = [{"item_id": i, "title": "t", "features": [i, 0], "genres": [], "title_tokens": [0]} for i in range(150)]
    big = Catalog({"genres": ["Drama"], "users": [{"user_id": 1, "features": [0, 0, 0, 0]}], "items": items}, (1, 5))
    assert big.encode(1, MAX_K, None)[2] == MAX_K
    with pytest.raises(InvalidRequestError) as error:
        big.encode(1, MAX_K + 1, None)
    assert error.value.field == "k" and f"1 to {MAX_K}" in error.value.accepted
