"""Training side of FlexServe: real data -> trained, distilled, quantised ONNX variants ->
a model repository with a manifest. Nothing here imports `serving`."""
