"""Knowledge distillation: the student learns from the trained teacher.

Classification: KL divergence between temperature-softened teacher and student
distributions (scaled by T^2, Hinton et al. 2015) mixed with cross-entropy on the labels.
Regression (the recommender): the teacher's predictions as soft targets mixed with the
ratings.

Two ingredients from the literature, for the recipes `flexserve distill-search` tries
(training/recipes.py; each family's own recipe is `Task.distill_settings`):
- teacher-labelled extra inputs, which is where a teacher knows more than the labels do: the
  recommender's (user, item) pairs nobody rated, the image family's mixups of two training
  images (`Task.teacher_inputs`);
- consistent views ("a good teacher is patient and consistent", Beyer et al., CVPR'22): with
  the training settings' `augment` (TrainConfig), the teacher runs on each batch as the
  student sees it (the same shifted, mirrored image), rather than once on the unaugmented
  split. No family's build augments today: in 4 epochs it cost the image student more than
  the teacher gave back (README, "Distillation recipes").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.data import Dataset
from training.progress import Progress
from training.tasks import Task
from training.trainer import TrainConfig, TrainResult, predict, resolve_device, resolve_precision, train


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = 4.0  # softens the teacher's logits so the wrong-class ranking carries signal
    alpha: float = 0.7  # weight of the teacher's targets; 1 - alpha goes to the hard labels
    extra_ratio: float = 0.0  # teacher-labelled extra inputs (Task.teacher_inputs) per labelled row

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be within [0, 1], got {self.alpha!r}")
        if not self.extra_ratio >= 0:
            raise ValueError(f"extra_ratio must be >= 0, got {self.extra_ratio!r}")


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, per row on average."""
    return F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )


def kd_classification_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    soft = soft_kl(student_logits, teacher_logits, temperature)
    return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def kd_multihead_loss(
    student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, task: Task, temperature: float, alpha: float
) -> torch.Tensor:
    """A multi-task classifier's: each head's softened teacher distribution on every row (the teacher
    has an opinion on a plot summary's polarity too), and the task's own loss on the labels."""
    soft = sum(soft_kl(student[:, g], teacher[:, g], temperature) for g in task.output_groups(student))
    return alpha * temperature**2 * soft + (1 - alpha) * task.loss(student, targets)


def soft_target_loss(student: torch.Tensor, teacher: torch.Tensor, task: Task, temperature: float) -> torch.Tensor:
    """The teacher's targets alone (no labels): for extra inputs nobody labelled; each head on its own."""
    if task.problem == "classification":
        groups = task.output_groups(student)
        return temperature**2 * sum(soft_kl(student[:, g], teacher[:, g], temperature) for g in groups)
    return F.mse_loss(student, teacher)


def kd_regression_loss(
    student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, alpha: float
) -> torch.Tensor:
    return alpha * F.mse_loss(student, teacher) + (1 - alpha) * F.mse_loss(student, targets)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    task: Task,
    data: Dataset,
    config: TrainConfig,
    distill_config: DistillConfig,
    name: str,
    progress: Progress | None = None,
    batch_weight: float = 1.0,
) -> TrainResult:
    """Train `student` against `teacher`'s outputs: computed once on the training split, or on
    every batch as the student sees it when `config.augment` is on."""
    device = resolve_device(config.device)
    teacher.to(device).eval()
    precision = resolve_precision(config.precision, device)
    online = config.augment
    teacher_outputs = None if online else torch.from_numpy(predict(teacher, data.train, task, precision=precision))
    rng = np.random.default_rng(config.seed + 1)
    T, alpha = distill_config.temperature, distill_config.alpha

    @torch.no_grad()
    def teach(tensors: list[torch.Tensor]) -> torch.Tensor:
        return teacher(*tensors).float()

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor, index: np.ndarray, tensors: list) -> torch.Tensor:
        teacher_batch = teach(tensors) if online else teacher_outputs[index].to(outputs.device)
        if task.problem == "classification" and len(task.output_groups(outputs)) > 1:
            loss = kd_multihead_loss(outputs, teacher_batch, targets, task, T, alpha)
        elif task.problem == "classification":
            loss = kd_classification_loss(outputs, teacher_batch, targets, T, alpha)
        else:
            loss = kd_regression_loss(outputs, teacher_batch, targets, alpha)
        extra = int(len(index) * distill_config.extra_ratio)
        if extra:
            inputs = task.teacher_inputs(data, tensors, extra, rng)
            loss = loss + alpha * soft_target_loss(student(*inputs).float(), teach(inputs), task, T)
        return loss

    return train(
        student, task, data.train, data.val, config, name, loss_fn=loss_fn, progress=progress, batch_weight=batch_weight
    )
