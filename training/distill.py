"""Knowledge distillation: the student learns from the trained teacher.

Classification: KL divergence between temperature-softened teacher and student
distributions (scaled by T^2, Hinton et al. 2015) mixed with cross-entropy on the labels.
Regression (the recommender): the teacher's predictions as soft targets mixed with the
ratings, plus teacher-scored (user, item) pairs nobody rated, which is where a teacher
knows more than the labels do.
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
from training.trainer import TrainConfig, TrainResult, predict, resolve_device, resolve_precision, to_tensors, train


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = 4.0  # softens the teacher's logits so the wrong-class ranking carries signal
    alpha: float = 0.7  # weight of the teacher's targets; 1 - alpha goes to the hard labels
    unlabelled_ratio: float = 1.0  # recommender: teacher-scored random pairs per labelled row


def kd_classification_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


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
    """Train `student` against `teacher`'s outputs on the training split (computed once)."""
    teacher.eval()
    precision = resolve_precision(config.precision, resolve_device(config.device))
    teacher_outputs = torch.from_numpy(predict(teacher, data.train, task, precision=precision))
    device = next(teacher.parameters()).device
    rng = np.random.default_rng(config.seed + 1)

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor, index: np.ndarray) -> torch.Tensor:
        teacher_batch = teacher_outputs[index].to(outputs.device)
        if task.problem == "classification":
            return kd_classification_loss(
                outputs, teacher_batch, targets, distill_config.temperature, distill_config.alpha
            )
        loss = kd_regression_loss(outputs, teacher_batch, targets, distill_config.alpha)
        extra = int(len(index) * distill_config.unlabelled_ratio)
        if extra and hasattr(task, "sample_unlabelled"):
            tensors = to_tensors(task.sample_unlabelled(data, extra, rng), task, device)
            with torch.no_grad():
                teacher_scores = teacher(*tensors).float()
            loss = loss + distill_config.alpha * F.mse_loss(student(*tensors).float(), teacher_scores)
        return loss

    return train(
        student, task, data.train, data.val, config, name, loss_fn=loss_fn, progress=progress, batch_weight=batch_weight
    )
