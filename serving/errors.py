"""FlexServe's error types. Front ends map them to HTTP / gRPC status codes at the edge."""

from __future__ import annotations


class FlexServeError(Exception):
    """Base class: every message says what was wrong and what is accepted."""

    def body(self) -> dict:
        """FlexServe's one error body (`serving.schemas.ErrorBody`), for every refusal."""
        return {"error": {"message": str(self)}}


class RepositoryError(FlexServeError):
    """The model repository is missing, malformed, or does not match its manifest."""


class IntegrityError(RepositoryError):
    """A file's sha256 differs from the one in the manifest: it is refused, never served."""


class InvalidRequestError(FlexServeError):
    """A client's mistake (HTTP 4xx, gRPC INVALID_ARGUMENT): names the field, the problem and what is accepted."""

    def __init__(self, field: str, problem: str, accepted: str):
        self.field, self.problem, self.accepted = field, problem, accepted
        super().__init__(f"{field}: {problem}; accepted: {accepted}")

    def body(self) -> dict:
        return {
            "error": {"field": self.field, "problem": self.problem, "accepted": self.accepted, "message": str(self)}
        }


class UnprocessableRequestError(InvalidRequestError):
    """A request the schema accepts that this repository cannot serve (HTTP 422): an id the model does
    not know, a variant it does not hold, a floor no variant meets, a budget no variant can meet even
    idle. Malformed requests (the schema's to refuse) are plain `InvalidRequestError`s (HTTP 400)."""


class InferenceFailedError(UnprocessableRequestError):
    """Every variant that could serve a request failed on it: the request is the likely cause (a value
    outside what the model takes, such as an id past its embedding table), so no variant is benched."""

    @classmethod
    def of(cls, family: str, failed: dict[str, object], field: str, metadata: str) -> InferenceFailedError:
        """`failed`: variant -> what went wrong; `metadata`: where the accepted inputs are described."""
        errors = "; ".join(f"{variant}: {error}" for variant, error in failed.items())
        return cls(
            field,
            f"every {family} variant that could serve it failed on this request ({errors})",
            f"inputs the model can run (see {metadata})",
        )


class OverloadError(FlexServeError):
    """A strict request that no variant is predicted to answer within its budget (HTTP 503 + Retry-After)."""

    def __init__(self, message: str, retry_after_s: float):
        self.retry_after_s = retry_after_s
        super().__init__(message)
