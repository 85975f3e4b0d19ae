"""The multi-task text family's parts: its loss over two heads with rows one head does not label,
its metric, the data's targets, distillation per head, and the adapter's answer per head."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contract.manifest import FamilySection, TensorSpec
from serving.families import family_adapter
from serving.families.base import Decoded
from training.data import NO_LABEL, synthetic_multitask_texts
from training.distill import kd_classification_loss, kd_multihead_loss
from training.tasks import SingleHeadTextTask, balanced_accuracy, get_task

task = get_task("text_multitask")


def test_the_loss_is_each_heads_cross_entropy_over_the_rows_it_labels():
    logits = torch.randn(5, 4)
    targets = torch.tensor([[1, 1], [0, 1], [NO_LABEL, 0], [1, 1], [NO_LABEL, 0]])
    reviews = targets[:, 0] != NO_LABEL
    expected = F.cross_entropy(logits[reviews][:, :2], targets[reviews, 0]) + F.cross_entropy(
        logits[:, 2:], targets[:, 1]
    )
    assert task.loss(logits, targets).item() == pytest.approx(expected.item())


def test_a_batch_of_plot_summaries_alone_learns_subjectivity_only():
    logits = torch.randn(3, 4, requires_grad=True)
    targets = torch.tensor([[NO_LABEL, 0]] * 3)
    loss = task.loss(logits, targets)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(F.cross_entropy(logits[:, 2:], targets[:, 1]).item())
    loss.backward()
    assert torch.all(logits.grad[:, :2] == 0) and torch.any(logits.grad[:, 2:] != 0)


def test_the_metric_is_the_mean_of_polarity_accuracy_and_subjectivity_balanced_accuracy():
    # 4 reviews (3 polarities right), 2 plots: subjectivity recalls 1/2 (plots) and 4/4 (reviews).
    targets = np.array([[1, 1], [0, 1], [1, 1], [0, 1], [NO_LABEL, 0], [NO_LABEL, 0]])
    logits = np.zeros((6, 4), np.float32)
    logits[[0, 2], 1] = logits[[1], 0] = logits[[3], 1] = 1  # polarity: rows 0-2 right, row 3 wrong
    logits[:5, 3] = 1  # subjectivity: every row but the last called a review
    logits[5, 2] = 1
    heads = task.head_metrics(logits, targets)
    assert heads == {"polarity_accuracy": 0.75, "subjectivity_balanced_accuracy": 0.75}
    assert task.metric(logits, targets) == 0.75
    # Only the classes present count: one class, recall 3/4 (a class only predicted adds nothing).
    assert balanced_accuracy(np.array([1, 1, 1, 0]), np.array([1, 1, 1, 1])) == 0.75
    assert 0 < task.metric_se(logits, targets) < 0.5


def test_targets_label_polarity_on_reviews_only_and_subjectivity_everywhere():
    data = synthetic_multitask_texts(n=200)
    targets = np.concatenate([data.train.targets, data.val.targets, data.test.targets])
    plots = targets[:, 1] == 0
    assert plots.any() and (targets[plots, 0] == NO_LABEL).all() and (targets[~plots, 0] >= 0).all()
    single = SingleHeadTextTask("polarity")
    rows = single.rows(data.test)
    assert rows.targets.ndim == 1 and len(rows) == int((data.test.targets[:, 1] == 1).sum())


def test_distillation_softens_each_head_on_its_own():
    student, teacher = torch.randn(6, 4), torch.randn(6, 4)
    targets = torch.tensor([[1, 1], [0, 1], [NO_LABEL, 0], [1, 1], [0, 1], [NO_LABEL, 0]])
    got = kd_multihead_loss(student, teacher, targets, task, temperature=2.0, alpha=1.0)
    per_head = sum(
        kd_classification_loss(student[:, g], teacher[:, g], teacher[:, g].argmax(1), 2.0, 1.0)
        for g in (slice(0, 2), slice(2, 4))
    )
    assert got.item() == pytest.approx(per_head.item())
    hard = kd_multihead_loss(student, teacher, targets, task, temperature=2.0, alpha=0.0)
    assert hard.item() == pytest.approx(task.loss(student, targets).item())


def test_one_answer_per_text_holds_both_heads():
    section = FamilySection(
        task="classification",
        metric="mean_accuracy",
        higher_is_better=True,
        inputs=(TensorSpec("TOKENS", "int64", (-1, -1)), TensorSpec("LENGTHS", "int64", (-1,))),
        outputs=(TensorSpec("LOGITS", "float32", (-1, 4)),),
        variants=(),
        contract={
            "heads": [
                {"name": "polarity", "columns": [0, 2], "labels": ["rotten", "fresh"]},
                {"name": "subjectivity", "columns": [2, 4], "labels": ["plot", "review"]},
            ],
            "tokenizer": {"pattern": r"\w+", "lowercase": True, "max_tokens": 8, "pad_id": 0, "unk_id": 1},
        },
        adapter="multitask_text",
    )
    family = family_adapter("text_multitask", section, lambda name: ["<pad>", "<unk>", "good"])
    decoded = family.decode({"texts": ["good good", "plot"]})
    assert decoded.rows == 2
    logits = np.array([[0.0, 3.0, 0.0, 2.0], [1.0, 0.0, 4.0, 0.0]], np.float32)
    answer = family.encode([logits], Decoded(decoded.feeds, 2))["predictions"]
    assert [a["polarity"]["label"] for a in answer] == ["fresh", "rotten"]
    assert [a["subjectivity"]["label"] for a in answer] == ["review", "plot"]
    assert answer[1]["subjectivity"]["probability"] == pytest.approx(np.exp(4) / (np.exp(4) + 1), abs=1e-6)


def test_without_the_comparison_the_summary_keeps_each_head_and_trains_nothing_more(monkeypatch):
    from training import pipeline

    data = synthetic_multitask_texts()
    torch.manual_seed(0)
    model = task.build("distilled", data).eval()
    monkeypatch.setattr(pipeline, "train", lambda *_, **__: pytest.fail("trained a single-task model"))
    logs = []
    progress = SimpleNamespace(log=logs.append)
    summary = pipeline._multitask_summary(
        task, data, pipeline.BuildConfig(), SimpleNamespace(model=model), progress, None
    )
    info = summary["multitask"]
    assert set(info) == {"loss_weights", "batches", "multitask"}  # no single_task, no latency
    assert set(info["multitask"]) == {"polarity_accuracy", "subjectivity_balanced_accuracy", "params"}
    assert info["multitask"]["params"] == sum(p.numel() for p in model.parameters())
    assert "--compare-single-task" in logs[0]
