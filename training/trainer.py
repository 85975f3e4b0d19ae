"""The training loop shared by every family and every variant.

AdamW with a one-cycle learning-rate schedule, early stopping on the validation metric
(the best weights are restored), mixed precision through `torch.autocast` (bfloat16 on CPUs
with native bf16 support, float16 with a gradient scaler on CUDA), seeded. Progress (batches
done of those planned, with an ETA) goes to a `Progress` display, the whole build's when the
pipeline passes it; each epoch ends with one summary line.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from training.data import Split
from training.progress import Progress
from training.tasks import Task


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10  # an upper bound: early stopping usually ends sooner
    batch_size: int = 128
    lr: float = 3e-3  # peak of the one-cycle schedule
    weight_decay: float = 0.05  # AdamW's decoupled decay
    patience: int = 3  # epochs without a better validation metric before stopping
    precision: str = "auto"  # auto | bf16 | fp16 | fp32; auto = bf16 on bf16-capable CPUs, fp16 on CUDA
    grad_clip: float = 1.0  # LSTMs blow up without it
    max_steps_per_epoch: int | None = None  # caps an epoch (the --quick run)
    augment: bool = False  # the task's training-time augmentation (Task.augment) on every batch
    # Fine-tuning: everything but `model.head` learns at this fraction of `lr` (1.0: one rate for all).
    backbone_lr_scale: float = 1.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class TrainResult:
    model: nn.Module
    best_metric: float
    epochs_run: int
    seconds: float
    precision: str
    history: list[dict] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported: expected auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """Pick the autocast dtype. bf16 on a CPU without native support is slower than fp32."""
    if precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ValueError(f"precision {precision!r} is not supported: expected auto, bf16, fp16 or fp32")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    return "bf16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def batches(split: Split, task: Task, batch_size: int, rng: np.random.Generator | None):
    """(row indices, collated numpy inputs, targets) per batch; shuffled when rng is given."""
    order = rng.permutation(len(split)) if rng is not None else np.arange(len(split))
    for start in range(0, len(split), batch_size):
        index = order[start : start + batch_size]
        yield index, task.collate({k: v[index] for k, v in split.inputs.items()}), split.targets[index]


def to_tensors(inputs: dict[str, np.ndarray], task: Task, device: torch.device) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(inputs[name])).to(device) for name in task.input_names]


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@torch.no_grad()
def predict(
    model: nn.Module,
    split: Split,
    task: Task,
    batch_size: int = 512,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> np.ndarray:
    """Model outputs (logits or ratings) for a whole split, in row order, returned as fp32.

    precision="bf16"/"fp16" runs under autocast: for validation and teacher targets during
    training, where it halves the cost; reported test metrics use the fp32 default.
    """
    device = device or next(model.parameters()).device
    model.eval()
    dtype = AUTOCAST_DTYPES.get(precision)
    outputs = []
    for _, inputs, _ in batches(split, task, batch_size, None):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            outputs.append(model(*to_tensors(inputs, task, device)).float().cpu().numpy())
    return np.concatenate(outputs)


def train_mode(model: nn.Module) -> None:
    """`model.train()`, except that a BatchNorm layer whose parameters are all frozen stays in eval
    mode: a frozen backbone keeps the statistics it was trained with, as well as its weights."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            if not any(p.requires_grad for p in module.parameters()):
                module.eval()


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """The trainable parameters (frozen ones are left out), the head's at `lr` and, with a
    `backbone_lr_scale`, the rest at `lr * backbone_lr_scale`."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if config.backbone_lr_scale == 1.0:
        return [{"params": trainable, "lr": config.lr}]
    head = {id(p) for p in model.head.parameters()}
    groups = [
        {"params": [p for p in trainable if id(p) in head], "lr": config.lr},
        {"params": [p for p in trainable if id(p) not in head], "lr": config.lr * config.backbone_lr_scale},
    ]
    return [g for g in groups if g["params"]]


def steps_per_epoch(rows: int, config: TrainConfig) -> int:
    steps = math.ceil(rows / config.batch_size)
    return min(steps, config.max_steps_per_epoch) if config.max_steps_per_epoch else steps


def planned_steps(rows: int, config: TrainConfig) -> int:
    """Batches a run takes if it does not stop early (what a progress display counts)."""
    return config.epochs * steps_per_epoch(rows, config)


def seconds_per_batch(model: nn.Module, task: Task, split: Split, config: TrainConfig) -> float:
    """One training step's forward and backward pass on this machine (the second of two: the first
    allocates), without an optimizer step: the model's weights are unchanged. The progress display
    weighs each model's batches by it, so that the ETA holds across models of very different cost."""
    device = resolve_device(config.device)
    dtype = AUTOCAST_DTYPES.get(resolve_precision(config.precision, device))
    model.to(device)
    train_mode(model)
    if task.channels_last:
        model.to(memory_format=torch.channels_last)
    index = np.arange(min(config.batch_size, len(split)))
    inputs = task.collate({k: v[index] for k, v in split.inputs.items()})
    target = torch.from_numpy(split.targets[index]).to(device)
    elapsed = 0.0
    for _ in range(2):
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            outputs = model(*to_tensors(inputs, task, device))
        task.loss(outputs.float(), target).backward()
        elapsed = time.perf_counter() - started
    model.zero_grad(set_to_none=True)
    return elapsed


