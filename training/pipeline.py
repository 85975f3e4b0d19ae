"""`flexserve train`: real data -> full model, distilled student (and the same student
without a teacher, for comparison) -> fp32/fp16/int8 ONNX variants, each parity-checked
against PyTorch and evaluated in ONNX Runtime on the test split -> model repository.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from training import repository
from training.data import Dataset, load_dataset
from training.distill import DistillConfig, distill
from training.export import check_parity, export_onnx, run_onnx, session
from training.tasks import Task, config_from_json, config_to_json, get_task
from training.trainer import TrainConfig, TrainResult, batches, predict, train
from training.variants import PRECISIONS, to_fp16, to_int8_dynamic, to_int8_static

FAMILIES = ("cnn", "rnn", "recsys")
# --quick: seeded subsets (train, val, test) small enough to build everything in ~2 minutes.
QUICK_SUBSETS = {"cnn": (3000, 500, 1000), "rnn": (2500, 500, 1000), "recsys": (20000, 4000, 4000)}
PARITY_ROWS = 256
CALIBRATION_BATCHES, CALIBRATION_BATCH_SIZE = 16, 32
# Triton's max_batch_size in the written configs, in model rows (the recommender scores a catalogue).
MAX_BATCH_ROWS = {"cnn": 64, "rnn": 64, "recsys": 16384}


@dataclass(frozen=True)
class BuildConfig:
    out: Path = Path("artifacts/model_repository")
    checkpoints: Path | None = None  # default: a `checkpoints` folder beside `out`
    quick: bool = False  # small subsets and few epochs: for tests, CI and a first look
    synthetic: bool = False  # generated data instead of the real datasets (unit tests only)
    seed: int = 0
    device: str = "auto"
    register: bool = True  # also put the repository in the BentoML model store

    @property
    def checkpoint_dir(self) -> Path:
        return self.checkpoints or self.out.parent / "checkpoints"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_checkpoint(result: TrainResult, task: Task, path: Path) -> None:
    """Weights as safetensors (no pickle) and, beside them, what rebuilds the model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, str(path.with_suffix(".safetensors")))
    path.with_suffix(".json").write_text(json.dumps({
        "family": task.family, "architecture": task.model_class.__name__,
        "config": config_to_json(result.model.config), "best_val_metric": result.best_metric,
        "history": result.history,
    }, indent=2))


def load_checkpoint(task: Task, path: Path) -> torch.nn.Module:
    meta = json.loads(path.with_suffix(".json").read_text())
    model = task.model_class(config_from_json(task, meta["config"]))
    model.load_state_dict(load_file(str(path.with_suffix(".safetensors"))))
    return model.eval()


