"""Pydantic models at the API boundary, generated from the UCI schema so the API, the batch reader and the
OpenAPI document accept exactly the same values, and every error names the field and why."""

from __future__ import annotations

import difflib
import json
import re
import sys
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, create_model
from pydantic_core import PydanticCustomError

from chalicelib.data.schema import (
    COLUMNS,
    EXCLUDED_DISPOSITIONS,
    ICD9_PATTERN,
    IDENTIFIERS,
    MEDICATIONS,
    MISSING,
    TARGET,
    Column,
    is_missing,
    parse_value,
)
from chalicelib.serving.errors import (
    Detail,
    MalformedJson,
    PayloadTooLarge,
    UnacceptableJson,
    ValidationFailed,
    safe_text,
)

MAX_BATCH = 500
# One encounter is ~1.5 KB of JSON, so 64 KB is ~40× headroom; a full batch is ~750 KB, so 2 MB. Both far below
# what reaches the function at all: API Gateway REST payloads ≤ 10 MB, Lambda synchronous payloads ≤ 6 MB
# (https://docs.aws.amazon.com/apigateway/latest/developerguide/limits.html,
# https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html).
MAX_BODY_BYTES = 64 * 1024
MAX_BATCH_BODY_BYTES = 2 * 1024 * 1024
# Containers inside containers. The models need 3 (a batch body → its encounters list → an encounter), so 8 leaves
# room for a misplaced object to get a 422 naming its field, while staying far from Python's recursion limit
# (1000), where json's decoder, repr() (in error messages) and pydantic raise RecursionError.
MAX_JSON_DEPTH = 8


def _python_name(column: str) -> str:
    return column.replace("-", "_")


_KNOWN_VALUES = 4096  # per column: enough for every ICD-9 code a hospital uses, bounded against junk input


def _optional(col: Column) -> bool:
    """May be left out, or sent as null (or the data set's '?'): the nullable columns, the identifiers (needed only
    to record history) and the outcome (ignored)."""
    return col.nullable or col.name in IDENTIFIERS or col.name == TARGET


_NUMERIC = frozenset({"id", "int", "code"})
COHORT_COLUMN = "discharge_disposition_id"  # schema.is_excluded: its EXCLUDED_DISPOSITIONS are outside the cohort


def _json_type_error(col: Column, value: Any) -> str | None:
    """Why a value is not of the column's JSON type, as the OpenAPI document declares it: a number column takes a
    JSON number (text such as "6" is CSV's form, which only /predict/batch reads), and an ICD-9 code is matched as
    sent (the CSV reader's trimming would accept " 428", which the document's pattern refuses)."""
    if col.kind in _NUMERIC and isinstance(value, str):
        return f"must be a JSON number, got the text {safe_text(value, 40)!r} (CSV text is read by /predict/batch)"
    if col.kind == "icd9" and isinstance(value, str) and value != value.strip():
        return f"must be an ICD-9 code without surrounding spaces, got {safe_text(value, 40)!r}"
    return None


def _checker(col: Column, json_types: bool) -> Any:
    """The column's validator. With ``json_types`` (the single-encounter routes), values must have the JSON type
    the document declares; without (a batch item), CSV text is read as the batch job reads it."""
    known: dict[tuple[type, Any], Any] = {}  # accepted raw value → parsed value: a batch repeats the same values
    optional = _optional(col)

    def check(value: Any) -> Any:
        if optional and is_missing(value):  # the identifiers and the outcome, which parse_value calls required
            return None
        if json_types and (problem := _json_type_error(col, value)):
            raise PydanticCustomError("uci_value", problem)
        key = (type(value), value)
        hashable = True
        try:
            return known[key]
        except KeyError:
            pass
        except TypeError:  # unhashable (a list or an object): parse_value rejects it below
            hashable = False
        parsed, problem = parse_value(col, value)
        if problem:
            raise PydanticCustomError("uci_value", problem)
        if hashable and len(known) < _KNOWN_VALUES:
            known[key] = parsed
        return parsed

    return check


