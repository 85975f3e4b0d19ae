"""The bottom floor: what the training half writes and the serving half reads, and the few
pieces both need (file digests, dtype names, ONNX Runtime sessions, Triton model configs).

Imports only the standard library and numpy at module level; onnxruntime and tritonclient are
imported by the modules that need them. `training/`, `serving/`, `loadtest/` and the CLI import
this package; it imports none of them.
"""
