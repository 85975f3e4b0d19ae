"""Training side of FlexServe: real data -> trained, distilled, quantised ONNX variants -> a model
repository with a manifest (the contract in `contract/`). Nothing here imports `serving/`."""

# The families FlexServe trains (each has a task in `training/tasks.py`); light, for the CLI's choices.
# `digits` after `cnn`: its full model is transferred from the image family's (training/transfer.py).
# `text_multitask`: one text encoder, two heads (polarity and subjectivity; training/tasks.py).
BUILT_IN_FAMILIES = ("cnn", "rnn", "recsys", "digits", "text_multitask")
