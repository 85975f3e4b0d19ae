"""Locust users for Triton over gRPC (tritonclient), through the budget-routing models.

    flexserve triton up &                                   # gRPC on 127.0.0.1:8001
    locust -f loadtest/locustfile_triton.py --host 127.0.0.1:8001 --headless -u 4 -r 4 -t 30s \\
        --sla "interactive=20:0.3,standard=50:0.5,batch=200:0.2"

`TritonTextUser` sends raw snippets (`TEXT`) to `rnn_router`, `TritonImageUser` images to
`cnn_router`, each with its SLA class's `LATENCY_BUDGET_MS`. The SLA options and end-of-run
checks are those of `loadtest/locustfile.py`; here an answer counts as budget met when the
client measured it within its budget (Triton's `PREDICTED_TO_MEET` is the router's prediction).
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import gevent
import numpy as np
from locust import User, between, events, task

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.locustfile import budget_met_counts, sample_images, sample_texts, sla_spec


class _TritonUser(User):
    abstract = True
    wait_time = between(0.0, 0.01)
    family = ""
    model = ""

    def on_start(self):
        import tritonclient.grpc as grpcclient

        self.grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(self.host.removeprefix("grpc://"))
        self.sla = sla_spec(self.environment)

    def inputs(self) -> list:
        raise NotImplementedError

    def call(self) -> None:
        cls = random.choices(self.sla.classes, weights=[c.weight for c in self.sla.classes])[0]
        budget = self.grpc.InferInput("LATENCY_BUDGET_MS", [1], "FP32")
        budget.set_data_from_numpy(np.array([cls.budget_ms], dtype=np.float32))
        started = time.perf_counter()
        error = None
        try:
            # Locust users are greenlets; the blocking gRPC call runs on a real thread so the others go on.
            gevent.get_hub().threadpool.apply(self.client.infer, (self.model, [*self.inputs(), budget]))
        except Exception as exc:
            error = exc
        elapsed_ms = (time.perf_counter() - started) * 1e3
        events.request.fire(
            request_type="grpc",
            name=f"{self.family}:{cls.name}",
            response_time=elapsed_ms,
            response_length=0,
            exception=error,
            context={},
        )
        if error is None and elapsed_ms <= cls.budget_ms:
            budget_met_counts[cls.name] += 1


class TritonTextUser(_TritonUser):
    family, model = "rnn", "rnn_router"
    samples = staticmethod(sample_texts)  # read at start-up (locustfile._read_payloads)

    def inputs(self) -> list:
        text = self.grpc.InferInput("TEXT", [1], "BYTES")
        text.set_data_from_numpy(np.array([random.choice(self.samples()).encode()], dtype=np.object_))
        return [text]

    @task
    def classify_text(self):
        self.call()


class TritonImageUser(_TritonUser):
    family, model = "cnn", "cnn_router"
    samples = staticmethod(sample_images)

    def inputs(self) -> list:
        images = self.grpc.InferInput("IMAGES", [1, 1, 28, 28], "FP32")
        images.set_data_from_numpy(np.array(random.choice(self.samples()), dtype=np.float32).reshape(1, 1, 28, 28))
        return [images]

    @task
    def classify_image(self):
        self.call()