def train(
    model: nn.Module,
    task: Task,
    train_split: Split,
    val_split: Split,
    config: TrainConfig,
    name: str,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, np.ndarray, list[torch.Tensor]], torch.Tensor] | None = None,
    progress: Progress | None = None,
    batch_weight: float = 1.0,
) -> TrainResult:
    """Train `model` in place and return it with its best validation weights.

    loss_fn(outputs, targets, row_index, input_tensors) overrides the task's hard-label loss
    (distillation looks the teacher's outputs up by row index, or runs the teacher on the same
    input tensors: the same augmented view the student saw). With `config.augment`, every batch
    goes through `task.augment` first, from its own seeded generator: two runs with the same seed
    see the same views whatever their loss does with its own randomness. `progress` counts
    `batch_weight` per batch (and, on an early stop, for the ones skipped); without one, the run
    shows its own, in batches.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    views = np.random.default_rng([config.seed, 1]) if config.augment else None
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    autocast_dtype = AUTOCAST_DTYPES.get(precision)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16" and device.type == "cuda")
    model.to(device)
    if task.channels_last:
        model.to(memory_format=torch.channels_last)
    loss_fn = loss_fn or (lambda outputs, targets, _, __: task.loss(outputs, targets))

    steps = steps_per_epoch(len(train_split), config)
    own = progress is None
    progress = progress or Progress(planned_steps(len(train_split), config), name, unit="batch")
    groups = param_groups(model, config)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    # OneCycleLR needs a few steps per phase; tiny (synthetic) runs simply stop before the end.
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=max(config.epochs * steps, 20), pct_start=0.25
    )
    sign = 1.0 if task.higher_is_better else -1.0
    best_score, best_state, stale, history = -math.inf, None, 0, []
    started = time.perf_counter()
    epoch = 0
    for epoch in range(1, config.epochs + 1):
        train_mode(model)
        epoch_start, total_loss, seen = time.perf_counter(), 0.0, 0
        for step, (index, inputs, targets) in enumerate(batches(train_split, task, config.batch_size, rng)):
            if step >= steps:
                break
            if views is not None:
                inputs = task.augment(inputs, views)
            tensors = to_tensors(inputs, task, device)
            target = torch.from_numpy(targets).to(device)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                outputs = model(*tensors)
            loss = loss_fn(outputs.float(), target, index, tensors)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            total_loss += loss.item() * len(index)
            seen += len(index)
            progress.update(batch_weight, note=f"{name} epoch {epoch}/{config.epochs} loss {total_loss / seen:.4f}")
        metric = task.metric(predict(model, val_split, task, device=device, precision=precision), val_split.targets)
        improved = sign * metric > best_score
        if improved:
            best_score, best_state, stale = sign * metric, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
        seconds = time.perf_counter() - epoch_start
        history.append(
            {
                "epoch": epoch,
                "loss": total_loss / max(seen, 1),
                f"val_{task.metric_name}": metric,
                "seconds": round(seconds, 2),
            }
        )
        progress.log(
            f"[{name}] epoch {epoch}/{config.epochs} loss {total_loss / max(seen, 1):.4f} "
            f"val_{task.metric_name} {metric:.4f}{' *' if improved else ''} ({seconds:.1f}s, {precision})"
        )
        if stale >= config.patience:
            progress.log(f"[{name}] early stop: no better val_{task.metric_name} for {stale} epochs")
            progress.update((config.epochs - epoch) * steps * batch_weight)  # the batches it will not run
            break
    if own:
        progress.close()
    assert best_state is not None, "training ran no epoch"
    model.load_state_dict(best_state)
    model.to(memory_format=torch.contiguous_format).eval()
    return TrainResult(model, sign * best_score, epoch, time.perf_counter() - started, precision, history)
