"""The Python-backend models Triton runs (each `<model>/1/model.py` is one import of these).

- `VariantModel`: one variant in ONNX Runtime (the portable flavour, for the Triton server in
  the nvidia-pytriton wheel, which has no native ONNX Runtime backend). It checks the ONNX
  file against the manifest's sha256 before loading it, and runs a dynamic batch of requests
  as one ONNX Runtime call.
- `RouterModel`: one per family (`<family>_router`). Per request it asks the routing policy
  (the same code as the HTTP gateway) for a variant within the request's latency budget, calls
  that variant model with BLS, returns its output, the variant's name (`VARIANT`) and whether the
  policy predicted it to meet the budget (`PREDICTED_TO_MEET`; the client measures the truth), and
  reports the observed latency back to the policy. It also accepts raw inputs, so a client
  needs only tritonclient: `TEXT` (BYTES, one string per row) for the text family, and
  `USER_ID` (INT64) + `ITEM_IDS` (INT64 [n], MovieLens ids) for the recommender.

Budget: the optional input `LATENCY_BUDGET_MS` (FP32, one value per request; its first value
counts), else the request parameter `latency_budget_ms`, else the configured default.
Client errors become `TritonError(INVALID_ARG)`: gRPC INVALID_ARGUMENT, HTTP 400.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from serving.errors import FlexServeError, InvalidRequestError

# The gateway's request fields and the router's tensors that carry them.
TENSOR_NAMES = {
    "texts": "TEXT",
    "user_id": "USER_ID",
    "candidate_item_ids": "ITEM_IDS",
    "latency_budget_ms": "LATENCY_BUDGET_MS",
}


def _pb():
    import triton_python_backend_utils as pb_utils  # exists only inside Triton's Python backend stub

    return pb_utils


def _parameters(config: dict) -> dict[str, str]:
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def _error(message: str, invalid: bool = True):
    pb = _pb()
    code = pb.TritonError.INVALID_ARG if invalid else pb.TritonError.INTERNAL
    return pb.InferenceResponse(error=pb.TritonError(message, code))


class VariantModel:
    def initialize(self, args: dict) -> None:
        from contract.files import sha256_file
        from contract.sessions import open_session

        config = json.loads(args["model_config"])
        params = _parameters(config)
        path = Path(params["onnx_path"])
        actual = sha256_file(path)
        if actual != params["sha256"]:
            raise RuntimeError(
                f"{path} has sha256 {actual[:12]}..., the manifest says {params['sha256'][:12]}...: "
                "refusing to serve it; rebuild the Triton repository with `flexserve triton repo`"
            )
        self.session = open_session(path, int(params.get("threads", "1")))
        self.inputs = [(i["name"], i.get("dims", [])) for i in config["input"]]
        self.output = config["output"][0]["name"]
        self.pad_id = int(params.get("pad_id", "0"))

    def _feed(self, name: str, arrays: list[np.ndarray]) -> np.ndarray:
        if name == "LENGTHS":  # Triton sends [n, 1]; the model takes [n]
            return np.concatenate([a.reshape(-1) for a in arrays])
        if name == "TOKENS" and len({a.shape[1] for a in arrays}) > 1:  # pad the batch to its longest text
            width = max(a.shape[1] for a in arrays)
            arrays = [np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=self.pad_id) for a in arrays]
        return np.concatenate(arrays)

    def execute(self, requests: list) -> list:
        pb = _pb()
        try:
            columns = {
                name: [pb.get_input_tensor_by_name(r, name).as_numpy() for r in requests] for name, _ in self.inputs
            }
            sizes = [len(a) for a in columns[self.inputs[0][0]]]
            output = self.session.run(None, {name: self._feed(name, arrays) for name, arrays in columns.items()})[0]
        except Exception as error:
            if len(requests) == 1:
                return [_error(f"{type(error).__name__}: {error}")]
            return self._one_by_one(requests)
        if output.ndim == 1:
            output = output[:, None]  # per-row scalars travel as [n, 1]
        responses, start = [], 0
        for size in sizes:
            responses.append(
                pb.InferenceResponse(output_tensors=[pb.Tensor(self.output, output[start : start + size])])
            )
            start += size
        return responses

    def _one_by_one(self, requests: list) -> list:
        """A batch failed: run each request alone, so only the bad one gets the error."""
        return [self.execute([request])[0] for request in requests]

    def finalize(self) -> None:
        self.session = None


class RouterModel:
    def initialize(self, args: dict) -> None:
        from serving.policy import DEFAULT_LATENCY_BUDGET_MS, policy_from_manifest
        from serving.preprocess import Catalog, TextCodec
        from serving.repository import load_repository

        config = json.loads(args["model_config"])
        params = _parameters(config)
        self.family = params["family"]
        self.default_budget_ms = float(params.get("default_budget_ms", DEFAULT_LATENCY_BUDGET_MS))
        repo = load_repository(params["flexserve_repo"])  # verifies every file's sha256
        section = repo.family(self.family)
        # Each variant model is its own Triton model with one instance: its own queue.
        self.policy = policy_from_manifest(
            self.family, section, executor_of=lambda name: name, executors={v.name: 1 for v in section.variants}
        )
        self.inputs = [spec.name for spec in section.inputs]
        self.output = section.outputs[0].name
        self.text = TextCodec.from_manifest(section, repo.artifact("rnn", "vocab")) if self.family == "rnn" else None
        self.catalog = (
            Catalog.from_manifest(section, repo.artifact("recsys", "catalog")) if self.family == "recsys" else None
        )

    def _budget(self, request) -> float | None:
        pb = _pb()
        tensor = pb.get_input_tensor_by_name(request, "LATENCY_BUDGET_MS")
        if tensor is not None:
            values = tensor.as_numpy().reshape(-1)
            if values.size == 0:
                raise InvalidRequestError("LATENCY_BUDGET_MS", "is empty", "one FP32 value in milliseconds")
            return float(values[0])
        parameters = json.loads(request.parameters() or "{}")
        if "latency_budget_ms" in parameters:
            value = parameters["latency_budget_ms"]
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise InvalidRequestError(
                        "latency_budget_ms", f"{value!r} is not a number", "milliseconds, e.g. 20"
                    ) from None
            return value
        return None

    def _feeds(self, request) -> dict[str, np.ndarray]:
        pb = _pb()
        if self.text is not None:
            text = pb.get_input_tensor_by_name(request, "TEXT")
            if text is not None:
                return self.text.encode(
                    [
                        t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t)
                        for t in text.as_numpy().reshape(-1)
                    ]
                )
        if self.catalog is not None:
            user = pb.get_input_tensor_by_name(request, "USER_ID")
            if user is not None:
                items = pb.get_input_tensor_by_name(request, "ITEM_IDS")
                item_ids = None if items is None else [int(i) for i in items.as_numpy().reshape(-1)]
                user_ids = user.as_numpy().reshape(-1)
                if user_ids.size != 1:
                    raise InvalidRequestError("USER_ID", f"{user_ids.size} values", "exactly one INT64 user id")
                return self.catalog.score(int(user_ids[0]), item_ids)[0]
        feeds = {}
        for name in self.inputs:
            tensor = pb.get_input_tensor_by_name(request, name)
            if tensor is None:
                raw = {"rnn": " or TEXT", "recsys": " or USER_ID (+ ITEM_IDS)"}.get(self.family, "")
                raise InvalidRequestError(name, "is missing", f"the inputs {', '.join(self.inputs)}{raw}")
            feeds[name] = tensor.as_numpy()
        return feeds

    def execute(self, requests: list) -> list:
        return [self._one(request) for request in requests]

    def _one(self, request):
        pb = _pb()
        try:
            feeds = self._feeds(request)
            rows = len(next(iter(feeds.values())))
            budget = self._budget(request)
            decision = self.policy.route(self.default_budget_ms if budget is None else budget, rows)
        except InvalidRequestError as error:  # name the Triton tensor, not the HTTP gateway's field
            field = error.field
            for http_name, tensor in TENSOR_NAMES.items():
                if field.startswith(http_name):
                    field = tensor + field[len(http_name) :]
            return _error(f"{field}: {error.problem}; accepted: {error.accepted}")
        except FlexServeError as error:
            return _error(str(error))
        inputs = [
            pb.Tensor(name, value.reshape(-1, 1) if name == "LENGTHS" else value) for name, value in feeds.items()
        ]
        started = time.perf_counter()
        response = pb.InferenceRequest(
            model_name=decision.variant, requested_output_names=[self.output], inputs=inputs
        ).exec()
        elapsed_ms = (time.perf_counter() - started) * 1e3
        if response.has_error():
            self.policy.finish(decision, None)
            return _error(f"{decision.variant}: {response.error().message()}", invalid=False)
        self.policy.finish(decision, elapsed_ms)
        output = pb.get_output_tensor_by_name(response, self.output).as_numpy()
        variant = np.array([decision.variant.encode()], dtype=np.object_)
        predicted = np.array([decision.predicted_to_meet], dtype=bool)  # the client measures the truth
        return pb.InferenceResponse(
            output_tensors=[
                pb.Tensor(self.output, output),
                pb.Tensor("VARIANT", variant),
                pb.Tensor("PREDICTED_TO_MEET", predicted),
            ]
        )

    def finalize(self) -> None:
        self.policy = None