def _calibration_feeds(task: Task, data: Dataset, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    feeds = []
    for _, inputs, _ in batches(data.train, task, CALIBRATION_BATCH_SIZE, rng):
        feeds.append(inputs)
        if len(feeds) == CALIBRATION_BATCHES:
            break
    return feeds


def _training_summary(result: TrainResult) -> dict:
    return {"epochs_run": result.epochs_run, "seconds": round(result.seconds, 1), "precision": result.precision,
            "best_val_metric": round(result.best_metric, 5), "history": result.history}


def build_family(family: str, config: BuildConfig) -> dict:
    """Train, distil, export and evaluate one family; write its variants into the repository."""
    task = get_task(family)
    started = time.perf_counter()
    data = load_dataset(family, seed=config.seed, synthetic=config.synthetic)
    if config.quick and not config.synthetic:
        data = data.subset(*QUICK_SUBSETS[family], seed=config.seed)
    log(f"[{family}] {data.source}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test rows")

    def settings(kind: str) -> TrainConfig:
        return TrainConfig(**task.train_settings(kind, config.quick), seed=config.seed, device=config.device)

    def seeded(kind: str) -> torch.nn.Module:
        torch.manual_seed(config.seed)  # the initial weights are part of what a seed reproduces
        return task.build(kind, data)

    full = train(seeded("full"), task, data.train, data.val, settings("full"), f"{family}_full")
    student = distill(seeded("distilled"), full.model, task, data, settings("distilled"),
                      DistillConfig(), f"{family}_distilled")
    # The same student, same initial weights, trained without the teacher: the measured gain.
    baseline = train(seeded("distilled"), task, data.train, data.val, settings("distilled"),
                     f"{family}_student_without_distillation")
    for name, result in (("full", full), ("distilled", student)):
        save_checkpoint(result, task, config.checkpoint_dir / f"{family}_{name}")

    def test_metric(model: torch.nn.Module) -> float:
        return task.metric(predict(model, data.test, task), data.test.targets)

    repo = config.out
    repo.mkdir(parents=True, exist_ok=True)
    inputs = task.input_specs(data)
    parity_split = data.test.take(np.arange(min(PARITY_ROWS, len(data.test))))
    calibration = _calibration_feeds(task, data, config.seed) if family == "cnn" else None
    variants = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, result in (("full", full), ("distilled", student)):
            model = result.model.cpu().eval()
            files = {precision: Path(tmp) / f"{kind}_{precision}.onnx" for precision in PRECISIONS}
            export_onnx(model, task, data.test.take(np.arange(2)).inputs, files["fp32"])
            to_fp16(files["fp32"], files["fp16"])
            if calibration is not None:  # CNN: static QDQ (dynamic ConvInteger is slow on CPU)
                to_int8_static(files["fp32"], files["int8"], calibration)
            else:
                to_int8_dynamic(files["fp32"], files["int8"])
            for precision, path in files.items():
                name = repository.variant_name(family, kind, precision)
                parity = check_parity(model, path, task, parity_split, precision)
                metric = task.metric(run_onnx(session(path, threads=2), data.test, task), data.test.targets)
                stored = repository.add_variant(repo, task, name, path, inputs, MAX_BATCH_ROWS[family])
                variants.append({"name": name, "kind": kind, "precision": precision, **stored,
                                 "params": count_params(model), "metrics": {task.metric_name: metric},
                                 "parity": parity})
                log(f"[{family}] {name}: test {task.metric_name} {metric:.4f} (ONNX Runtime), "
                    f"parity max |diff| {parity['max_abs_diff']:.2g}, {stored['size_bytes'] / 1e6:.2f} MB")

    preprocessing = {}
    if family == "rnn":
        preprocessing["vocab"] = repository.write_json_artifact(repo, "rnn_vocab.json", data.preprocessing["vocab"])
    if family == "recsys":
        preprocessing["catalog"] = repository.write_json_artifact(repo, "recsys_catalog.json",
                                                                  data.preprocessing["catalog"])
    section = {
        "task": task.kind,
        "metric": task.metric_name,
        "higher_is_better": task.higher_is_better,
        "dataset": {"source": data.source, "seed": config.seed, "quick": config.quick,
                    "rows": {"train": len(data.train), "val": len(data.val), "test": len(data.test)}},
        "inputs": [spec.to_json() for spec in inputs],
        "outputs": [task.output_spec().to_json()],
        "rows_per_request": task.rows_per_request(data),
        "contract": task.serving_contract(data),
        "preprocessing": preprocessing,
        "training": {
            "full": {**_training_summary(full), "test_metric_pytorch": test_metric(full.model)},
            "distilled": {**_training_summary(student), "test_metric_pytorch": test_metric(student.model)},
            "student_without_distillation": {**_training_summary(baseline),
                                             "test_metric_pytorch": test_metric(baseline.model)},
        },
        "variants": variants,
    }
    repository.write_family(repo, family, section)
    log(f"[{family}] done in {time.perf_counter() - started:.0f}s")
    return section


def build(families: list[str], config: BuildConfig) -> dict:
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown family {unknown[0]!r}: expected one of {', '.join(FAMILIES)} or all")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()
    for family in families:
        build_family(family, config)
    manifest = repository.load_manifest(config.out)
    if config.register:
        tag = repository.register_in_bentoml(config.out, manifest)
        log(f"registered in the BentoML model store as {tag} (`bentoml models list`)")
    log(f"model repository: {config.out} ({time.perf_counter() - started:.0f}s)")
    return manifest