def _json_schema(col: Column) -> dict[str, Any]:
    """The column's JSON Schema, exactly what the checker accepts: in an optional column also null, and the data
    set's '?' and '' (a blank CSV cell, a form left empty), which schema.is_missing reads as missing. The first
    branch carries the values proper (the clinician page builds its controls from it)."""
    schema: dict[str, Any]
    if col.kind == "category":
        schema = {"type": "string", "enum": [*col.allowed, *([MISSING] if col.nullable else [])]}
    elif col.kind == "code":
        assert col.codes is not None
        # Expired or hospice: parsed, but refused (422, "outside the cohort") by every single-encounter route, so
        # not among the values this schema allows. A batch item is not held to this schema (see BatchRequest).
        codes = {k: v for k, v in col.codes.items() if col.name != COHORT_COLUMN or k not in EXCLUDED_DISPOSITIONS}
        # x-labels: what each code means (IDs_mapping.csv), so a form can show "3 · Transferred to SNF"
        schema = {"type": "integer", "enum": list(codes), "x-labels": {str(k): v for k, v in codes.items()}}
    elif col.kind == "icd9":
        schema = {"type": "string", "pattern": ICD9_PATTERN.pattern + ("|^\\?$" if col.nullable else "")}
    else:
        schema = {"type": "integer", "minimum": col.low, "maximum": col.high}
    description = col.description
    if col.name == COHORT_COLUMN:
        excluded = ", ".join(map(str, sorted(EXCLUDED_DISPOSITIONS)))
        description += f" ({excluded}, expired or hospice, are outside the model's cohort: a 422 says so)"
    if not _optional(col):
        return {**schema, "description": description}
    text = [v for v in (MISSING, "") if not (v == MISSING and col.nullable and col.kind in ("category", "icd9"))]
    branches = [schema, {"type": "null"}, {"type": "string", "enum": text}]
    return {"anyOf": branches, "description": description}  # the page shows descriptions as labels


# Absent from a request means "not prescribed" / "not measured": what a discharge summary leaves out.
API_DEFAULTS = {**dict.fromkeys(MEDICATIONS, "No"), "max_glu_serum": "None", "A1Cresult": "None"}


def _field(col: Column, json_types: bool) -> tuple[Any, Any]:
    schema = _json_schema(col)
    if col.name in API_DEFAULTS:
        schema["default"] = API_DEFAULTS[col.name]
    annotated = Annotated[Any, BeforeValidator(_checker(col, json_types)), WithJsonSchema(schema)]
    default = API_DEFAULTS.get(col.name, None if _optional(col) else ...)
    return annotated, Field(default=default, alias=col.name)


def _fields(json_types: bool) -> dict[str, Any]:
    """create_model's field definitions (attribute name → (type, FieldInfo)); typed as a plain mapping, since mypy
    would otherwise match the tuples against create_model's own keyword parameters (__doc__, __base__, ...)."""
    return {_python_name(c.name): _field(c, json_types) for c in COLUMNS}


_ATTRIBUTES = tuple((col.name, _python_name(col.name)) for col in COLUMNS)  # UCI name → model attribute


class _EncounterBase(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False, frozen=True)

    def to_record(self) -> dict[str, Any]:
        """The typed record the feature code consumes, keyed by UCI column names."""
        return {name: getattr(self, attr) for name, attr in _ATTRIBUTES}


