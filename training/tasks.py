"""What differs between the families, in one place: the architectures of the full
model and the student, the training settings, how a batch is collated, the loss and the
test metric, the ONNX signature, and the serving contract written to the manifest.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from contract.manifest import TensorSpec
from contract.statistics import binomial_se, rmse_se
from models.cnn import CNNConfig, ImageClassifier
from models.recsys import RatingPredictor, RecsysConfig
from models.rnn import RNNConfig, TextClassifier
from training.data import NO_LABEL, POLARITY_LABELS, SUBJECTIVITY_LABELS, Dataset, catalog_rows
from training.progress import Progress

KINDS = ("full", "distilled")
SHIFT = 2  # pixels an augmented image moves at most, each way


class Task:
    family: ClassVar[str]
    problem: ClassVar[str]  # "classification" or "regression" (the manifest's `task`)
    metric_name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    channels_last: ClassVar[bool] = False
    # INT8 by static QDQ calibrated on training rows, rather than dynamic quantisation (which turns
    # convolutions into ConvInteger, slow on CPU).
    static_int8: ClassVar[bool] = False
    model_class: ClassVar[type[nn.Module]]
    config_class: ClassVar[type]
    # Files serving needs beside the models (written as `<family>_<name>.json` from `data.preprocessing`).
    preprocessing_artifacts: ClassVar[tuple[str, ...]] = ()
    adapter: ClassVar[str]  # the serving adapter (serving/families/) the manifest names
    # The family whose trained full model this one's starts from (training/transfer.py), or None.
    transfer_from: ClassVar[str | None] = None

    # ---- architectures and training settings (the trainer's TrainConfig fields)
    def model_config(self, kind: str, data: Dataset) -> Any:
        raise NotImplementedError

    def train_settings(self, kind: str, quick: bool) -> dict:
        raise NotImplementedError

    def distill_settings(self, quick: bool) -> dict:
        """The student's distillation recipe (DistillConfig fields); {} is DistillConfig's defaults."""
        return {}

    def build(self, kind: str, data: Dataset) -> nn.Module:
        if kind not in KINDS:
            raise ValueError(f"unknown variant kind {kind!r}: expected one of {KINDS}")
        return self.model_class(self.model_config(kind, data))

    # ---- serving state fitted to the trained models (the recommender's cold start)
    def after_training(
        self,
        data: Dataset,
        models: dict[str, nn.Module],
        quick: bool,
        seed: int,
        progress: Progress | None = None,
        **options: Any,
    ) -> tuple[dict, dict]:
        """(a summary for the manifest's training section, preprocessing artifacts by name) fitted to
        the trained `models` by kind, which it may extend in place with what the exported variants
        must carry; `progress` advances by `after_training_s`. `options`: the family's own (the
        recommender's: `item_means_from`)."""
        return {}, {}

    def after_training_s(self, quick: bool, kinds: int = len(KINDS)) -> float:
        """What `after_training` weighs on the build's progress display, in estimated seconds, for
        `kinds` models."""
        return 0.0

    # ---- data
    def collate(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return inputs

    def augment(self, inputs: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A random training view of a collated batch (TrainConfig.augment)."""
        raise NotImplementedError(f"the {self.family} family has no training-time augmentation")

    def teacher_inputs(
        self, data: Dataset, batch: list[torch.Tensor], n: int, rng: np.random.Generator
    ) -> list[torch.Tensor]:
        """`n` inputs nobody labelled, for the teacher to label (DistillConfig.extra_ratio)."""
        raise NotImplementedError(f"the {self.family} family has no teacher-labelled extra inputs")

    # ---- signature
    def input_specs(self, data: Dataset) -> list[TensorSpec]:
        raise NotImplementedError

    def output_spec(self) -> TensorSpec:
        raise NotImplementedError

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.input_specs(None)]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = {spec.name: {0: "batch"} for spec in self.input_specs(None)}
        axes[self.output_spec().name] = {0: "batch"}
        return axes

    # ---- objective
    # A classifier's softmax groups: column ranges of its logits, one per task it answers (a
    # multi-task model has several; distillation softens each one on its own).
    def output_groups(self, outputs: torch.Tensor) -> list[slice]:
        return [slice(0, outputs.shape[1])]

    def head_metrics(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Metrics beside `metric` that the manifest keeps per variant (each head of a multi-task model)."""
        return {}

    def single_tasks(self) -> list[Task]:
        """A multi-task family's heads as single-task models (each with `head` and `rows(split)`), which
        the build trains beside it for comparison with `--compare-single-task`; [] for every other family."""
        return []

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.problem == "classification":
            return F.cross_entropy(outputs, targets)
        return F.mse_loss(outputs, targets)

    def metric(self, outputs: np.ndarray, targets: np.ndarray) -> float:
        if self.problem == "classification":
            return float((outputs.argmax(axis=1) == targets).mean())
        return float(np.sqrt(np.mean((np.clip(outputs, 1.0, 5.0) - targets) ** 2)))

    def metric_se(self, outputs: np.ndarray, targets: np.ndarray) -> float:
        """The standard error of `metric` on this split (contract.statistics)."""
        if self.problem == "classification":
            return binomial_se(self.metric(outputs, targets), len(targets))
        return rmse_se((np.clip(outputs, 1.0, 5.0) - targets) ** 2)

    # ---- what serving needs; the preprocessing files are written by the repository
    def serving_contract(self, data: Dataset) -> dict:
        raise NotImplementedError

    def rows_per_request(self, data: Dataset) -> int:
        """How many model rows a typical request costs (the recommender scores a whole catalogue)."""
        return 1


class ImageTask(Task):
    family = "cnn"
    adapter = "image"
    problem = "classification"
    static_int8 = True
    metric_name = "accuracy"
    higher_is_better = True
    channels_last = True  # oneDNN's convolutions train ~1.3x faster in NHWC on this CPU
    model_class = ImageClassifier
    config_class = CNNConfig

    def model_config(self, kind: str, data: Dataset) -> CNNConfig:
        classes = len(data.preprocessing["labels"])
        if kind == "full":  # ~3.4 ms per image on one ORT CPU thread (the student: ~0.6 ms)
            return CNNConfig(num_classes=classes, widths=(80, 160, 320), blocks_per_stage=2, stem_stride=2)
        return CNNConfig(num_classes=classes, widths=(24, 48, 96), blocks_per_stage=1, stem_stride=1)

    def train_settings(self, kind: str, quick: bool) -> dict:
        if quick:
            return {"epochs": 2, "batch_size": 128, "lr": 3e-3}
        # Few epochs: they keep the whole build under 30 minutes on 2 cores (README, "How the variants are made").
        return {"epochs": 3 if kind == "full" else 4, "batch_size": 128, "lr": 3e-3}

    def distill_settings(self, quick: bool) -> dict:
        # Chosen on validation among the recipes of `flexserve distill-search` (README, "Distillation recipes").
        return {"temperature": 2.0, "alpha": 0.9}

    def augment(self, inputs: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Shift each image by up to SHIFT pixels each way (zero fill: the background) and mirror
        half of them left-right: Fashion-MNIST's garments keep their class in a mirror."""
        images = inputs["IMAGES"]
        n, _, height, width = images.shape
        padded = np.pad(images, ((0, 0), (0, 0), (SHIFT, SHIFT), (SHIFT, SHIFT)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (height, width), axis=(2, 3))
        dy, dx = rng.integers(0, 2 * SHIFT + 1, n), rng.integers(0, 2 * SHIFT + 1, n)
        views = windows[np.arange(n), 0, dy, dx][:, None]  # [N, 1, H, W]
        mirror = rng.random(n) < 0.5
        views[mirror] = views[mirror][..., ::-1]
        return {**inputs, "IMAGES": np.ascontiguousarray(views)}

    def teacher_inputs(
        self, data: Dataset, batch: list[torch.Tensor], n: int, rng: np.random.Generator
    ) -> list[torch.Tensor]:
        """Mixups (Zhang et al., 2018) of the batch's images with each other, in uniform random
        proportions: images between the classes, where the teacher's soft labels say most."""
        images = batch[0]
        first, second = rng.integers(0, len(images), n), rng.integers(0, len(images), n)
        weight = torch.from_numpy(rng.random(n, dtype=np.float32)).to(images.device).view(-1, 1, 1, 1)
        return [weight * images[first] + (1 - weight) * images[second]]

    def input_specs(self, data: Dataset | None) -> list[TensorSpec]:
        return [TensorSpec("IMAGES", "float32", (-1, 1, 28, 28))]

    def output_spec(self) -> TensorSpec:
        return TensorSpec("LOGITS", "float32", (-1, 10))

    def serving_contract(self, data: Dataset) -> dict:
        return {
            "labels": data.preprocessing["labels"],
            "input_range": [0.0, 255.0],
            "typical_request": "one 28x28 grayscale image",
        }


class TextTask(Task):
    family = "rnn"
    adapter = "text"
    problem = "classification"
    metric_name = "accuracy"
    higher_is_better = True
    model_class = TextClassifier
    config_class = RNNConfig
    preprocessing_artifacts = ("vocab",)

    def model_config(self, kind: str, data: Dataset) -> RNNConfig:
        vocab = len(data.preprocessing["vocab"])
        if kind == "full":  # ~4 ms for a 22-token snippet on one ORT CPU thread (the student: ~0.26 ms)
            return RNNConfig(vocab_size=vocab, embed_dim=192, hidden_size=384, bidirectional=True)
        return RNNConfig(vocab_size=vocab, embed_dim=64, hidden_size=96, bidirectional=False)

    def train_settings(self, kind: str, quick: bool) -> dict:
        # fp32: bf16 autocast trains this packed LSTM no faster, and would run the recurrence in bf16.
        if quick:
            return {"epochs": 2, "batch_size": 64, "lr": 2e-3, "precision": "fp32"}
        if kind == "full":  # validation accuracy peaks around epoch 5
            return {"epochs": 5, "batch_size": 64, "lr": 2e-3, "precision": "fp32", "patience": 2}
        # The small student keeps improving for longer than the full model.
        return {"epochs": 10, "batch_size": 64, "lr": 2e-3, "precision": "fp32", "patience": 3}

    def collate(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Trim the padding to the longest text in the batch: the sequence axis is dynamic.
        longest = int(inputs["LENGTHS"].max())
        return {"TOKENS": inputs["TOKENS"][:, :longest], "LENGTHS": inputs["LENGTHS"]}

    def input_specs(self, data: Dataset | None) -> list[TensorSpec]:
        return [TensorSpec("TOKENS", "int64", (-1, -1)), TensorSpec("LENGTHS", "int64", (-1,))]

    def output_spec(self) -> TensorSpec:
        return TensorSpec("LOGITS", "float32", (-1, 2))

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {"TOKENS": {0: "batch", 1: "sequence"}, "LENGTHS": {0: "batch"}, "LOGITS": {0: "batch"}}

    def serving_contract(self, data: Dataset) -> dict:
        return {
            "labels": data.preprocessing["labels"],
            "tokenizer": data.preprocessing["tokenizer"],
            "typical_request": "one review snippet (median 22 tokens)",
        }


class RecsysTask(Task):
    family = "recsys"
    adapter = "recommender"
    problem = "regression"
    metric_name = "rmse"
    higher_is_better = False
    model_class = RatingPredictor
    config_class = RecsysConfig
    preprocessing_artifacts = ("catalog",)

    def model_config(self, kind: str, data: Dataset) -> RecsysConfig:
        sizes = data.preprocessing["sizes"]
        if kind == "full":  # ~12 ms to score the 1,682-movie catalogue on one ORT CPU thread (student ~3 ms)
            return RecsysConfig(**sizes, embed_dim=64, tower_dim=128, head_hidden=(256, 128))
        return RecsysConfig(**sizes, embed_dim=32, tower_dim=32, head_hidden=(32,), dropout=0.1)

    def train_settings(self, kind: str, quick: bool) -> dict:
        if quick:
            return {"epochs": 2, "batch_size": 512, "lr": 3e-3, "max_steps_per_epoch": 60}
        # The full model overfits the ids: strong weight decay, chosen on validation RMSE (README).
        return {
            "epochs": 12,
            "batch_size": 512,
            "lr": 3e-3,
            "weight_decay": 0.4 if kind == "full" else 0.1,
            "patience": 3,
        }

    def input_specs(self, data: Dataset | None) -> list[TensorSpec]:
        genres = data.preprocessing["sizes"]["num_genres"] if data else -1
        return [
            TensorSpec("USER_FEATURES", "int64", (-1, 4)),
            TensorSpec("ITEM_FEATURES", "int64", (-1, 2)),
            TensorSpec("ITEM_GENRES", "float32", (-1, genres)),
            TensorSpec("ITEM_TITLE", "int64", (-1, -1)),
        ]

    def output_spec(self) -> TensorSpec:
        return TensorSpec("RATING", "float32", (-1,))

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = super().dynamic_axes()
        axes["ITEM_TITLE"] = {0: "batch", 1: "title_tokens"}
        return axes

    def distill_settings(self, quick: bool) -> dict:
        return {"extra_ratio": 1.0}  # a random unrated pair per rating: most of the student's gain (README)

    def after_training(
        self,
        data: Dataset,
        models: dict[str, nn.Module],
        quick: bool,
        seed: int,
        progress: Progress | None = None,
        item_means_from: str = "train",
    ) -> tuple[dict, dict]:
        """Cold start (training/coldstart.py) for each kind: the ordinary and the meta-learned fit,
        measured on the held-out cold-start users; the meta-learned one is what serving gets.
        `item_means_from`: whose ratings its item means come from (`coldstart.MetaSettings`)."""
        from training import coldstart  # it imports the models and data, as this module does

        settings = coldstart.MetaSettings.for_build(quick, seed, item_means_from)
        summary: dict = {"meta_training": dataclasses.asdict(settings), "ks": list(coldstart.KS), "kinds": {}}
        artifact: dict = {"kinds": {}}
        for kind, model in models.items():
            ordinary = coldstart.ordinary_prior(model, data)
            learned, losses = coldstart.meta_train(model, data, ordinary, settings, progress, f"recsys_{kind}")
            priors = {"ordinary": ordinary, "meta_learned": learned}
            table = coldstart.evaluate(model, data, priors, settings)
            artifact["prior_row"], state = coldstart.exported(model, data, learned, settings.item_means_from)
            artifact["kinds"][kind] = state.to_json()
            tail = max(1, len(losses) // 10)
            summary["kinds"][kind] = {
                "item_means_from": settings.item_means_from,
                "query_rmse": table,
                "meta_training_query_mse": {
                    "first": float(np.mean(losses[:tail])),
                    "last": float(np.mean(losses[-tail:])),
                },
            }
        summary["users"] = {
            "cold_start": len(coldstart.held_out_users(data)),
            "meta_training": len(coldstart.held_out_users(data, "meta_training_users")),
        }
        return {"cold_start": summary}, {"cold_start": artifact}

    def after_training_s(self, quick: bool, kinds: int = len(KINDS)) -> float:
        from training import coldstart

        return kinds * coldstart.MetaSettings.for_build(quick, 0).steps * coldstart.SECONDS_PER_STEP

    def teacher_inputs(
        self, data: Dataset, batch: list[torch.Tensor], n: int, rng: np.random.Generator
    ) -> list[torch.Tensor]:
        """Random (user, item) pairs from the catalogue: mostly pairs nobody rated."""
        tables = data.preprocessing["tables"]
        rows = catalog_rows(
            tables, rng.integers(0, len(tables["USER_FEATURES"]), n), rng.integers(0, len(tables["ITEM_FEATURES"]), n)
        )
        from training.trainer import to_tensors  # the trainer imports this module

        return to_tensors(rows, self, batch[0].device)

    def serving_contract(self, data: Dataset) -> dict:
        return {
            "rating_range": [1.0, 5.0],
            "rows_per_request": self.rows_per_request(data),
            "typical_request": "score the whole catalogue for one user",
        }

    def rows_per_request(self, data: Dataset) -> int:
        return data.preprocessing["sizes"]["num_items"]


class DigitsTask(ImageTask):
    """Handwritten digits: the image family's architecture, its full model transferred from the
    Fashion-MNIST full CNN (training/transfer.py). Served by the image adapter."""

    family = "digits"
    transfer_from = "cnn"
    augment = Task.augment  # a mirrored digit is another digit (or none)

    def train_settings(self, kind: str, quick: bool) -> dict:
        # The students: ~1,200 images, so more epochs than Fashion-MNIST's 55,000 take.
        return {"epochs": 3 if quick else 20, "batch_size": 32, "lr": 3e-3, "patience": 5}

    def transfer_settings(self, path: str, quick: bool) -> dict:
        """The study's settings per path (training/transfer.py): the same schedule for all three, so
        that the comparison is of starting points; a small label budget runs more epochs, up to
        `max_epochs`, to get `min_steps` steps. The head learns at `lr`; fine-tuning's backbone at a tenth."""
        settings = {"epochs": 6, "batch_size": 32, "lr": 3e-3, "patience": 99, "min_steps": 120, "max_epochs": 25}
        if quick:
            # 12 steps an epoch: the six study runs in ~30 s (the served students take their own full epochs).
            settings.update(epochs=2, min_steps=10, max_epochs=4, max_steps_per_epoch=12)
        if path == "frozen":
            settings["lr"] = 1e-2  # only the head learns: a linear model on fixed features
        if path == "finetune":
            settings["backbone_lr_scale"] = 0.1
        return settings

    def serving_contract(self, data: Dataset) -> dict:
        return {**super().serving_contract(data), "typical_request": "one 28x28 grayscale digit"}


def balanced_accuracy(predicted: np.ndarray, targets: np.ndarray) -> float:
    """The mean of the per-class recalls (classes present in `targets`)."""
    return float(np.mean([(predicted[targets == c] == c).mean() for c in np.unique(targets)]))


def balanced_accuracy_se(predicted: np.ndarray, targets: np.ndarray) -> float:
    """Its standard error: the per-class recalls are independent binomials."""
    recalls = [(predicted[targets == c] == c).mean() for c in np.unique(targets)]
    counts = [int((targets == c).sum()) for c in np.unique(targets)]
    return float(np.sqrt(sum(binomial_se(r, n) ** 2 for r, n in zip(recalls, counts, strict=True))) / len(counts))


class MultiTaskTextTask(TextTask):
    """One shared text encoder (the text family's LSTM), two heads: polarity (rotten/fresh, on the
    reviews) and subjectivity (plot summary/review, on every row). LOGITS [N, 4] are the two heads'
    logits side by side (`HEADS`' columns): one linear layer over the shared features is exactly two
    heads. Trained jointly: each batch is a random draw of all rows (reviews and plots mixed as in the
    data, 12:1); the loss is the polarity cross-entropy over the batch's reviews plus the subjectivity
    cross-entropy over all its rows, weighted equally. Ranked by the mean of polarity accuracy and
    subjectivity balanced accuracy (the classes are 12:1)."""

    family = "text_multitask"
    adapter = "multitask_text"
    metric_name = "mean_accuracy"
    HEADS = {"polarity": (slice(0, 2), POLARITY_LABELS), "subjectivity": (slice(2, 4), SUBJECTIVITY_LABELS)}
    LOSS_WEIGHTS = {"polarity": 1.0, "subjectivity": 1.0}

    def model_config(self, kind: str, data: Dataset) -> RNNConfig:
        return dataclasses.replace(super().model_config(kind, data), num_classes=4)

    def train_settings(self, kind: str, quick: bool) -> dict:
        settings = super().train_settings(kind, quick)
        # --quick: fewer steps each (with --compare-single-task it trains five full-size text models).
        return {**settings, "max_steps_per_epoch": 12} if quick else settings

    def output_spec(self) -> TensorSpec:
        return TensorSpec("LOGITS", "float32", (-1, 4))

    def output_groups(self, outputs: torch.Tensor) -> list[slice]:
        return [columns for columns, _ in self.HEADS.values()]

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        total = outputs.new_zeros(())
        for index, (name, (columns, _)) in enumerate(self.HEADS.items()):
            labelled = targets[:, index] != NO_LABEL
            if labelled.any():  # a batch of plot summaries alone has no polarity to learn
                total = total + self.LOSS_WEIGHTS[name] * F.cross_entropy(
                    outputs[labelled][:, columns], targets[labelled, index]
                )
        return total

    def _head_scores(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, tuple[float, float]]:
        """(metric, standard error) per head: polarity accuracy on the reviews, subjectivity balanced accuracy."""
        scores = {}
        for index, (name, (columns, _)) in enumerate(self.HEADS.items()):
            labelled = targets[:, index] != NO_LABEL
            predicted, truth = outputs[labelled][:, columns].argmax(axis=1), targets[labelled, index]
            if name == "polarity":
                accuracy = float((predicted == truth).mean())
                scores["polarity_accuracy"] = (accuracy, binomial_se(accuracy, len(truth)))
            else:
                scores[f"{name}_balanced_accuracy"] = (
                    balanced_accuracy(predicted, truth),
                    balanced_accuracy_se(predicted, truth),
                )
        return scores

    def head_metrics(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        return {name: value for name, (value, _) in self._head_scores(outputs, targets).items()}

    def metric(self, outputs: np.ndarray, targets: np.ndarray) -> float:
        return float(np.mean(list(self.head_metrics(outputs, targets).values())))

    def single_tasks(self) -> list[Task]:
        return [SingleHeadTextTask(head) for head in self.HEADS]

    def metric_se(self, outputs: np.ndarray, targets: np.ndarray) -> float:
        errors = [se for _, se in self._head_scores(outputs, targets).values()]
        return float(np.sqrt(sum(se**2 for se in errors)) / len(errors))

    def serving_contract(self, data: Dataset) -> dict:
        return {
            "heads": [
                {"name": name, "columns": [columns.start, columns.stop], "labels": labels}
                for name, (columns, labels) in self.HEADS.items()
            ],
            "metric": "the mean of polarity accuracy (reviews) and subjectivity balanced accuracy (all rows)",
            "tokenizer": data.preprocessing["tokenizer"],
            "typical_request": "one review snippet (median 22 tokens), both tasks",
        }


class SingleHeadTextTask(TextTask):
    """One head of the multi-task family on its own (the comparison `flexserve train --compare-single-task`
    makes): the same encoder, trained on the rows that head labels, measured as the multi-task model
    measures that head."""

    def __init__(self, head: str):
        self.head = head
        self.index = list(MultiTaskTextTask.HEADS).index(head)
        self.family = f"text_{head}"
        self.metric_name = "accuracy" if head == "polarity" else "balanced_accuracy"

    def rows(self, split):
        """The split's rows this head labels, with that head's targets alone."""
        labelled = np.flatnonzero(split.targets[:, self.index] != NO_LABEL)
        return type(split)({k: v[labelled] for k, v in split.inputs.items()}, split.targets[labelled, self.index])

    def metric(self, outputs: np.ndarray, targets: np.ndarray) -> float:
        if self.head == "polarity":
            return super().metric(outputs, targets)
        return balanced_accuracy(outputs.argmax(axis=1), targets)


TASKS: dict[str, Task] = {
    task.family: task for task in (ImageTask(), TextTask(), RecsysTask(), DigitsTask(), MultiTaskTextTask())
}


def get_task(family: str) -> Task:
    if family not in TASKS:
        raise ValueError(f"unknown family {family!r}: expected one of {sorted(TASKS)}")
    return TASKS[family]


def config_to_json(config: Any) -> dict:
    return dataclasses.asdict(config)


def config_from_json(task: Task, values: dict) -> Any:
    fields = {f.name: f for f in dataclasses.fields(task.config_class)}
    return task.config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in fields})
