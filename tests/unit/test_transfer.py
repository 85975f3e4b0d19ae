"""Transfer learning's parts: the new head, freezing (weights and BatchNorm statistics), the
backbone's lower learning rate, label budgets, the study's choice, and the digits images."""

import numpy as np
import pytest
import torch

from models.cnn import CNNConfig, ImageClassifier
from training import transfer
from training.data import Split, digit_images, resize_bilinear, synthetic_digits
from training.tasks import get_task
from training.trainer import TrainConfig, TrainResult, param_groups, train

# Not narrower: 4-channel convolutions trained channels-last corrupt memory in oneDNN's backward here
# (torch 2.13 on this AMD EPYC: "double free or corruption"); 8 channels and up train fine.
SMALL = CNNConfig(num_classes=10, widths=(8, 16), blocks_per_stage=1)


def source_model(seed: int = 0) -> ImageClassifier:
    torch.manual_seed(seed)
    return ImageClassifier(SMALL).eval()


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_the_new_head_is_fresh_and_the_source_is_left_as_it_was():
    source = source_model()
    before = snapshot(source)
    model = transfer.transferred(source, "finetune", num_classes=3, seed=1)
    assert model.head[-1].out_features == 3
    for name, value in snapshot(model).items():
        if not name.startswith("head."):
            assert torch.equal(value, before[name]), name  # the backbone is the source's
    assert all(torch.equal(v, before[k]) for k, v in snapshot(source).items())  # a copy: the source is untouched
    again = transfer.transferred(source, "finetune", num_classes=3, seed=1)
    assert torch.equal(again.head[-1].weight, model.head[-1].weight)  # the head's initial weights are seeded


def test_a_frozen_backbone_does_not_change_in_training_and_its_head_does():
    data = synthetic_digits(n=120)
    model = transfer.transferred(source_model(), "frozen", num_classes=10, seed=0)
    before = snapshot(model)
    train(model, get_task("digits"), data.train, data.val, TrainConfig(epochs=2, batch_size=16, lr=1e-2), "frozen")
    after = snapshot(model)
    backbone = [k for k in before if not k.startswith("head.")]
    assert any("running_mean" in k for k in backbone)  # BatchNorm statistics are part of what must not move
    for name in backbone:
        assert torch.equal(after[name], before[name]), f"{name} changed"
    assert not torch.equal(after["head.2.weight"], before["head.2.weight"])
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.2.weight", "head.2.bias"]


def test_fine_tuning_trains_the_backbone_at_a_fraction_of_the_heads_rate():
    model = transfer.transferred(source_model(), "finetune", num_classes=10, seed=0)
    head, backbone = param_groups(model, TrainConfig(lr=1e-2, backbone_lr_scale=0.1))
    assert head["lr"] == 1e-2 and backbone["lr"] == pytest.approx(1e-3)
    assert {id(p) for p in head["params"]} == {id(p) for p in model.head.parameters()}
    assert len(head["params"]) + len(backbone["params"]) == len(list(model.parameters()))
    before = snapshot(model)
    data = synthetic_digits(n=120)
    config = TrainConfig(epochs=1, batch_size=16, lr=1e-2, backbone_lr_scale=0.1)
    train(model, get_task("digits"), data.train, data.val, config, "finetune")
    assert not torch.equal(snapshot(model)["stem.0.weight"], before["stem.0.weight"])  # the backbone learns too


def test_frozen_parameters_are_left_out_of_the_optimizer():
    model = transfer.transferred(source_model(), "frozen", num_classes=10, seed=0)
    (group,) = param_groups(model, TrainConfig(backbone_lr_scale=0.1))
    assert {id(p) for p in group["params"]} == {id(p) for p in model.head.parameters()}


def test_label_budgets_take_that_many_rows_of_each_class_seeded():
    labels = np.repeat(np.arange(4), [30, 12, 5, 40])
    split = Split({"X": np.arange(len(labels))}, labels)
    subset = transfer.labelled_subset(split, 10, seed=0)
    assert np.bincount(subset.targets).tolist() == [10, 10, 5, 10]  # a class with fewer keeps all of its rows
    assert np.array_equal(subset.inputs["X"], transfer.labelled_subset(split, 10, seed=0).inputs["X"])
    assert not np.array_equal(subset.inputs["X"], transfer.labelled_subset(split, 10, seed=1).inputs["X"])
    assert transfer.labelled_subset(split, transfer.ALL, seed=0) is split
    with pytest.raises(ValueError, match="labels per class must be an integer >= 1"):
        transfer.labelled_subset(split, 0, seed=0)


def test_a_small_label_budget_gets_more_epochs_up_to_the_cap():
    task = get_task("digits")
    settings = task.transfer_settings("scratch", quick=False)
    many = transfer.schedule(task, "scratch", rows=2000, quick=False, seed=0, device="cpu")
    few = transfer.schedule(task, "scratch", rows=100, quick=False, seed=0, device="cpu")
    assert many.epochs == settings["epochs"]
    assert few.epochs == settings["max_epochs"]
    assert transfer.schedule(task, "finetune", 100, False, 0, "cpu").backbone_lr_scale < 1.0


def run(path: str, budget, seed: int, val: float, test: float) -> transfer.Run:
    return transfer.Run(path, budget, seed, TrainResult(None, val, 1, 0.0, "fp32"), test)


def test_the_study_chooses_the_path_with_the_best_mean_validation_metric_and_its_best_seed():
    runs = [
        run("scratch", "all", 0, 0.95, 0.99),  # the best single test score: not what chooses
        run("scratch", "all", 1, 0.80, 0.80),
        run("frozen", "all", 0, 0.85, 0.85),
        run("frozen", "all", 1, 0.85, 0.85),
        run("finetune", "all", 0, 0.90, 0.90),
        run("finetune", "all", 1, 0.92, 0.91),
        run("scratch", 10, 0, 0.99, 0.99),  # another budget: ignored
    ]
    path, chosen = transfer.choose(runs, "all", higher_is_better=True)
    assert (path, chosen.seed) == ("finetune", 1)
    summary = transfer.summary(runs[:6], ("all",), (0, 1), get_task("digits"), synthetic_digits(n=200))
    assert summary["test"]["finetune"]["all"] == [0.90, 0.91]
    assert summary["val"]["scratch"]["all"] == [0.95, 0.80]


def test_bilinear_resizing_keeps_a_constant_image_and_interpolates_between_pixels():
    constant = np.full((1, 8, 8), 7.0)
    np.testing.assert_allclose(resize_bilinear(constant, 20), 7.0)
    ramp = np.tile(np.arange(4, dtype=float), (4, 1))[None]  # 0 1 2 3 along each row
    wide = resize_bilinear(ramp, 8)
    assert np.all(np.diff(wide[0, 0]) >= 0) and wide[0, 0, 0] == 0 and wide[0, 0, -1] == 3
    np.testing.assert_allclose(wide[0, 0, 1:-1:2] + wide[0, 0, 2::2], [1.0, 3.0, 5.0])  # midpoints pair up


def test_digit_images_are_centred_28x28_on_the_0_255_scale():
    pixels = np.zeros((2, 64))
    pixels[0] = 16  # a full 8x8 square: the whole 20x20 box at 255
    images = digit_images(pixels)
    assert images.shape == (2, 1, 28, 28) and images.dtype == np.float32
    assert images[0, 0, 4:24, 4:24].min() == 255 and images[0].sum() == 255 * 400  # nothing outside the box
    assert images[1].max() == 0
