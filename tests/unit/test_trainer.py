import pytest
import torch

from training.data import load_dataset
from training.tasks import get_task
from training.trainer import TrainConfig, predict, resolve_precision, train


def test_precision_choices_are_validated():
    with pytest.raises(ValueError, match="auto, bf16, fp16 or fp32"):
        resolve_precision("int4", torch.device("cpu"))
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cpu")) in ("bf16", "fp32")
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"


def _tiny_cnn_run(seed: int):
    task = get_task("cnn")
    data = load_dataset("cnn", synthetic=True, seed=0)
    from models.cnn import CNNConfig, ImageClassifier

    torch.manual_seed(seed)
    model = ImageClassifier(CNNConfig(widths=(8, 16), blocks_per_stage=1, stem_stride=2))
    config = TrainConfig(epochs=6, batch_size=32, lr=1e-2, seed=seed, precision="fp32", patience=10)
    return train(model, task, data.train, data.val, config, "test"), task, data


def test_training_learns_and_is_seeded():
    first, task, data = _tiny_cnn_run(seed=1)
    second, _, _ = _tiny_cnn_run(seed=1)
    accuracy = task.metric(predict(first.model, data.test, task), data.test.targets)
    assert accuracy > 0.5  # ten classes: chance is 0.1
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    assert len(first.history) == first.epochs_run == 6


def test_early_stopping_restores_the_best_epoch():
    result, task, data = _tiny_cnn_run(seed=2)
    val = task.metric(predict(result.model, data.val, task), data.val.targets)
    assert val == pytest.approx(result.best_metric)
    assert result.best_metric == max(h["val_accuracy"] for h in result.history)
