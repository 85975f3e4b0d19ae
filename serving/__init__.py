"""Serving side of FlexServe: reads a model repository (never imports `training`)."""
