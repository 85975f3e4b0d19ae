"""The HTTP API's typed contract: the request fields of every endpoint, its answers and the one error
body, as pydantic types. BentoML builds each `@bentoml.api` endpoint's request model from the
annotated parameters in `serving/service.py` and validates requests with it (a violation is a 400,
answered in FlexServe's error body by `serving.middleware.ErrorBody`); `serving/openapi.py` puts all of
them in the document at /docs.json.

What a schema cannot say stays with the families and the policy (a user id the catalogue knows, a
variant the repository holds, a floor a variant meets): a request the schema accepts and they refuse
is a 422, never a 400.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from contract.coldstart import MAX_RATINGS, RATING_RANGE
from contract.dtypes import DTYPES
from serving.policy.config import MAX_LATENCY_BUDGET_MS
from serving.preprocess import MAX_BATCH, MAX_CANDIDATES, MAX_K, MAX_TEXT_CHARS
from serving.tensors import MAX_DIMS

MAX_TENSORS = 64  # input tensors (and requested outputs) per v2 request
IMAGE_SIDE = 28  # the built-in image family's input: 28x28 grayscale (Fashion-MNIST)
PIXEL_MAX = 255.0


# -- request fields --------------------------------------------------------------------------------
def _whole(value: object) -> object:
    """JSON Schema counts 3.0 as an integer: so does FlexServe (strict otherwise: no "3", no true)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def integer(**constraints) -> object:
    """An integer field (the constraints first: after a validator pydantic would document them as
    `ge`/`le`, which no JSON Schema reader knows)."""
    return Annotated[int, Field(strict=True, **constraints), BeforeValidator(_whole)]


# An optional field is typed without None and defaults to None: leaving it out means the default, and
# a JSON null is refused, as the schema (which has no null) says.
Pixel = Annotated[float, Field(ge=0, le=PIXEL_MAX, strict=True, allow_inf_nan=False)]
ImageRow = Annotated[list[Pixel], Field(min_length=IMAGE_SIDE, max_length=IMAGE_SIDE)]
Image = Annotated[list[ImageRow], Field(min_length=IMAGE_SIDE, max_length=IMAGE_SIDE)]
Images = Annotated[
    list[Image],
    Field(
        min_length=1,
        max_length=MAX_BATCH,
        description=f"1 to {MAX_BATCH} grayscale images, each {IMAGE_SIDE} rows of {IMAGE_SIDE} pixel values "
        f"from 0 to {PIXEL_MAX:g}",
    ),
]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS, pattern=r"\S", strict=True)]
Texts = Annotated[
    list[Text],
    Field(
        min_length=1,
        max_length=MAX_BATCH,
        description=f"1 to {MAX_BATCH} texts of at most {MAX_TEXT_CHARS:,} characters, each with at least one word "
        "or punctuation mark",
    ),
]
UserId = Annotated[
    integer(), Field(description="a MovieLens user id the catalogue knows (422 if not); or send ratings instead")
]
K = Annotated[integer(ge=1, le=MAX_K), Field(description=f"how many movies to answer, 1 to {MAX_K}")]


def _distinct(ids: list[int]) -> list[int]:
    if len(set(ids)) != len(ids):
        raise ValueError("lists a movie twice")
    return ids


CandidateItemIds = Annotated[
    list[integer()],
    AfterValidator(_distinct),
    Field(
        min_length=1,
        max_length=MAX_CANDIDATES,
        json_schema_extra={"uniqueItems": True},
        description="distinct MovieLens movie ids to rank (default: the whole catalogue); an id the catalogue does "
        "not know is a 422",
    ),
]


MovieId = integer()


class RatedItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: MovieId = Field(description="a MovieLens movie id the catalogue knows (422 if not)")
    rating: float = Field(
        ge=RATING_RANGE[0],
        le=RATING_RANGE[1],
        strict=True,
        allow_inf_nan=False,
        description="the user's rating, 1 to 5",
    )


