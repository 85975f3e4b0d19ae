import torch
import torch.nn.functional as F

from training.distill import kd_classification_loss, kd_regression_loss


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
