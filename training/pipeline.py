"""`flexserve train`: real data -> full model, distilled student (and the same student
without a teacher, for comparison) -> fp32/fp16/int8 ONNX variants, each parity-checked
against PyTorch and evaluated in ONNX Runtime on the test split -> model repository.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from contract.files import sha256_file
from contract.layout import new_version, version_of
from contract.manifest import DEFAULT_REPOSITORY, FamilySection, Manifest, VariantEntry, read_manifest, variant_name
from contract.sessions import open_session
from training import BUILT_IN_FAMILIES, repository, trainer, transfer
from training.data import Dataset, load_dataset
from training.distill import DistillConfig, distill
from training.export import check_parity, export_onnx, run_onnx
from training.progress import Progress
from training.tasks import KINDS, Task, config_from_json, config_to_json, get_task
from training.trainer import TrainConfig, TrainResult, batches, predict, train
from training.variants import PRECISIONS, to_fp16, to_int8_dynamic, to_int8_static

FAMILIES = BUILT_IN_FAMILIES
# --quick: seeded subsets (train, val, test) small enough to build everything in ~6 minutes on 2 cores (the
# digits are small enough whole).
QUICK_SUBSETS = {
    "cnn": (3000, 500, 1000),
    "rnn": (2500, 500, 1000),
    "recsys": (20000, 4000, 4000),
    "text_multitask": (2500, 500, 1000),
}
PARITY_ROWS = 256
DEFAULT_SEEDS = 3  # student seeds of a full build: the fewest that give an interval worth reading
CALIBRATION_BATCHES, CALIBRATION_BATCH_SIZE = 16, 32


@dataclass(frozen=True)
class BuildConfig:
    out: Path = DEFAULT_REPOSITORY
    checkpoints: Path | None = None  # default: a `checkpoints` folder beside `out`
    quick: bool = False  # small subsets and few epochs: for tests, CI and a first look
    synthetic: bool = False  # generated data instead of the real datasets (unit tests only)
    seed: int = 0
    # The students (with and without the teacher) are trained once per seed, seed, seed + 1, ...: the
    # report's distillation gain is a paired difference over them. None: 1 with `quick`, else 3.
    seeds: int | None = None
    device: str = "auto"
    register: bool = True  # also put the repository in the BentoML model store
    # A transferred family's label budget (training/transfer.py): labels per class its served models
    # learn from; None: every training row.
    labels_per_class: int | None = None
    # A multi-task family: also train each head alone as a full-size single-task model (never served;
    # the report's comparison). Off by default: at full data they add ~24 minutes, ~65% more than the family.
    compare_single_task: bool = False

    def __post_init__(self):
        if self.seeds is not None and (type(self.seeds) is not int or self.seeds < 1):
            raise ValueError(f"seeds must be an integer >= 1, got {self.seeds!r}")
        if self.labels_per_class is not None and (type(self.labels_per_class) is not int or self.labels_per_class < 1):
            raise ValueError(f"labels_per_class must be an integer >= 1, got {self.labels_per_class!r}")

    @property
    def label_budget(self) -> int | str:
        return transfer.ALL if self.labels_per_class is None else self.labels_per_class

    @property
    def label_budgets(self) -> tuple[int | str, ...]:
        """The transfer study's budgets: the standard ones and the build's own."""
        budgets = transfer.label_budgets(self.quick)
        return budgets if self.label_budget in budgets else (self.label_budget, *budgets)

    @property
    def checkpoint_dir(self) -> Path:
        return self.checkpoints or self.out.parent / "checkpoints"

    @property
    def student_seeds(self) -> tuple[int, ...]:
        count = self.seeds if self.seeds is not None else (1 if self.quick else DEFAULT_SEEDS)
        return tuple(self.seed + k for k in range(count))


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_checkpoint(result: TrainResult, task: Task, path: Path, data_seed: int = 0, **provenance) -> None:
    """Weights as safetensors (no pickle) and, beside them, what rebuilds the model, the seed of the
    data split it was trained on (a later search must validate on rows it never trained on) and
    `provenance` (the build's `quick` and `synthetic`: a transfer checks its source by them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, str(path.with_suffix(".safetensors")))
    path.with_suffix(".json").write_text(
        json.dumps(
            {
                "family": task.family,
                "architecture": task.model_class.__name__,
                "config": config_to_json(result.model.config),
                "data_seed": data_seed,
                **provenance,
                "best_val_metric": result.best_metric,
                "history": result.history,
            },
            indent=2,
        )
    )


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
    return {
        "epochs_run": result.epochs_run,
        "seconds": round(result.seconds, 1),
        "precision": result.precision,
        "best_val_metric": round(result.best_metric, 5),
        "history": result.history,
    }


@dataclass
class _Trained:
    full: TrainResult
    # Per student seed: the student distilled from `full`, and the same student (same initial
    # weights, same batch order) trained without the teacher. The comparison is paired by seed.
    distilled_runs: list[TrainResult]
    baseline_runs: list[TrainResult]
    seeds: tuple[int, ...]
    served: int  # the index of the distilled run that becomes the variants: the best on validation
    extra: dict = dataclasses.field(default_factory=dict)  # more of the manifest's `training` (transfer)
    artifacts: dict = dataclasses.field(default_factory=dict)  # more preprocessing artifacts (cold start)

    @property
    def label_seed(self) -> int | None:
        """The seed that drew a transferred family's labelled rows: the served full model's run's."""
        return self.extra.get("transfer", {}).get("seed")

    @property
    def distilled(self) -> TrainResult:
        return self.distilled_runs[self.served]

    @property
    def baseline(self) -> TrainResult:
        return self.baseline_runs[self.served]


def load_family_data(family: str, config: BuildConfig) -> Dataset:
    data = load_dataset(family, seed=config.seed, synthetic=config.synthetic)
    if config.quick and not config.synthetic and family in QUICK_SUBSETS:
        data = data.subset(*QUICK_SUBSETS[family], seed=config.seed)
    return data


def labelled(data: Dataset, config: BuildConfig, seed: int | None = None) -> Dataset:
    """`data` with the training rows the build's label budget allows, drawn with `seed` (the served full
    model's: default the build's); all of them but for a transferred family."""
    if get_task(data.family).transfer_from is None:
        return data
    subset = transfer.labelled_subset(data.train, config.label_budget, config.seed if seed is None else seed)
    return dataclasses.replace(data, train=subset)


def _settings(task: Task, kind: str, config: BuildConfig, seed: int | None = None) -> TrainConfig:
    return TrainConfig(
        **task.train_settings(kind, config.quick), seed=config.seed if seed is None else seed, device=config.device
    )


def _recipe(task: Task, config: BuildConfig) -> DistillConfig:
    return DistillConfig(**task.distill_settings(config.quick))


@dataclass(frozen=True)
class _Plan:
    """What one family's build weighs on the progress display, in estimated seconds of work: every
    training batch of its models (full, distilled, the student without a teacher; a transfer study's
    runs; with `compare_single_task`, a multi-task family's single-task models) at what one
    batch of that model costs here, and every variant exported (an evaluation pass over the test
    split, a third of a training step per batch, plus a second for export and parity)."""

    batch_s: dict[str, float]  # kind (and "distilled_with_teacher") -> seconds per training batch
    train_s: float  # all training batches of the family's three models
    export_s: float  # per variant

    after_training_s: float = 0.0  # the task's state fitted to the trained models (Task.after_training)

    @property
    def total_s(self) -> float:
        return self.train_s + self.after_training_s + len(KINDS) * len(PRECISIONS) * self.export_s


def plan(family: str, data: Dataset, config: BuildConfig, earlier: tuple[str, ...] = ()) -> _Plan:
    """`earlier`: the families this build trains first (a transfer source among them is not planned twice)."""
    task = get_task(family)
    batch_s, train_s = {}, 0.0
    for kind in KINDS:
        settings = _settings(task, kind, config)
        torch.manual_seed(config.seed)  # a throwaway model: training re-seeds before building its own
        batch_s[kind] = trainer.seconds_per_batch(task.build(kind, data), task, data.train, settings)
        if kind == "full" and task.transfer_from is not None:
            continue  # the transfer study below trains it
        runs = len(config.student_seeds) if kind == "distilled" else 1  # the students without the teacher
        train_s += runs * trainer.planned_steps(len(labelled(data, config).train), settings) * batch_s[kind]
    if task.transfer_from is not None:
        train_s += _plan_transfer(task, data, config, batch_s, source_planned=task.transfer_from in earlier)
    for single in task.single_tasks() if config.compare_single_task else ():  # a full-size model per head
        train_s += (
            trainer.planned_steps(len(single.rows(data.train)), _settings(task, "full", config)) * batch_s["full"]
        )
    # With the teacher: extra inputs cost the student a step each, and the teacher a forward pass (a
    # third of its step) for each extra input and, when it runs on the augmented views, each batch.
    recipe, student = _recipe(task, config), _settings(task, "distilled", config)
    teacher_passes = recipe.extra_ratio + (1.0 if student.augment else 0.0)
    batch_s["distilled_with_teacher"] = (
        batch_s["distilled"] * (1 + recipe.extra_ratio) + batch_s["full"] / 3 * teacher_passes
    )
    train_s += (
        len(config.student_seeds)
        * trainer.planned_steps(len(labelled(data, config).train), student)
        * batch_s["distilled_with_teacher"]
    )
    batches = -(-len(data.test) // _settings(task, "full", config).batch_size)
    return _Plan(
        batch_s,
        train_s,
        export_s=1.0 + batches * batch_s["full"] / 3,
        after_training_s=task.after_training_s(config.quick),
    )


def _source_checkpoint(task: Task, config: BuildConfig) -> Path:
    return config.checkpoint_dir / f"{task.transfer_from}_full"


def _plan_transfer(
    task: Task, data: Dataset, config: BuildConfig, batch_s: dict[str, float], source_planned: bool
) -> float:
    """The transfer study's work (every path, budget and seed) and, when the source checkpoint is
    missing and the build does not train the source family first, the source's full model, trained
    first. Fills `batch_s` per path."""
    seconds = 0.0
    source = get_task(task.transfer_from)
    missing = not _source_checkpoint(task, config).with_suffix(".safetensors").exists()
    if missing and not source_planned:
        source_data = load_family_data(task.transfer_from, config)
        settings = _settings(source, "full", config)
        torch.manual_seed(config.seed)
        batch_s["source"] = trainer.seconds_per_batch(
            source.build("full", source_data), source, source_data.train, settings
        )
        seconds += trainer.planned_steps(len(source_data.train), settings) * batch_s["source"]
    for path in transfer.PATHS:
        torch.manual_seed(config.seed)
        model = task.build("full", data)
        if path == "frozen":
            transfer.freeze_backbone(model)
        settings = transfer.schedule(task, path, len(data.train), config.quick, config.seed, config.device)
        batch_s[path] = trainer.seconds_per_batch(model, task, data.train, settings)
    for budget in config.label_budgets:
        for seed in config.student_seeds:
            rows = len(transfer.labelled_subset(data.train, budget, seed))
            for path in transfer.PATHS:
                settings = transfer.schedule(task, path, rows, config.quick, seed, config.device)
                weight = transfer.run_weight(batch_s, path, rows, len(data.val), settings)
                seconds += trainer.planned_steps(rows, settings) * weight
    return seconds


def _transfer_full(task: Task, data: Dataset, config: BuildConfig, progress: Progress, plan_: _Plan):
    """The transferred family's full model (the study's best path at the build's label budget) and
    what the manifest records about it."""
    checkpoint = _source_checkpoint(task, config)
    if not checkpoint.with_suffix(".safetensors").exists():
        source = get_task(task.transfer_from)
        progress.log(
            f"[{task.family}] no source checkpoint {checkpoint}.safetensors: training the {task.transfer_from} "
            f"family's full model first (`flexserve train --family {task.transfer_from}` builds that whole family)"
        )
        source_data = load_family_data(task.transfer_from, config)
        torch.manual_seed(config.seed)
        result = train(
            source.build("full", source_data),
            source,
            source_data.train,
            source_data.val,
            _settings(source, "full", config),
            f"{task.transfer_from}_full (the source)",
            progress=progress,
            batch_weight=plan_.batch_s["source"],
        )
        save_checkpoint(result, source, checkpoint, config.seed, quick=config.quick, synthetic=config.synthetic)
    weights = checkpoint.with_suffix(".safetensors")
    meta = json.loads(checkpoint.with_suffix(".json").read_text())
    for flag in ("quick", "synthetic"):  # older checkpoints do not say: taken as they are
        if flag in meta and meta[flag] != getattr(config, flag):
            raise ValueError(
                f"the source checkpoint {weights} comes from a build with {flag}={meta[flag]}, this one has "
                f"{flag}={getattr(config, flag)}: train the source for this build with `flexserve train --family "
                f"{task.transfer_from}{' --quick' if config.quick else ''}` into the same --checkpoints folder, "
                "or point --checkpoints at one that holds it"
            )
    source_model = load_checkpoint(get_task(task.transfer_from), checkpoint)
    progress.log(f"[{task.family}] transferring from {weights} (the {task.transfer_from} family's full model)")
    budgets = config.label_budgets
    runs = transfer.study(
        task, data, source_model, budgets, config.student_seeds, config.quick, config.device, progress, plan_.batch_s
    )
    path, chosen = transfer.choose(runs, config.label_budget, task.higher_is_better)
    progress.log(
        f"[{task.family}] full model: the {path} path at {config.label_budget} labels/class (seed {chosen.seed}), "
        f"the best mean validation {task.metric_name}"
    )
    info = {
        "source": {
            "family": task.transfer_from,
            "checkpoint": weights.name,
            "sha256": sha256_file(weights),
            "best_val_metric": meta.get("best_val_metric"),
        },
        "label_budget": config.label_budget,
        "path": path,
        "seed": chosen.seed,
        "study": transfer.summary(runs, budgets, config.student_seeds, task, data),
    }
    return chosen.result, {"transfer": info}


TYPICAL_ROUNDS = 200  # ONNX Runtime timings of the multi-task comparison, interleaved


def _typical_row(task: Task, split) -> dict[str, np.ndarray]:
    """One real test row of median length (a typical request to a text model)."""
    lengths = split.inputs["LENGTHS"]
    row = int(np.argsort(lengths)[len(lengths) // 2])
    return task.collate({k: v[row : row + 1] for k, v in split.inputs.items()})


def _latencies_ms(models: dict[str, torch.nn.Module], task: Task, data: Dataset) -> dict[str, float]:
    """p50 ms of one typical request per model, fp32 ONNX on one ONNX Runtime thread (as serving runs a
    request), the models timed round-robin so that a noisy neighbour slows them alike."""
    feed = _typical_row(task, data.test)
    times: dict[str, list[float]] = {name: [] for name in models}
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for name, model in models.items():
            export_onnx(model.cpu().eval(), task, data.test.take(np.arange(2)).inputs, Path(tmp) / f"{name}.onnx")
            sessions[name] = open_session(Path(tmp) / f"{name}.onnx", threads=1)
        for round_index in range(TYPICAL_ROUNDS + 5):
            for name, session in sessions.items():
                started = time.perf_counter()
                session.run(None, feed)
                if round_index >= 5:
                    times[name].append((time.perf_counter() - started) * 1e3)
    return {name: round(float(np.median(samples)), 4) for name, samples in times.items()}


def _multitask_summary(
    task: Task, data: Dataset, config: BuildConfig, full: TrainResult, progress: Progress, plan_: _Plan
) -> dict:
    """A multi-task family's `training.multitask`: how it learned and each head's test metric; with
    `config.compare_single_task`, also each head as a single-task model of the same encoder size, trained
    with the full model's settings on the rows it labels (its test metric and parameters), and the
    latency of one request answering both (one multi-task pass against one pass of each)."""
    own = task.head_metrics(predict(full.model, data.test, task), data.test.targets)
    summary = {
        "loss_weights": dict(task.LOSS_WEIGHTS),
        "batches": "random draws of all training rows: reviews and plot summaries mixed as in the data",
        "multitask": {**own, "params": count_params(full.model)},
    }
    if not config.compare_single_task:
        progress.log(f"[{task.family}] multi-task {own}; no single-task comparison (--compare-single-task)")
        return {"multitask": summary}
    settings = _settings(task, "full", config)
    singles, models = {}, {"multitask": full.model}
    for single in task.single_tasks():
        torch.manual_seed(config.seed)
        result = train(
            single.build("full", data),
            single,
            single.rows(data.train),
            single.rows(data.val),
            settings,
            f"{single.family} (single task)",
            progress=progress,
            batch_weight=plan_.batch_s["full"],
        )
        test = single.rows(data.test)
        singles[single.head] = {
            "metric": single.metric_name,
            "test_metric": single.metric(predict(result.model, test, single), test.targets),
            "params": count_params(result.model),
            "epochs_run": result.epochs_run,
            "seconds": round(result.seconds, 1),
        }
        models[single.head] = result.model
    latency = _latencies_ms(models, task, data)
    for head in singles:
        singles[head]["latency_ms"] = latency[head]
    summary["multitask"]["latency_ms"] = latency["multitask"]
    progress.log(
        f"[{task.family}] multi-task {own} with {count_params(full.model):,} params, {latency['multitask']} ms; "
        f"single-task {singles}"
    )
    summary["single_task"] = singles
    summary["latency"] = f"p50 of one typical request, fp32 ONNX, one ONNX Runtime thread, {TYPICAL_ROUNDS} rounds"
    return {"multitask": summary}


def train_models(family: str, data: Dataset, config: BuildConfig, progress: Progress, plan_: _Plan) -> _Trained:
    task = get_task(family)

    def seeded(kind: str, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)  # the initial weights are part of what a seed reproduces
        return task.build(kind, data)

    weight = plan_.batch_s
    extra: dict = {}
    if task.transfer_from is not None:
        full, extra = _transfer_full(task, data, config, progress, plan_)
    else:
        full = train(
            seeded("full", config.seed),
            task,
            data.train,
            data.val,
            _settings(task, "full", config),
            f"{family}_full",
            progress=progress,
            batch_weight=weight["full"],
        )
    if task.single_tasks():
        extra.update(_multitask_summary(task, data, config, full, progress, plan_))
    # The students learn from the labels the full model had (its run's draw of the label budget).
    data = labelled(data, config, extra.get("transfer", {}).get("seed"))
    seeds = config.student_seeds
    distilled_runs, baseline_runs = [], []
    for seed in seeds:
        suffix = f" (seed {seed})" if len(seeds) > 1 else ""
        settings = _settings(task, "distilled", config, seed)
        distilled_runs.append(
            distill(
                seeded("distilled", seed),
                full.model,
                task,
                data,
                settings,
                _recipe(task, config),
                f"{family}_distilled{suffix}",
                progress=progress,
                batch_weight=weight["distilled_with_teacher"],
            )
        )
        baseline_runs.append(
            train(
                seeded("distilled", seed),
                task,
                data.train,
                data.val,
                settings,
                f"{family}_student_without_distillation{suffix}",
                progress=progress,
                batch_weight=weight["distilled"],
            )
        )
    sign = 1.0 if task.higher_is_better else -1.0
    served = max(range(len(seeds)), key=lambda i: sign * distilled_runs[i].best_metric)  # chosen on validation
    trained = _Trained(full, distilled_runs, baseline_runs, seeds, served, extra)
    models = {}
    for kind, result in (("full", trained.full), ("distilled", trained.distilled)):
        save_checkpoint(
            result,
            task,
            config.checkpoint_dir / f"{family}_{kind}",
            config.seed,
            quick=config.quick,
            synthetic=config.synthetic,
        )
        models[kind] = result.model
    # After the checkpoints: it may extend the models with what the variants carry (cold start's prior).
    summary, trained.artifacts = task.after_training(data, models, config.quick, config.seed, progress)
    trained.extra.update(summary)
    return trained


def export_variants(
    family: str,
    data: Dataset,
    models: dict[str, torch.nn.Module],
    repo: Path,
    seed: int,
    progress: Progress,
    export_s: float,
    training: str | None = None,
) -> list[VariantEntry]:
    """Every kind (of `models`) x precision as ONNX, parity-checked against PyTorch, evaluated in ONNX
    Runtime, stored. `training`: how the models were trained, where not centrally ("federated")."""
    task = get_task(family)
    inputs, outputs = task.input_specs(data), [task.output_spec()]
    parity_split = data.test.take(np.arange(min(PARITY_ROWS, len(data.test))))
    calibration = _calibration_feeds(task, data, seed) if task.static_int8 else None
    variants = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, model in models.items():
            model = model.cpu().eval()
            files = {precision: Path(tmp) / f"{kind}_{precision}.onnx" for precision in PRECISIONS}
            export_onnx(model, task, data.test.take(np.arange(2)).inputs, files["fp32"])
            to_fp16(files["fp32"], files["fp16"])
            if calibration is not None:  # static QDQ (see Task.static_int8)
                to_int8_static(files["fp32"], files["int8"], calibration, keep_first_layer=True)
            else:
                to_int8_dynamic(files["fp32"], files["int8"])
            for precision, path in files.items():
                name = variant_name(family, kind, precision)
                parity = check_parity(model, path, task, parity_split, precision)
                predicted = run_onnx(open_session(path, threads=2), data.test, task)
                metric = task.metric(predicted, data.test.targets)
                se = task.metric_se(predicted, data.test.targets)
                heads = task.head_metrics(predicted, data.test.targets)
                stored = repository.add_variant(repo, name, path, inputs, outputs, task.rows_per_request(data))
                variants.append(
                    VariantEntry(
                        name=name,
                        kind=kind,
                        precision=precision,
                        **stored,
                        params=count_params(model),
                        metrics={task.metric_name: metric, **heads},
                        standard_errors={task.metric_name: se},
                        parity=parity,
                        training=training,
                    )
                )
                progress.log(
                    f"[{family}] {name}: test {task.metric_name} {metric:.4f} ± {se:.4f} (ONNX Runtime), "
                    f"parity max |diff| {parity['max_abs_diff']:.2g}, {stored['size_bytes'] / 1e6:.2f} MB"
                )
                progress.update(export_s, note=f"exported {name}")
    return variants


def family_section(
    family: str, data: Dataset, config: BuildConfig, trained: _Trained, variants: list[VariantEntry], stage: Path
) -> FamilySection:
    """The family's manifest section; writes its preprocessing artifacts beside the variants in `stage`."""
    task, repo = get_task(family), stage

    measured: dict[int, float] = {}  # by run: the served students are also in the per-seed lists

    def test_metric(result: TrainResult) -> float:
        if id(result) not in measured:
            measured[id(result)] = task.metric(predict(result.model, data.test, task), data.test.targets)
        return measured[id(result)]

    def summary(result: TrainResult) -> dict:
        return {**_training_summary(result), "test_metric_pytorch": test_metric(result)}

    payloads = {name: data.preprocessing[name] for name in task.preprocessing_artifacts} | trained.artifacts
    preprocessing = {
        name: repository.write_json_artifact(repo, f"{family}_{name}.json", payload)
        for name, payload in payloads.items()
    }
    return FamilySection(
        task=task.problem,
        metric=task.metric_name,
        higher_is_better=task.higher_is_better,
        dataset={
            "source": data.source,
            "seed": config.seed,
            "quick": config.quick,
            "rows": {
                "train": len(labelled(data, config, trained.label_seed).train),
                "val": len(data.val),
                "test": len(data.test),
            },
        },
        inputs=tuple(task.input_specs(data)),
        outputs=(task.output_spec(),),
        rows_per_request=task.rows_per_request(data),
        contract=task.serving_contract(data),
        preprocessing=preprocessing,
        training={
            "full": summary(trained.full),
            "distilled": summary(trained.distilled),
            "student_without_distillation": summary(trained.baseline),
            # How the students learned from the teacher (the recipe chosen on validation, README).
            "distillation": {
                **dataclasses.asdict(_recipe(task, config)),
                "augment": _settings(task, "distilled", config).augment,
            },
            # Every student seed's test metric (PyTorch), paired by seed: the report's distillation gain.
            "seeds": {
                "seeds": list(trained.seeds),
                "served": trained.seeds[trained.served],
                "distilled": [test_metric(r) for r in trained.distilled_runs],
                "student_without_distillation": [test_metric(r) for r in trained.baseline_runs],
            },
            **trained.extra,
        },
        variants=tuple(variants),
        adapter=task.adapter,
    )


def build_family(family: str, config: BuildConfig, data: Dataset, progress: Progress, plan_: _Plan) -> FamilySection:
    """Train, distil, export and evaluate one family; write its variants into the repository."""
    started = time.perf_counter()
    progress.log(
        f"[{family}] {data.source}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test rows"
    )
    trained = train_models(family, data, config, progress, plan_)
    # A new repository version: the live one plus this family, switched to when complete.
    with new_version(config.out) as stage:
        models = {"full": trained.full.model, "distilled": trained.distilled.model}
        variants = export_variants(family, data, models, stage, config.seed, progress, plan_.export_s)
        section = family_section(family, data, config, trained, variants, stage)
        repository.write_family(stage, family, section)
    progress.log(f"[{family}] done in {time.perf_counter() - started:.0f}s: version {version_of(config.out)}")
    return section


def build(families: list[str], config: BuildConfig) -> Manifest:
    """Build `families` into the repository `config.out` (other families stay), with one progress
    display over the whole build, in estimated seconds of work (see `_Plan`), so the ETA holds."""
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown family {unknown[0]!r}: expected one of {', '.join(FAMILIES)} or all")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()
    datasets = {family: load_family_data(family, config) for family in families}
    plans = {
        family: plan(family, data, config, tuple(families[: families.index(family)]))
        for family, data in datasets.items()
    }
    with Progress(sum(p.total_s for p in plans.values()), "train", unit="s of work", rate=False) as progress:
        for family, data in datasets.items():
            build_family(family, config, data, progress, plans[family])
        manifest = read_manifest(config.out)
        if config.register:
            tag = repository.register_in_bentoml(config.out, manifest)
            progress.log(f"registered in the BentoML model store as {tag} (`bentoml models list`)")
        progress.log(f"model repository: {config.out} ({time.perf_counter() - started:.0f}s)")
    return manifest