# A movie rated twice is the catalogue's to refuse (422): JSON Schema cannot say "each item_id once"
# of an array of objects, and a 400 means the body does not match the schema.
Ratings = Annotated[
    list[RatedItem],
    Field(
        min_length=1,
        max_length=MAX_RATINGS,
        description="a new user's ratings, instead of user_id: the user is fitted to them inside the request "
        "(cold start); each movie once",
    ),
]
Budget = Annotated[
    float,
    Field(
        gt=0,
        le=MAX_LATENCY_BUDGET_MS,
        strict=True,
        allow_inf_nan=False,
        description=f"the latency budget in ms, more than 0 and at most {MAX_LATENCY_BUDGET_MS:,.0f} (default: the "
        "X-Latency-Budget-Ms header, else the gateway's FLEXSERVE_DEFAULT_BUDGET_MS)",
    ),
]
MinAccuracy = Annotated[
    float,
    Field(
        ge=0,
        le=1,
        strict=True,
        allow_inf_nan=False,
        description="serve only variants at least this accurate (422 if none is)",
    ),
]
MaxRmse = Annotated[
    float,
    Field(
        ge=0,
        strict=True,
        allow_inf_nan=False,
        description="serve only variants with at most this test RMSE (422 if none has)",
    ),
]
Variant = Annotated[
    str,
    Field(
        strict=True,
        max_length=200,
        description="pin this variant (GET /v1/variants lists them; 422 if the family has no such variant)",
    ),
]
Strict = Annotated[
    bool,
    Field(
        strict=True,
        description="refuse (503 + Retry-After) rather than answer late when no variant is predicted to meet the "
        "budget under the load of the moment (422 when none can even idle)",
    ),
]


class RoutingFields(BaseModel):
    """The routing fields every friendly endpoint takes (the family's own fields beside them)."""

    model_config = ConfigDict(extra="allow")

    latency_budget_ms: Budget = None
    variant: Variant = None
    strict: Strict = False


# -- answers ---------------------------------------------------------------------------------------
class Routed(BaseModel):
    """How the answer was routed: also in the X-FlexServe-Variant and X-FlexServe-Budget-Met headers."""

    variant: str = Field(description="the variant that answered")
    backend: str = Field(description="what ran it: onnxruntime, or triton-http / triton-grpc")
    version: str = Field(description="the model repository version it belongs to")
    worker: int = Field(description="the gateway worker process that answered (1-based; also X-FlexServe-Worker)")
    latency_ms: float = Field(description="time in the gateway, from arrival to the answer")
    budget_ms: float = Field(description="the budget the request was routed with")
    budget_met: bool = Field(description="whether the answer came within the budget, as the client sees it")
    reason: str = Field(description="why this variant")
    failed_variants: list[str] | None = Field(None, description="variants that failed on this request (benched)")


class ClassPrediction(BaseModel):
    label: str | None = Field(None, description="the class's name, where the family has labels")
    class_id: int
    probability: float = Field(ge=0, le=1)


class Classification(Routed):
    predictions: list[ClassPrediction] = Field(description="one per image or text, in order")


class RecommendedItem(BaseModel):
    item_id: int | str
    title: str
    predicted_rating: float


class ColdStartFit(BaseModel):
    fitted_from_ratings: int = Field(description="how many of the user's ratings the fit used")


class Recommendation(Routed):
    items: list[RecommendedItem] = Field(description="the top-k movies, best first")
    cold_start: ColdStartFit | None = Field(
        None, description="present when the user was fitted to `ratings` inside the request (a new user)"
    )


class ErrorDetail(BaseModel):
    field: str | None = Field(None, description="the field (or header) at fault, e.g. images[0] or inputs[1].shape")
    problem: str | None = Field(None, description="what is wrong with it")
    accepted: str | None = Field(None, description="what is accepted instead")
    message: str = Field(description="all of it in one sentence")


class ErrorBody(BaseModel):
    """FlexServe's one error body, for every status it answers besides 200."""

    error: ErrorDetail


class VariantState(BaseModel):
    model_config = ConfigDict(extra="allow")  # plus the family's metric, e.g. "accuracy": 0.91

    name: str
    standard_error: float = Field(description="of the metric on the test split (0: unknown, taken as exact)")
    tied_for_best: bool = Field(description="its metric is within the family's tolerance of the best one's")
    profiled_p50_ms: float
    profiled_p95_ms: float
    slowdown: float
    predicted_ms: float
    in_flight: int
    executor: str
    executor_in_flight: int
    served: int
    benched_s: float


