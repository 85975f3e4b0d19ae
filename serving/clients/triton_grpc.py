"""Classify texts on Triton over gRPC with nothing but tritonclient, and see the variant follow the budget.

    python -m serving.clients.triton_grpc --url 127.0.0.1:8001 --budget 5 "A gorgeous film." "Dull."

The `rnn_router` model takes raw text as a BYTES tensor `TEXT` (one string per row) and the
budget as an FP32 tensor `LATENCY_BUDGET_MS` ([1]); it returns `LOGITS` ([n, 2]: rotten,
fresh), `VARIANT` (the variant that answered) and `PREDICTED_TO_MEET` (the router's prediction).
"""

import argparse

import numpy as np
import tritonclient.grpc as grpcclient

LABELS = ("rotten", "fresh")


def classify(url: str, texts: list[str], budget_ms: float) -> tuple[list[str], str]:
    client = grpcclient.InferenceServerClient(url)
    text = grpcclient.InferInput("TEXT", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    budget = grpcclient.InferInput("LATENCY_BUDGET_MS", [1], "FP32")
    budget.set_data_from_numpy(np.array([budget_ms], dtype=np.float32))
    result = client.infer("rnn_router", [text, budget])
    labels = [LABELS[i] for i in result.as_numpy("LOGITS").argmax(axis=1)]
    return labels, result.as_numpy("VARIANT")[0].decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--budget", type=float, default=20.0, help="latency budget (ms)")
    args = parser.parse_args()
    labels, variant = classify(args.url, args.texts, args.budget)
    for text, label in zip(args.texts, labels, strict=True):
        print(f"{label:<7} {text}")
    print(f"variant: {variant}")


if __name__ == "__main__":
    main()
