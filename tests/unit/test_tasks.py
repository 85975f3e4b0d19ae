"""Training-time views of the data (Task.augment) and the inputs a teacher labels (Task.teacher_inputs)."""

import numpy as np
import pytest
import torch

from training.tasks import get_task


def test_an_augmented_image_is_the_same_image_shifted_at_most_two_pixels_or_mirrored():
    task = get_task("cnn")
    rng = np.random.default_rng(0)
    images = np.zeros((64, 1, 28, 28), dtype=np.float32)
    images[:, 0, 8:20, 10:16] = rng.uniform(1, 255, (64, 12, 6))  # inside the border: no pixel is cut off
    views = task.augment({"IMAGES": images}, np.random.default_rng(1))["IMAGES"]
    assert views.shape == images.shape and views.dtype == np.float32 and views.flags.c_contiguous
    moved = mirrored = 0
    for image, view in zip(images[:, 0], views[:, 0], strict=True):
        candidates = {
            (dy, dx, flip): np.roll(np.roll(image[:, ::-1] if flip else image, dy, 0), dx, 1)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            for flip in (False, True)
        }
        match = [key for key, candidate in candidates.items() if np.array_equal(candidate, view)]
        assert match, "a view is not a shift of at most 2 pixels (mirrored or not) of its image"
        moved += match[0][:2] != (0, 0)
        mirrored += match[0][2]
    assert moved > 40 and 16 < mirrored < 48  # 24 of 25 shifts move the image; half are mirrored


def test_mixups_are_convex_combinations_of_two_images_of_the_batch():
    task = get_task("cnn")
    batch = torch.stack([torch.full((1, 28, 28), value) for value in (0.0, 100.0, 200.0)])
    mixed = task.teacher_inputs(None, [batch], 50, np.random.default_rng(0))[0]
    assert mixed.shape == (50, 1, 28, 28)
    flat = mixed.view(50, -1)
    assert torch.all(flat.min(dim=1).values == flat.max(dim=1).values)  # one weight per image
    assert flat.min() >= 0 and flat.max() <= 200 and len(set(flat[:, 0].tolist())) > 30


def test_families_without_augmentation_say_so():
    with pytest.raises(NotImplementedError, match="rnn family has no training-time augmentation"):
        get_task("rnn").augment({}, np.random.default_rng(0))


def test_the_recommenders_extra_inputs_are_random_catalogue_pairs_on_the_batchs_device():
    from training.data import catalog_rows, load_dataset

    task, data = get_task("recsys"), load_dataset("recsys", synthetic=True, seed=0)
    batch = [torch.zeros(4, 4, dtype=torch.int64)]
    pairs = task.teacher_inputs(data, batch, 32, np.random.default_rng(7))
    rng, tables = np.random.default_rng(7), data.preprocessing["tables"]
    users = rng.integers(0, len(tables["USER_FEATURES"]), 32)
    expected = catalog_rows(tables, users, rng.integers(0, len(tables["ITEM_FEATURES"]), 32))
    assert len(pairs) == len(task.input_names)
    for name, tensor in zip(task.input_names, pairs, strict=True):
        assert tensor.device == batch[0].device and len(tensor) == 32
        np.testing.assert_array_equal(tensor.numpy(), expected[name])
