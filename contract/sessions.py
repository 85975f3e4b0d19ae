"""Opening an ONNX Runtime session the way FlexServe serves and profiles it.

One intra-op thread per request and one inter-op thread by default: the gateway runs one request
per core, and profiles are taken with the same settings so that they describe what serving runs.
`device="auto"` takes the CUDA execution provider when onnxruntime-gpu and a GPU are present.
"""

from __future__ import annotations

from pathlib import Path

DEVICES = ("auto", "cpu", "cuda")
GPU_HINT = "`pip install 'flexserve[gpu]'` (onnxruntime-gpu) on a machine with an NVIDIA GPU"


def providers_for(device: str) -> list[str]:
    """Execution providers for `device`; "cuda" without the CUDA provider is an error that says how to get it."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise RuntimeError(f"device cuda needs ONNX Runtime's CUDA execution provider: {GPU_HINT}")
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def open_session(path: str | Path, threads: int = 1, providers: list[str] | None = None):
    """An `onnxruntime.InferenceSession` with `threads` intra-op threads, one inter-op, quiet logs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # hide ORT's warnings about unused initialisers
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
