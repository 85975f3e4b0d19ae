"""Training side of FlexServe: real data -> trained, distilled, quantised ONNX variants -> a model
repository with a manifest (the contract in `contract/`). Nothing here imports `serving/`."""

# The families FlexServe trains (each has a task in `training/tasks.py`); light, for the CLI's choices.
BUILT_IN_FAMILIES = ("cnn", "rnn", "recsys")
