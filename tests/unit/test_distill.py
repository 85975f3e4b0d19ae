import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.cnn import CNNConfig, ImageClassifier
from training.data import load_dataset
from training.distill import DistillConfig, distill, kd_classification_loss, kd_regression_loss, soft_target_loss
from training.tasks import get_task
from training.trainer import TrainConfig, train


def test_kd_loss_is_pure_cross_entropy_when_the_student_matches_the_teacher():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
    labels = torch.tensor([0, 2])
    loss = kd_classification_loss(logits, logits.clone(), labels, temperature=4.0, alpha=0.7)
    torch.testing.assert_close(loss, 0.3 * F.cross_entropy(logits, labels))


def test_kd_loss_pulls_the_student_towards_the_teacher():
    teacher = torch.tensor([[3.0, 0.0, 0.0]])
    student = torch.zeros(1, 3, requires_grad=True)
    kd_classification_loss(student, teacher, torch.tensor([1]), temperature=2.0, alpha=1.0).backward()
    assert student.grad[0, 0] < 0  # gradient descent raises the teacher's favourite class


def test_kd_regression_mixes_teacher_and_ratings():
    student, teacher, ratings = torch.tensor([3.0]), torch.tensor([4.0]), torch.tensor([1.0])
    assert kd_regression_loss(student, teacher, ratings, alpha=0.5).item() == 0.5 * 1.0 + 0.5 * 4.0


def test_soft_targets_alone_are_the_teachers_distribution():
    teacher = torch.tensor([[2.0, 0.0, -1.0]])
    matched = soft_target_loss(teacher.clone(), teacher, get_task("cnn"), temperature=2.0)
    apart = soft_target_loss(torch.zeros(1, 3), teacher, get_task("cnn"), temperature=2.0)
    assert matched.item() == pytest.approx(0.0, abs=1e-6) and apart.item() > 0.1
    assert soft_target_loss(torch.tensor([3.0]), torch.tensor([4.5]), get_task("recsys"), 1.0).item() == 2.25
    # A multi-task model's heads are softened each on its own: the sum of the per-head losses.
    two_heads, teacher4 = torch.tensor([[0.5, 0.0, 1.0, -1.0]]), torch.tensor([[2.0, 0.0, -1.0, 1.0]])
    each = [soft_target_loss(two_heads[:, g], teacher4[:, g], get_task("cnn"), 2.0) for g in (slice(0, 2), slice(2, 4))]
    assert soft_target_loss(two_heads, teacher4, get_task("text_multitask"), 2.0).item() == pytest.approx(
        sum(each).item()
    )


@pytest.mark.parametrize(
    "field, value, accepted",
    [("temperature", 0.0, "> 0"), ("alpha", 1.5, "within \\[0, 1\\]"), ("extra_ratio", -1.0, ">= 0")],
)
def test_a_recipe_with_a_bad_setting_names_it(field, value, accepted):
    with pytest.raises(ValueError, match=f"{field} must be {accepted}"):
        DistillConfig(**{field: value})


class _Recorder(torch.nn.Module):
    """Wraps a model and keeps every input batch it sees."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, images):
        self.seen.append(images.detach().clone())
        return self.model(images)


def _tiny_cnn(seed):
    torch.manual_seed(seed)
    return ImageClassifier(CNNConfig(widths=(8,), blocks_per_stage=1, stem_stride=2))


@pytest.mark.parametrize("augment", [False, True])
def test_the_teacher_labels_the_very_views_the_student_trains_on(augment):
    task = get_task("cnn")
    data = load_dataset("cnn", synthetic=True, seed=0)
    teacher, student = _Recorder(_tiny_cnn(0)), _Recorder(_tiny_cnn(1))
    config = TrainConfig(epochs=1, batch_size=32, seed=3, precision="fp32", max_steps_per_epoch=3, augment=augment)
    distill(student, teacher, task, data, config, DistillConfig(), "test")
    trained = student.seen[:3]  # then the validation pass
    if augment:  # online: the teacher ran on each batch as the student saw it
        assert len(teacher.seen) == 3
        for seen_by_teacher, seen_by_student in zip(teacher.seen, trained, strict=True):
            torch.testing.assert_close(seen_by_teacher, seen_by_student)
    else:  # offline: once over the unaugmented training split, before the first step
        assert sum(len(batch) for batch in teacher.seen) == len(data.train)
        train_images = torch.from_numpy(data.train.inputs["IMAGES"])
        assert all(any(torch.equal(row, image) for image in train_images) for row in trained[0][:4])


def test_extra_inputs_are_labelled_by_the_teacher_and_trained_on():
    task = get_task("cnn")
    data = load_dataset("cnn", synthetic=True, seed=0)
    teacher, student = _Recorder(_tiny_cnn(0)), _Recorder(_tiny_cnn(1))
    config = TrainConfig(epochs=1, batch_size=16, seed=3, precision="fp32", max_steps_per_epoch=2)
    distill(student, teacher, task, data, config, DistillConfig(extra_ratio=0.5), "test")
    extras = teacher.seen[-2:]  # after the precomputed pass: one batch of mixups per step
    assert [len(batch) for batch in extras] == [8, 8]
    for mixed, trained in zip(extras, (student.seen[1], student.seen[3]), strict=True):
        torch.testing.assert_close(mixed, trained)  # the student trained on exactly what the teacher labelled


def test_with_and_without_the_teacher_a_seed_sees_the_same_augmented_views():
    task = get_task("cnn")
    data = load_dataset("cnn", synthetic=True, seed=0)
    config = TrainConfig(epochs=1, batch_size=32, seed=5, precision="fp32", max_steps_per_epoch=3, augment=True)
    distilled, alone = _Recorder(_tiny_cnn(1)), _Recorder(_tiny_cnn(1))
    distill(distilled, _tiny_cnn(0), task, data, config, DistillConfig(extra_ratio=1.0), "with")
    train(alone, task, data.train, data.val, config, "without")
    with_teacher = distilled.seen[0:6:2]  # each step's batch, then its mixups
    for a, b in zip(with_teacher, alone.seen[:3], strict=True):
        torch.testing.assert_close(a, b)
    first_batch = np.random.default_rng(5).permutation(len(data.train))[:32]  # the trainer's batch order
    unaugmented = torch.from_numpy(data.train.inputs["IMAGES"][first_batch])
    assert not torch.equal(alone.seen[0], unaugmented)
    moved = [not torch.equal(view, image) for view, image in zip(alone.seen[0], unaugmented, strict=True)]
    assert sum(moved) > 24  # most views are shifted or mirrored (an empty or symmetric image may not move)
