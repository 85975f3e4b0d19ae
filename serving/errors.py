"""FlexServe's error types. Front ends map them to HTTP / gRPC status codes at the edge."""
from __future__ import annotations


class FlexServeError(Exception):
    """Base class: every message says what was wrong and what is accepted."""


class RepositoryError(FlexServeError):
    """The model repository is missing, malformed, or does not match its manifest."""


class IntegrityError(RepositoryError):
    """A file's sha256 differs from the one in the manifest: it is refused, never served."""