Encounter = create_model(
    "Encounter",
    __base__=_EncounterBase,
    __doc__="One hospital encounter in the UCI format (an optional field absent, null, '?' or '' means missing). "
    "`patient_nbr` (optional) lets the service use the patient's earlier encounters; `readmitted` is ignored.",
    **_fields(json_types=True),
)
# A /predict/batch item: the same fields, with CSV text read for numbers (the clinician page sends an uploaded
# file's cells as they are). Not in the OpenAPI document: a batch item that fails is reported in the 200's results.
BatchEncounter = create_model(
    "BatchEncounter",
    __base__=_EncounterBase,
    __doc__="One /predict/batch item: an Encounter whose numbers may also be CSV text such as '6'.",
    **_fields(json_types=False),
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
    encounters: list[Any] = Field(
        min_length=1,
        max_length=MAX_BATCH,
        description="UCI encounter objects, as for /predict but numbers may also be CSV text ('6'), and "
        "discharge_disposition_id may be any code. Each item is validated on its own: one that is not a valid, "
        "in-cohort encounter is reported in the results by index, with the others scored.",
    )


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


_OBJECT_ERRORS = frozenset({"model_type", "model_attributes_type", "dict_type"})


ENCOUNTER_FIELDS = tuple(c.name for c in COLUMNS)


def unknown_field_message(name: object) -> str:
    """The answer to a field the encounter does not have, with the closest UCI field name when one is close (a
    typo such as time_in_hospitl); the suggestion is always a schema name, never the caller's text."""
    close = difflib.get_close_matches(str(name), ENCOUNTER_FIELDS, n=1, cutoff=0.75)
    return f"is not a UCI encounter field; did you mean {close[0]!r}?" if close else "is not a UCI encounter field"


def validation_details(exc: ValidationError, prefix: str = "", unknown: str | None = None) -> list[Detail]:
    """A 422's details: each failing field's path and what is wrong with it, never the value sent."""
    details = []
    for err in exc.errors(include_url=False):
        # A location may hold a key the caller chose (an unknown field): escaped and capped, as in a log line.
        loc = ".".join(safe_text(p) if isinstance(p, str) else str(p) for p in err["loc"])
        field = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "body"
        if err["type"] == "missing":
            message = "is required"
        elif err["type"] == "extra_forbidden":
            message = unknown or unknown_field_message(err["loc"][-1] if err["loc"] else "")
        elif err["type"] in _OBJECT_ERRORS:
            message = "must be a JSON object"
        else:
            message = err["msg"]
        details.append(Detail(field, message))
    return details


def _not_a_number(name: str) -> Any:
    """json.loads accepts NaN and ±Infinity, which RFC 8259 (section 6) does not: refuse them as malformed."""
    raise MalformedJson(f"is not valid JSON: {name} is not a JSON number")


_CONTAINERS = frozenset({dict, list})


def _too_deep(value: Any, limit: int) -> bool:
    """Whether containers nest deeper than ``limit``: level by level, not recursively (the point is to refuse what
    recursion can't take), and a container holding none is passed over at C speed (isdisjoint over map(type)), so a
    500-encounter batch costs ~1 ms."""
    level = [value]
    for _depth in range(limit):
        deeper: list[Any] = []
        for node in level:
            children = node.values() if type(node) is dict else node
            if not _CONTAINERS.isdisjoint(map(type, children)):
                deeper += [c for c in children if type(c) is dict or type(c) is list]
        if not deeper:
            return False
        level = deeper
    return True


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # the only way a UTF-16 surrogate gets into parsed JSON


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            try:
                node.encode()
            except UnicodeEncodeError:
                return True
        elif isinstance(node, dict):
            stack += [*node.keys(), *node.values()]
        elif isinstance(node, list):
            stack += node
    return False


def parse_json(body: bytes | None, limit: int) -> Any:
    """The body as JSON, or a 4xx saying why not. Besides malformed or oversized bodies, refuses (400) JSON that
    would break later steps: nesting past MAX_JSON_DEPTH, integers past Python's int-string limit, NaN/Infinity,
    and escaped lone surrogates (not Unicode text: no UTF-8 encoder writes them back)."""
    if body is None or not body.strip():
        raise MalformedJson("the request body is empty; send a JSON object")
    if len(body) > limit:
        raise PayloadTooLarge("body", f"is {len(body):,} bytes; the limit is {limit:,}")
    try:
        data = json.loads(body, parse_constant=_not_a_number)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedJson(f"is not valid JSON: {safe_text(str(exc), 200)}") from None
    except RecursionError:
        raise UnacceptableJson(f"is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError:  # int(): "Exceeds the limit (4300 digits) for integer string conversion"
        raise UnacceptableJson(f"holds a number of more than {sys.get_int_max_str_digits()} digits") from None
    # Containers can nest no deeper than there are brackets: most bodies need no walk at all.
    brackets = body.count(b"{") + body.count(b"[") if type(data) in (dict, list) else 0
    if brackets > MAX_JSON_DEPTH and _too_deep(data, MAX_JSON_DEPTH):
        raise UnacceptableJson(f"is nested deeper than {MAX_JSON_DEPTH} levels")
    if _SURROGATE_ESCAPE.search(body) and _has_lone_surrogate(data):
        raise UnacceptableJson("holds a string with a lone UTF-16 surrogate escape, which is not Unicode text")
    return data


def parse_encounter_body(data: Any, prefix: str = "", *, batch_item: bool = False) -> dict[str, Any]:
    """Validate one encounter object (a batch item also reads CSV text for numbers); raise ValidationFailed naming
    every bad field."""
    if not isinstance(data, dict):
        raise ValidationFailed([Detail(prefix.rstrip(".") or "body", "must be a JSON object of UCI fields")])
    try:
        return (BatchEncounter if batch_item else Encounter).model_validate(data).to_record()
    except ValidationError as exc:
        raise ValidationFailed(validation_details(exc, prefix)) from None


BATCH_SHAPE = '{"encounters": [<encounter>, ...]}'


def parse_batch_body(data: Any) -> list[Any]:
    if isinstance(data, dict) and isinstance(data.get("encounters"), list) and len(data["encounters"]) > MAX_BATCH:
        raise PayloadTooLarge("encounters", f"has {len(data['encounters'])} items; at most {MAX_BATCH} per batch")
    # The two shapes people send first: a bare list, and one encounter on its own.
    if isinstance(data, list):
        raise ValidationFailed([Detail("body", f"must be {BATCH_SHAPE}: wrap the list in an object")], "invalid batch")
    if isinstance(data, dict) and "encounters" not in data and set(data) & set(ENCOUNTER_FIELDS):
        shape = f"must be {BATCH_SHAPE}; this looks like one encounter: send it to /predict or wrap it"
        raise ValidationFailed([Detail("body", shape)], "invalid batch")
    try:
        return BatchRequest.model_validate(data).encounters
    except ValidationError as exc:
        unknown = f"is not a batch field; the body is {BATCH_SHAPE}"
        raise ValidationFailed(validation_details(exc, unknown=unknown), error="invalid batch") from None
