"""Calling FlexServe over gRPC, through Ray Serve's gRPC proxy (`flexserve serve --engine ray --grpc-port
9000`). Ray routes by the `application` metadata key; the messages are serving/proto/flexserve.proto's.

    python -m serving.clients.ray_grpc 127.0.0.1:9000 "a fine film" "a dull one"
"""

from __future__ import annotations

import sys

import grpc

from serving.proto import flexserve_pb2 as pb
from serving.proto.flexserve_pb2_grpc import FlexServeStub

APPLICATION = (("application", "flexserve"),)  # serving.rayserve.APP_NAME


def classify_text(target: str, texts: list[str], budget_ms: float | None = None) -> pb.Classification:
    routing = pb.Routing(latency_budget_ms=budget_ms) if budget_ms is not None else pb.Routing()
    with grpc.insecure_channel(target) as channel:
        return FlexServeStub(channel).ClassifyText(
            pb.TextRequest(texts=texts, routing=routing), metadata=APPLICATION, timeout=30
        )


if __name__ == "__main__":
    target, *texts = sys.argv[1:] or ["127.0.0.1:9000"]
    try:
        answer = classify_text(target, texts or ["a fine film"], budget_ms=50)
    except grpc.RpcError as error:  # e.g. INVALID_ARGUMENT, with the field named in the details
        sys.exit(f"{error.code().name}: {error.details()}")
    for text, prediction in zip(texts or ["a fine film"], answer.predictions, strict=True):
        print(f"{prediction.label:>6} {prediction.probability:.3f}  {text}")
    print(f"variant {answer.routed.variant} on worker {answer.routed.worker}: {answer.routed.reason}")
