"""Pydantic models at the API boundary, generated from the UCI schema so the API, the batch reader and the
OpenAPI document accept exactly the same values, and every error names the field and why."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, create_model
from pydantic_core import PydanticCustomError

from .errors import Detail, MalformedJson, PayloadTooLarge, ValidationFailed
from .schema import COLUMNS, ICD9_PATTERN, IDENTIFIERS, MEDICATIONS, MISSING, TARGET, Column, parse_value

MAX_BATCH = 500
MAX_BODY_BYTES = 64 * 1024  # one encounter is ~1.5 KB of JSON
MAX_BATCH_BODY_BYTES = 2 * 1024 * 1024


def _python_name(column: str) -> str:
    return column.replace("-", "_")


_KNOWN_VALUES = 4096  # per column: enough for every ICD-9 code a hospital uses, bounded against junk input


def _checker(col: Column) -> Any:
    known: dict[tuple[type, Any], Any] = {}  # accepted raw value → parsed value: a batch repeats the same values

    def check(value: Any) -> Any:
        key = (type(value), value)
        try:
            return known[key]
        except KeyError:
            pass
        except TypeError:  # unhashable (a list or an object): parse_value rejects it below
            key = None
        parsed, problem = parse_value(col, value)
        if problem:
            raise PydanticCustomError("uci_value", problem)
        if key is not None and len(known) < _KNOWN_VALUES:
            known[key] = parsed
        return parsed

    return check


def _json_schema(col: Column) -> dict[str, Any]:
    schema: dict[str, Any]
    if col.kind == "category":
        schema = {"type": "string", "enum": [*col.allowed, *([MISSING] if col.nullable else [])]}
    elif col.kind == "code":
        assert col.codes is not None
        # x-labels: what each code means (IDs_mapping.csv), so a form can show "3 · Transferred to SNF"
        schema = {"type": "integer", "enum": list(col.codes), "x-labels": {str(k): v for k, v in col.codes.items()}}
    elif col.kind == "icd9":
        schema = {"type": "string", "pattern": ICD9_PATTERN.pattern + ("|^\\?$" if col.nullable else "")}
    else:
        schema = {"type": "integer", "minimum": col.low, "maximum": col.high}
    if col.nullable or col.kind == "id" or col.name == TARGET:
        schema = {"anyOf": [schema, {"type": "null"}]}
    return {**schema, "description": col.description}


# Absent from a request means "not prescribed" / "not measured": what a discharge summary leaves out.
API_DEFAULTS = {**dict.fromkeys(MEDICATIONS, "No"), "max_glu_serum": "None", "A1Cresult": "None"}


def _field(col: Column) -> tuple[Any, Any]:
    schema = _json_schema(col)
    if col.name in API_DEFAULTS:
        schema["default"] = API_DEFAULTS[col.name]
    annotated = Annotated[Any, BeforeValidator(_checker(col)), WithJsonSchema(schema)]
    optional = col.nullable or col.name in IDENTIFIERS or col.name == TARGET
    default = API_DEFAULTS.get(col.name, None if optional else ...)
    return annotated, Field(default=default, alias=col.name)


_ATTRIBUTES = tuple((col.name, _python_name(col.name)) for col in COLUMNS)  # UCI name → model attribute


class _EncounterBase(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False, frozen=True)

    def to_record(self) -> dict[str, Any]:
        """The typed record the feature code consumes, keyed by UCI column names."""
        return {name: getattr(self, attr) for name, attr in _ATTRIBUTES}


Encounter = create_model(  # type: ignore[call-overload]
    "Encounter",
    __base__=_EncounterBase,
    __doc__="One hospital encounter in the UCI format ('?', null or absent optional fields mean missing). "
    "`patient_nbr` (optional) lets the service use the patient's earlier encounters; `readmitted` is ignored.",
    **{_python_name(c.name): _field(c) for c in COLUMNS},
)


class Factor(BaseModel):
    feature: str
    label: str = Field(description="How a clinician reads the feature")
    value: str = Field(description="The input value(s) behind it")
    contribution: float = Field(description="Signed SHAP contribution (log-odds of the uncalibrated model)")
    direction: Literal["raises risk", "lowers risk"]


class Prediction(BaseModel):
    risk: float = Field(ge=0, le=1, description="Calibrated probability of readmission within 30 days")
    risk_tier: Literal["low", "medium", "high"]
    threshold: float = Field(description="Operating threshold: risk at or above it is the high tier")
    model_version: str
    top_factors: list[Factor] | None = None
    history_encounters: int = Field(description="Earlier encounters of this patient found in the history store")
    request_id: str


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    encounters: list[Any] = Field(min_length=1, max_length=MAX_BATCH, description="UCI encounter objects")


class BatchItem(BaseModel):
    index: int
    prediction: Prediction | None = None
    error: str | None = None
    details: list[dict[str, str]] | None = None


class BatchResponse(BaseModel):
    model_version: str
    request_id: str
    scored: int
    invalid: int
    results: list[BatchItem]


class ErrorResponse(BaseModel):
    error: str
    details: list[dict[str, str]]
    request_id: str | None = None


class Health(BaseModel):
    status: Literal["ok"]
    ready: bool
    model_version: str | None
    detail: str | None = None


def _details(exc: ValidationError, prefix: str = "") -> list[Detail]:
    details = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        field = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "body"
        if err["type"] == "missing":
            message = "is required"
        elif err["type"] == "extra_forbidden":
            message = "is not a UCI encounter field"
        else:
            message = err["msg"]
        details.append(Detail(field, message))
    return details


def parse_json(body: bytes | None, limit: int) -> Any:
    if body is None or not body.strip():
        raise MalformedJson("the request body is empty; send a JSON object")
    if len(body) > limit:
        raise PayloadTooLarge("body", f"is {len(body):,} bytes; the limit is {limit:,}")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedJson(f"is not valid JSON: {exc}") from exc


def parse_encounter_body(data: Any, prefix: str = "") -> dict[str, Any]:
    """Validate one encounter object; raise ValidationFailed naming every bad field."""
    if not isinstance(data, dict):
        raise ValidationFailed([Detail(prefix.rstrip(".") or "body", "must be a JSON object of UCI fields")])
    try:
        return Encounter.model_validate(data).to_record()
    except ValidationError as exc:
        raise ValidationFailed(_details(exc, prefix)) from None


def parse_batch_body(data: Any) -> list[Any]:
    if isinstance(data, dict) and isinstance(data.get("encounters"), list) and len(data["encounters"]) > MAX_BATCH:
        raise PayloadTooLarge("encounters", f"has {len(data['encounters'])} items; at most {MAX_BATCH} per batch")
    try:
        return BatchRequest.model_validate(data).encounters
    except ValidationError as exc:
        raise ValidationFailed(_details(exc), error="invalid batch") from None
