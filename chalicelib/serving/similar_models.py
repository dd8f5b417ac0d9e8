"""Pydantic models of /similar-patients and /chat: the request envelopes, whose ``encounter`` is /predict's
Encounter model (errors name ``encounter.<field>``, and the OpenAPI document says what it must hold), and the
response shapes for the OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError

from chalicelib.serving.api_models import Encounter, Factor, validation_details
from chalicelib.serving.errors import ApiError, Detail, ValidationFailed
from chalicelib.serving.service import cohort_error
from chalicelib.similar.chat import FallbackReason, GuardrailPolicy, GuardrailStage
from chalicelib.similar.search import DEFAULT_K, MAX_K

MAX_QUESTION = 1000


class SimilarFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    same_age_band: bool = Field(False, strict=True, description="Only neighbours in the encounter's age band")


def _whole_number(value: Any) -> Any:
    """JSON Schema's integer is any number with a zero fractional part (2020-12 validation, section 6.1.1), so
    22.0 is one, as the document declares; text ("5") and booleans stay refused by the strict field."""
    return int(value) if type(value) is float and value.is_integer() else value


class SimilarRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    encounter: Encounter = Field(description="One encounter in the UCI format, as for /predict")
    k: Annotated[int, BeforeValidator(_whole_number)] = Field(
        DEFAULT_K, ge=1, le=MAX_K, strict=True, description="How many neighbours"
    )
    filters: SimilarFilters = Field(default_factory=SimilarFilters)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    encounter: Encounter = Field(description="One encounter in the UCI format, as for /predict")
    # Checked as sent (no stripping) so the document's limits are the server's: at most MAX_QUESTION characters, at
    # least one that is not whitespace (pattern \S; a question of only whitespace is refused by both).
    question: Annotated[str, StringConstraints(min_length=1, max_length=MAX_QUESTION, pattern=r"\S")] = Field(
        description="The clinician's question (at least one character that is not whitespace)"
    )


class Neighbour(BaseModel):
    similarity: float = Field(description="Cosine similarity of the encounters' embeddings (1 = identical)")
    outcome: Literal["<30", ">30", "NO"]
    readmitted_30d: bool
    age: str
    features: dict[str, int | str] = Field(description="A few of the neighbour's features, by clinical label")


class SimilarResponse(BaseModel):
    neighbours: list[Neighbour] = Field(description="Most similar first; never an identifier")
    count: int
    k: int
    readmission_rate: float = Field(description="Share of the neighbours readmitted within 30 days")
    request_id: str


class SimilarSummary(BaseModel):
    count: int
    readmission_rate: float


class GuardrailFlag(BaseModel):
    """Why the template answered when fallback_reason is "guardrail": where the Bedrock Guardrail intervened and
    which policy types fired; never the text it blocked."""

    stage: GuardrailStage = Field(
        description="prompt: the clinician's question was blocked; answer: the model's answer was; unknown: the "
        "guardrail intervened without a trace"
    )
    policies: list[GuardrailPolicy] = Field(description="The guardrail policy types that fired (Bedrock's names)")


class ChatResponse(BaseModel):
    answer: str
    source: Literal["bedrock", "template"]
    fallback_reason: FallbackReason | None
    guardrail: GuardrailFlag | None = Field(description="Set exactly when fallback_reason is guardrail")
    risk: float
    risk_tier: Literal["low", "medium", "high"]
    top_factors: list[Factor]
    similar: SimilarSummary
    request_id: str


class IndexNotReady(ApiError):
    """No similar-patient index exists yet, or it was built by another embedder."""

    def __init__(self, message: str) -> None:
        super().__init__("similar-patient index not ready", [Detail("index", message)], 503)


_Envelope = TypeVar("_Envelope", SimilarRequest, ChatRequest)  # the request bodies that carry an encounter


def _parse(model: type[_Envelope], data: Any) -> tuple[_Envelope, dict[str, Any]]:
    """(the validated envelope, the parsed encounter record); every bad field of both in one 422."""
    if not isinstance(data, dict):
        raise ValidationFailed([Detail("body", "must be a JSON object")], error="invalid request")
    try:
        envelope = model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(validation_details(exc), error="invalid request") from None
    record = envelope.encounter.to_record()
    if err := cohort_error(record, prefix="encounter."):
        raise err
    return envelope, record


def parse_similar(data: Any) -> tuple[SimilarRequest, dict[str, Any]]:
    return _parse(SimilarRequest, data)


def parse_chat(data: Any) -> tuple[ChatRequest, dict[str, Any]]:
    return _parse(ChatRequest, data)
