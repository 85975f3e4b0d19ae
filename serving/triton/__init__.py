"""Triton: model repository writer, the Python-backend models, the server launcher."""