class FamilyState(BaseModel):
    metric: str
    higher_is_better: bool
    adapter: str
    most_accurate: str = Field(description="the best metric's point estimate")
    tolerance: float = Field(
        description="metrics within this of the best one's count as tied for best (1.96 standard errors: the "
        "95% interval's half-width); then the fastest of them serves"
    )
    tied_for_best: list[str] = Field(description="the variants statistically tied for best, fastest first")
    fastest: str
    overhead_ms: float
    variants: list[VariantState] = Field(description="in routing order: best tier first, fastest first in a tier")


class Variants(BaseModel):
    """GET /v1/variants: the routing state per family."""

    version: str
    backend: str
    configured_backend: str
    device: str
    worker: int = Field(description="the gateway worker process that answered this (1-based)")
    workers: int = Field(description="gateway worker processes, each with its own policies")
    parallelism: int = Field(description="concurrent model runs per worker process")
    executor_in_flight: int
    families: dict[str, FamilyState]


class Reloaded(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- the Open Inference Protocol (KServe v2) -------------------------------------------------------
Datatype = Literal[tuple(sorted({d.triton for d in DTYPES.values()}))]  # type: ignore[valid-type]


class InferInput(BaseModel):
    name: str = Field(min_length=1, description="a model input (GET /v2/models/{family}), or a raw input")
    shape: list[integer(ge=0)] = Field(max_length=MAX_DIMS, description="the tensor's shape")
    datatype: Datatype
    data: list[Any] = Field(description="the values, row-major, flat or nested; BYTES as strings")


class InferParameters(RoutingFields):
    """The routing fields, and the family's floor (`min_accuracy`, `max_rmse`, ...)."""


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferResponseParameters(BaseModel):
    variant: str
    budget_ms: float
    budget_met: bool
    latency_ms: float
    backend: str
    worker: int
    reason: str
    failed_variants: list[str] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutput]
    parameters: InferResponseParameters


InferInputs = Annotated[
    list[InferInput],
    Field(
        min_length=1,
        max_length=MAX_TENSORS,
        description=f'1 to {MAX_TENSORS} tensors, each {{"name", "shape", "datatype", "data"}}',
    ),
]
RequestId = Annotated[str, Field(max_length=256, strict=True, description="echoed in the answer")]


def _described(**aliases) -> dict[str, str]:
    return {
        name: next(m.description for m in typing.get_args(alias)[1:] if getattr(m, "description", None))
        for name, alias in aliases.items()
    }


# What each field accepts, in words: the `accepted` of a schema violation's error body.
ACCEPTED = _described(
    images=Images,
    texts=Texts,
    user_id=UserId,
    ratings=Ratings,
    k=K,
    candidate_item_ids=CandidateItemIds,
    latency_budget_ms=Budget,
    min_accuracy=MinAccuracy,
    max_rmse=MaxRmse,
    variant=Variant,
    inputs=InferInputs,
    id=RequestId,
) | {
    "strict": "true or false",
    "rating": "a number from 1 to 5",
    "item_id": "a MovieLens movie id (an integer)",
    "parameters": "an object of routing fields (latency_budget_ms, variant, strict) and the family's floor",
    "name": "the name of a model input (GET /v2/models/{family})",
    "shape": "a list of non-negative integers",
    "datatype": ", ".join(typing.get_args(Datatype)),
    "data": "a list of the values, row-major, flat or nested",
}


def accepted(path: tuple) -> str:
    """What is accepted at `path` (a pydantic error's `loc`): the nearest named field's words."""
    for part in reversed(path):
        if isinstance(part, str) and part in ACCEPTED:
            return ACCEPTED[part]
    return "a body that matches the endpoint's schema at /docs.json"


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


RequestedOutputs = Annotated[
    list[RequestedOutput],
    Field(max_length=MAX_TENSORS, description="accepted as the protocol has it; every output is answered"),
]
