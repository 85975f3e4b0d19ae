"""Backends run a variant on a batch: in-process ONNX Runtime, or remotely on Triton."""
