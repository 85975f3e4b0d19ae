"""`flexserve distill-search`: distillation recipes against the same student without a teacher,
on the validation split, paired by seed.

Every recipe is a student schedule (TrainConfig fields over the family's own) and, unless it is a
baseline, a DistillConfig. A distillation recipe is compared with the baseline that has the same
schedule (the same epochs, the same augmented views): the gain is the teacher's, not the schedule's.
The teacher is a trained full model's checkpoint (`<checkpoints>/<family>_full`, written by
`flexserve train`). The test split is never read: the family's recipe is chosen here, and the build
reports the chosen one on test.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from contract.statistics import paired_difference
from training.data import Dataset, load_dataset
from training.distill import DistillConfig, distill
from training.pipeline import load_checkpoint
from training.progress import Progress
from training.tasks import Task, get_task
from training.trainer import TrainConfig, planned_steps, predict, train


@dataclass(frozen=True)
class Recipe:
    name: str
    schedule: dict = field(default_factory=dict)  # TrainConfig fields over the family's student settings
    distill: DistillConfig | None = None  # None: the baseline, hard labels only

    @property
    def baseline_schedule(self) -> tuple:
        return tuple(sorted(self.schedule.items()))


# Tried for the image family (README, "Distillation recipes"). The teacher runs on each batch as the
# student sees it whenever the schedule augments.
CNN_RECIPES = (
    Recipe("plain"),
    Recipe("kd T4 a0.7", distill=DistillConfig(4.0, 0.7)),
    Recipe("kd T2 a0.9", distill=DistillConfig(2.0, 0.9)),
    Recipe("kd T4 a0.7 + mixup", distill=DistillConfig(4.0, 0.7, extra_ratio=1.0)),
    Recipe("plain, augmented", {"augment": True}),
    Recipe("kd T4 a0.9, augmented, consistent", {"augment": True}, DistillConfig(4.0, 0.9)),
)
RECIPES = {"cnn": CNN_RECIPES}


def search(
    task: Task,
    data: Dataset,
    teacher: torch.nn.Module,
    recipes: tuple[Recipe, ...],
    seeds: tuple[int, ...],
    device: str = "cpu",
) -> dict:
    """Every recipe once per seed (the same initial weights and batch order per seed); returns
    {"runs": {recipe: [validation metric per seed]}, "gains": {recipe: paired gain vs its baseline}}."""
    baselines = {r.baseline_schedule: r.name for r in recipes if r.distill is None}
    for recipe in recipes:
        if recipe.distill is not None and recipe.baseline_schedule not in baselines:
            raise ValueError(
                f"recipe {recipe.name!r} needs the baseline with its schedule {recipe.schedule} beside it: "
                f"add that recipe (the one without a teacher)"
            )
    base_settings = task.train_settings("distilled", quick=False)
    total = sum(planned_steps(len(data.train), TrainConfig(**{**base_settings, **r.schedule})) for r in recipes) * len(
        seeds
    )
    # Counts student batches: a recipe with an online teacher or extra inputs takes longer per batch.
    progress = Progress(total, f"{task.family} distillation recipes", unit="batch")
    runs: dict[str, list[float]] = {r.name: [] for r in recipes}
    for seed in seeds:
        for recipe in recipes:
            settings = TrainConfig(**{**base_settings, **recipe.schedule, "seed": seed, "device": device})
            torch.manual_seed(seed)
            student = task.build("distilled", data)
            started = time.perf_counter()
            name = f"{recipe.name} (seed {seed})"
            if recipe.distill is None:
                result = train(student, task, data.train, data.val, settings, name, progress=progress)
            else:
                result = distill(student, teacher, task, data, settings, recipe.distill, name, progress=progress)
            metric = task.metric(predict(result.model, data.val, task), data.val.targets)
            runs[recipe.name].append(metric)
            seconds = time.perf_counter() - started
            progress.log(f"[{name}] val {task.metric_name} {metric:.4f} ({seconds:.0f} s)")
    progress.close()
    sign = 1.0 if task.higher_is_better else -1.0
    gains = {}
    for recipe in recipes:
        if recipe.distill is not None:
            base = baselines[recipe.baseline_schedule]
            gain = paired_difference([sign * v for v in runs[recipe.name]], [sign * v for v in runs[base]])
            bounded = math.isfinite(gain.low)
            gains[recipe.name] = {
                "baseline": base,
                "mean": gain.mean,
                "low": gain.low if bounded else None,
                "high": gain.high if bounded else None,
            }
    return {
        "family": task.family,
        "metric": task.metric_name,
        "seeds": list(seeds),
        "rows": {"train": len(data.train), "val": len(data.val)},
        "recipes": [
            {"name": r.name, "schedule": r.schedule, "distill": asdict(r.distill) if r.distill else None}
            for r in recipes
        ],
        "runs": runs,
        "gains": gains,
    }


def run(
    family: str,
    checkpoints: Path,
    seeds: tuple[int, ...],
    train_rows: int | None = None,
    val_rows: int | None = None,
    names: list[str] | None = None,
    out: Path | None = None,
    device: str = "cpu",
) -> dict:
    """`flexserve distill-search`: the family's recipes (or those named) against the trained teacher
    in `checkpoints`, on the full training and validation splits or seeded subsets of `train_rows` and
    `val_rows`."""
    if family not in RECIPES:
        raise ValueError(f"no distillation recipes for family {family!r}: there are recipes for {sorted(RECIPES)}")
    known = {r.name: r for r in RECIPES[family]}
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown recipe(s) {unknown}: the {family} recipes are {list(known)}")
    for name, rows in (("train_rows", train_rows), ("val_rows", val_rows)):
        if rows is not None and rows < 1:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{name} ({flag}) must be >= 1, got {rows}; leave it out for the whole split")
    teacher_path = checkpoints / f"{family}_full"
    if not teacher_path.with_suffix(".safetensors").is_file():
        raise FileNotFoundError(
            f"no trained {family} teacher at {teacher_path}.safetensors: `flexserve train --family {family}` "
            f"writes it (into a `checkpoints` folder beside the repository), or pass --checkpoints"
        )
    if not seeds:
        raise ValueError("seeds must hold at least one seed (--seeds >= 1)")
    task = get_task(family)
    # The teacher's own split (checkpoints before this field: seed 0), so that validation rows are unseen.
    data_seed = json.loads(teacher_path.with_suffix(".json").read_text()).get("data_seed", 0)
    data = load_dataset(family, seed=data_seed)
    if train_rows is not None and train_rows < len(data.train):
        data = data.subset(train_rows, len(data.val), len(data.test), seed=data_seed)
    if val_rows is not None and val_rows < len(data.val):
        # from its own stream: the same validation images whatever --train-rows
        data = data.subset(len(data.train), val_rows, len(data.test), seed=[data_seed, 1])
    recipes = tuple(r for r in RECIPES[family] if not names or r.name in names)
    result = search(task, data, load_checkpoint(task, teacher_path), recipes, seeds, device)
    if out is not None:
        write(result, out)
    return result


def markdown(result: dict) -> str:
    """One row per recipe: validation metric per seed, mean, and the paired gain over its baseline."""
    scale = 100 if result["metric"] == "accuracy" else 1
    unit = " points" if scale == 100 else ""
    lines = [
        f"| recipe | val {result['metric']} per seed | mean | gain over its baseline, 95% interval |",
        "|---|---|---:|---|",
    ]
    for recipe in result["recipes"]:
        values = result["runs"][recipe["name"]]
        gain = result["gains"].get(recipe["name"])
        text = "(baseline)"
        if gain:
            if gain["low"] is None:
                text = f"{gain['mean'] * scale:+.2f}{unit} (one seed: no interval)"
            else:
                text = f"{gain['mean'] * scale:+.2f} [{gain['low'] * scale:+.2f}, {gain['high'] * scale:+.2f}]{unit}"
        per_seed = ", ".join(f"{v:.4f}" for v in values)
        lines.append(f"| {recipe['name']} | {per_seed} | {sum(values) / len(values):.4f} | {text} |")
    return "\n".join(lines)


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"distill_search_{result['family']}.json").write_text(json.dumps(result, indent=2))
    (out / f"distill_search_{result['family']}.md").write_text(markdown(result) + "\n")
