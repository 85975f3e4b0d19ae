"""Classify images on Triton over HTTP with tritonclient; the budget as a request parameter.

    python -m serving.clients.triton_http --url 127.0.0.1:8000 --budget 1

The `cnn_router` model takes `IMAGES` (FP32 [n, 1, 28, 28], pixel values 0-255); the budget
goes as the request parameter `latency_budget_ms` (or as the tensor `LATENCY_BUDGET_MS`).
Without images on the command line, it sends the first Fashion-MNIST test image.
"""

import argparse
import gzip

import numpy as np
import tritonclient.http as httpclient

FASHION_MNIST = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def first_test_image() -> np.ndarray:
    with gzip.open(FASHION_MNIST) as f:
        return np.frombuffer(f.read()[16 : 16 + 784], dtype=np.uint8).reshape(1, 1, 28, 28).astype(np.float32)


def classify(url: str, images: np.ndarray, budget_ms: float) -> tuple[list[str], str]:
    client = httpclient.InferenceServerClient(url)
    tensor = httpclient.InferInput("IMAGES", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    result = client.infer("cnn_router", [tensor], parameters={"latency_budget_ms": budget_ms})
    return [LABELS[i] for i in result.as_numpy("LOGITS").argmax(axis=1)], result.as_numpy("VARIANT")[0].decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8000")
    parser.add_argument("--budget", type=float, default=20.0, help="latency budget (ms)")
    args = parser.parse_args()
    labels, variant = classify(args.url, first_test_image(), args.budget)
    print(f"{labels[0]} (variant: {variant})")


if __name__ == "__main__":
    main()
