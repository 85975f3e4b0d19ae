"""Transfer learning: a family whose full model starts from another family's trained full model
(`Task.transfer_from`; the handwritten digits from the Fashion-MNIST CNN).

Three paths, each trained at several label budgets (labels per class) over the build's seeds, and
measured on the same test split (the report's label-efficiency plot):
- `scratch`: the same architecture from random weights;
- `frozen`: the source's backbone, frozen (weights and BatchNorm statistics), and a new head;
- `finetune`: the source's backbone and a new head, all trained, the backbone at a tenth of the
  head's learning rate (`TrainConfig.backbone_lr_scale`).
The path with the best mean validation metric at the build's label budget becomes the family's full
model (its best seed on validation), and the students learn from it as in every family.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.data import Split
from training.progress import Progress
from training.tasks import Task
from training.trainer import TrainConfig, TrainResult, predict, steps_per_epoch, train

PATHS = ("scratch", "frozen", "finetune")
ALL = "all"  # the label budget of every training row


def label_budgets(quick: bool) -> tuple[int | str, ...]:
    """The labels per class the study compares the paths at."""
    return (10, ALL) if quick else (10, 50, ALL)


def labelled_subset(split: Split, per_class: int | str, seed: int) -> Split:
    """`per_class` rows of each class, drawn with `seed` (all rows for ALL); a class with fewer keeps all."""
    if per_class == ALL:
        return split
    if type(per_class) is not int or per_class < 1:
        raise ValueError(f"labels per class must be an integer >= 1 or {ALL!r}, got {per_class!r}")
    rng = np.random.default_rng([seed, 2])
    chosen = [rng.permutation(np.flatnonzero(split.targets == c))[:per_class] for c in np.unique(split.targets)]
    return split.take(np.sort(np.concatenate(chosen)))


def replace_head(model: nn.Module, num_classes: int) -> nn.Linear:
    """Swap the last linear layer of `model.head` for a new one with `num_classes` outputs (its initial
    weights from torch's current random state) and return it."""
    head = model.head
    if isinstance(head, nn.Linear):
        model.head = new = nn.Linear(head.in_features, num_classes)
    else:
        index, last = next((i, m) for i, m in reversed(list(enumerate(head))) if isinstance(m, nn.Linear))
        head[index] = new = nn.Linear(last.in_features, num_classes)
    if dataclasses.is_dataclass(getattr(model, "config", None)) and hasattr(model.config, "num_classes"):
        model.config = dataclasses.replace(model.config, num_classes=num_classes)  # what a checkpoint rebuilds
    return new


def freeze_backbone(model: nn.Module) -> None:
    """Only `model.head` learns; the trainer keeps the frozen BatchNorm layers in eval mode."""
    head = {id(p) for p in model.head.parameters()}
    for p in model.parameters():
        p.requires_grad = id(p) in head


def transferred(source: nn.Module, path: str, num_classes: int, seed: int) -> nn.Module:
    """A copy of `source` with a new head, seeded, set up for `path` ("frozen" or "finetune")."""
    if path not in PATHS[1:]:
        raise ValueError(f"path {path!r} does not start from the source: expected one of {PATHS[1:]}")
    model = copy.deepcopy(source)
    torch.manual_seed(seed)
    replace_head(model, num_classes)
    for p in model.parameters():
        p.requires_grad = True
    if path == "frozen":
        freeze_backbone(model)
    return model


def schedule(task: Task, path: str, rows: int, quick: bool, seed: int, device: str) -> TrainConfig:
    """The path's settings, with enough epochs that a small label budget still gets its steps."""
    settings = task.transfer_settings(path, quick)
    min_steps, max_epochs = settings.pop("min_steps"), settings.pop("max_epochs")
    config = TrainConfig(**settings, seed=seed, device=device)
    epochs = min(max_epochs, max(config.epochs, math.ceil(min_steps / steps_per_epoch(rows, config))))
    return TrainConfig(**{**settings, "epochs": epochs}, seed=seed, device=device)


@dataclass
class Run:
    path: str
    budget: int | str
    seed: int
    result: TrainResult
    test_metric: float


def build_model(task: Task, data, source: nn.Module, path: str, seed: int) -> nn.Module:
    if path == "scratch":
        torch.manual_seed(seed)
        return task.build("full", data)
    return transferred(source, path, len(data.preprocessing["labels"]), seed)


def study(
    task: Task,
    data,
    source: nn.Module,
    budgets: tuple[int | str, ...],
    seeds: tuple[int, ...],
    quick: bool,
    device: str,
    progress: Progress,
    batch_s: dict[str, float],
) -> list[Run]:
    """Every path at every label budget and seed, each measured on the whole test split."""
    runs = []
    for budget in budgets:
        for seed in seeds:
            labelled = labelled_subset(data.train, budget, seed)
            for path in PATHS:
                config = schedule(task, path, len(labelled), quick, seed, device)
                name = f"{task.family}_{path} ({budget} labels/class, seed {seed})"
                model = build_model(task, data, source, path, seed)
                weight = run_weight(batch_s, path, len(labelled), len(data.val), config)
                result = train(model, task, labelled, data.val, config, name, progress=progress, batch_weight=weight)
                metric = task.metric(predict(result.model, data.test, task), data.test.targets)
                progress.log(f"[{name}] test {task.metric_name} {metric:.4f}")
                runs.append(Run(path, budget, seed, result, metric))
    return runs


def choose(runs: list[Run], budget: int | str, higher_is_better: bool) -> tuple[str, Run]:
    """The path with the best mean validation metric at `budget`, and its best seed's run."""
    sign = 1.0 if higher_is_better else -1.0
    at = [r for r in runs if r.budget == budget]
    mean = {p: np.mean([r.result.best_metric for r in at if r.path == p]) for p in PATHS}
    path = max(PATHS, key=lambda p: sign * mean[p])
    return path, max((r for r in at if r.path == path), key=lambda r: sign * r.result.best_metric)


def summary(runs: list[Run], budgets: tuple[int | str, ...], seeds: tuple[int, ...], task: Task, data) -> dict:
    """The study as the manifest keeps it: per path, per budget, the test metric of each seed."""
    return {
        "budgets": list(budgets),
        # Where "all" sits on a labels-per-class axis: the whole training split's rows per class.
        "all_per_class": len(data.train) / len(data.preprocessing["labels"]),
        "seeds": list(seeds),
        "metric": task.metric_name,
        "test": {
            path: {str(b): [r.test_metric for r in runs if r.path == path and r.budget == b] for b in budgets}
            for path in PATHS
        },
        "val": {
            path: {str(b): [r.result.best_metric for r in runs if r.path == path and r.budget == b] for b in budgets}
            for path in PATHS
        },
        "epochs": {
            path: {str(b): next(r.result.epochs_run for r in runs if r.path == path and r.budget == b) for b in budgets}
            for path in PATHS
        },
    }


def run_weight(batch_s: dict[str, float], path: str, rows: int, val_rows: int, config: TrainConfig) -> float:
    """What one training batch of a study run weighs on the progress display, in seconds: the batch,
    and its share of the epoch's validation pass (an evaluation batch costs about a third of a training
    batch; with ~1,200 labelled digits, validation is a large part of a run)."""
    val_s = math.ceil(val_rows / config.batch_size) * batch_s["scratch"] / 3
    return batch_s[path] + val_s / steps_per_epoch(rows, config)
