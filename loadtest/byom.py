"""Models of one's own, for `flexserve import` (bring your own model): the README's worked example,
the import benchmark and the tests use them. Plain PyTorch, as a user would write it, none of
FlexServe's training code; no download.

    python -m loadtest.byom OUT [--task classification|regression] [--rows 1000] [--hidden 1024]

trains on synthetic tabular data (20 features; 3 classes, or one value with standard deviation 1)
and writes into OUT:

    big.onnx     an MLP with two hidden layers of `hidden` units (1024: 4.3 MB): accurate, slower
    small.onnx   an MLP with one hidden layer of 4 units: less accurate, fast
    eval.npz     `rows` held-out rows: FEATURES, and labels (classification) or targets (regression)
    labels.txt   the class names, one per line (classification)

Both are exported with a dynamic batch axis, input FEATURES [n, 20], output OUTPUT [n, 3] or [n, 1].

`fail_below` (tests and failure drills only): the small model answers NaN for rows whose first
feature is below -100, the big one below -1000: a variant that fails on some inputs, as an FP16
overflow does, so that a request can make one variant fail, or all of them.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

FEATURES, CLASSES, OPSET = 20, 3, 17
LABELS = ("red", "green", "blue")
SMALL_FAILS_BELOW, BIG_FAILS_BELOW = -100.0, -1000.0
TRAIN_ROWS, STEPS, BATCH = 4000, 300, 128


@dataclass(frozen=True)
class DemoModels:
    big: Path
    small: Path
    eval_set: Path
    labels: Path | None
    task: str


class _FailsBelow(nn.Module):
    """`model(x) + 0 * sqrt(x[:, 0] - threshold)`: the same outputs, NaN where x[:, 0] < threshold."""

    def __init__(self, model: nn.Module, threshold: float):
        super().__init__()
        self.model, self.threshold = model, threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + 0.0 * torch.sqrt(x[:, :1] - self.threshold)


def _data(task: str, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features, and the truth: a linear part plus a quadratic one (which a tiny model misses)."""
    rng = np.random.default_rng(seed)
    linear, mix = rng.normal(size=(2, FEATURES, CLASSES)) / np.sqrt(FEATURES)
    features = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    scores = features @ linear + (features @ mix) ** 2
    if task == "classification":
        return features, scores.argmax(axis=1).astype(np.int64)
    value = scores.sum(axis=1)
    return features, ((value - value.mean()) / value.std()).astype(np.float32)


def _mlp(hidden: list[int], width: int) -> nn.Module:
    layers: list[nn.Module] = []
    for n_in, n_out in zip([FEATURES, *hidden], hidden, strict=False):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(([FEATURES, *hidden])[-1], width))


def _train(model: nn.Module, features: np.ndarray, truth: np.ndarray, task: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(features), torch.from_numpy(truth)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is fastest, and leaves the other cores alone
    try:
        for _ in range(STEPS):
            rows = torch.from_numpy(rng.integers(0, len(x), BATCH))
            out = model(x[rows])
            if task == "classification":
                loss = nn.functional.cross_entropy(out, y[rows])
            else:
                loss = nn.functional.mse_loss(out[:, 0], y[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _export(model: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(2, FEATURES),),
            str(path),
            input_names=["FEATURES"],
            output_names=["OUTPUT"],
            dynamic_axes={"FEATURES": {0: "batch"}, "OUTPUT": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def write_demo_models(
    out: str | Path,
    task: str = "classification",
    rows: int = 1000,
    hidden: int = 1024,
    seed: int = 0,
    fail_below: bool = False,
) -> DemoModels:
    """Train both models, export them and write the evaluation set into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    features, truth = _data(task, TRAIN_ROWS + rows, seed)
    width = CLASSES if task == "classification" else 1
    for name, layers, threshold in (("big", [hidden, hidden], BIG_FAILS_BELOW), ("small", [4], SMALL_FAILS_BELOW)):
        model = _train(_mlp(layers, width), features[:TRAIN_ROWS], truth[:TRAIN_ROWS], task, seed)
        _export(_FailsBelow(model, threshold) if fail_below else model, out / f"{name}.onnx")
    held_out = {
        "FEATURES": features[TRAIN_ROWS:],
        "labels" if task == "classification" else "targets": truth[TRAIN_ROWS:],
    }
    np.savez(out / "eval.npz", **held_out)
    labels = None
    if task == "classification":
        labels = out / "labels.txt"
        labels.write_text("\n".join(LABELS) + "\n")
    return DemoModels(out / "big.onnx", out / "small.onnx", out / "eval.npz", labels, task)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.byom", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--task", choices=("classification", "regression"), default="classification")
    parser.add_argument("--rows", type=int, default=1000, help="evaluation rows (default 1000)")
    parser.add_argument("--hidden", type=int, default=1024, help="the big model's layer width (default 1024: 4.3 MB)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    models = write_demo_models(args.out, args.task, args.rows, args.hidden)
    for path in (models.big, models.small, models.eval_set, models.labels):
        if path is not None:
            print(f"{path}  ({path.stat().st_size:,} bytes)")
    print(f"trained and exported in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
