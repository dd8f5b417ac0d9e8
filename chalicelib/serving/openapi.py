"""OpenAPI 3.1 document generated from the same pydantic models that validate requests."""

from __future__ import annotations

import copy
import sys
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from chalicelib.model.card import PLOTS
from chalicelib.serving import auth
from chalicelib.serving.api_models import (
    MAX_BATCH,
    MAX_BATCH_BODY_BYTES,
    MAX_BODY_BYTES,
    MAX_JSON_DEPTH,
    BatchRequest,
    BatchResponse,
    Encounter,
    ErrorResponse,
    Health,
    Prediction,
)
from chalicelib.serving.similar_models import ChatRequest, ChatResponse, SimilarRequest, SimilarResponse

MODELS: tuple[type[BaseModel], ...] = (
    Encounter,
    Prediction,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    Health,
    SimilarRequest,
    SimilarResponse,
    ChatRequest,
    ChatResponse,
)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


# The example encounter (also the page's prefilled form and events/api_predict.json's body).
EXAMPLE: dict[str, Any] = {
    "encounter_id": 900001,
    "patient_nbr": 800001,
    "race": "Caucasian",
    "gender": "Female",
    "age": "[70-80)",
    "weight": "?",
    "admission_type_id": 1,
    "discharge_disposition_id": 3,
    "admission_source_id": 7,
    "time_in_hospital": 6,
    "payer_code": "MC",
    "medical_specialty": "InternalMedicine",
    "num_lab_procedures": 59,
    "num_procedures": 1,
    "num_medications": 18,
    "number_outpatient": 0,
    "number_emergency": 1,
    "number_inpatient": 2,
    "diag_1": "428",
    "diag_2": "250.02",
    "diag_3": "403",
    "number_diagnoses": 9,
    "max_glu_serum": "None",
    "A1Cresult": ">8",
    "metformin": "No",
    "insulin": "Up",
    "glipizide": "Steady",
    "change": "Ch",
    "diabetesMed": "Yes",
}

ERRORS = {
    "400": _json(
        ErrorResponse,
        "Malformed JSON (NaN and Infinity included), JSON the service does not accept (nested deeper than "
        f"{MAX_JSON_DEPTH} levels, an integer of more than {sys.get_int_max_str_digits()} digits, a lone UTF-16 "
        "surrogate escape), or a bad query parameter",
    ),
    "413": _json(
        ErrorResponse,
        f"Body larger than {MAX_BODY_BYTES:,} bytes ({MAX_BATCH_BODY_BYTES:,} for a batch), or a batch of more than "
        f"{MAX_BATCH} encounters",
    ),
    "415": _json(ErrorResponse, "Content-Type is not application/json"),
    "422": _json(ErrorResponse, "A field is wrong: each detail names the field and why"),
    "503": _json(ErrorResponse, "No model loaded yet"),
}
EXPLAIN = {
    "name": "explain",
    "in": "query",
    "required": False,
    "schema": {"type": "boolean", "default": True},
    "description": "false skips the SHAP factors",
}
RECORD = {
    "name": "record",
    "in": "query",
    "required": False,
    "schema": {"type": "boolean", "default": False},
    # OpenAPI cannot make a body field required by a query parameter: said here, and answered 422 naming the field.
    "description": "true also stores the encounter in the patient's history, so patient_nbr and encounter_id are "
    "then required (a 422 names each one missing), although the Encounter schema lets them be null",
}


NOT_FOUND = _json(ErrorResponse, "Not part of the current model's bundle")
WEB_PATHS: dict[str, Any] = {
    "/": {
        "get": {
            "summary": "The clinician page (HTML, CSS and JavaScript in one document; no API key needed)",
            "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
        }
    },
    "/model/card": {
        "get": {
            "summary": "The champion's model card: Markdown, the same rendered as HTML, and its plot names",
            "responses": {
                "200": {"description": "Model card", "content": {"application/json": {"schema": {"type": "object"}}}},
                "404": NOT_FOUND,
                "503": ERRORS["503"],
            },
        }
    },
    "/model/shadow": {
        "get": {
            "summary": "The shadow model (the registry alias shadow) against the champion on the same requests: "
            "tier agreement, churn of the high-risk list, risk shift, realized AUC and ECE once labels have matured; "
            "shadow_version null means no shadow model",
            "parameters": [
                {
                    "name": "hours",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 8760},
                    "description": "report the last N hours (default: since the shadow alias was set)",
                }
            ],
            "responses": {
                "200": {
                    "description": "Shadow report",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "400": _json(ErrorResponse, "A bad query parameter"),
                "503": _json(ErrorResponse, "The prediction log cannot be read by the API (set READMIT_SHADOW_LOG)"),
            },
        }
    },
    "/model/plots/{name}": {
        "get": {
            "summary": "One of the model card's plots (send Accept: image/png)",
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "enum": list(PLOTS)}}
            ],
            "responses": {
                "200": {"description": "PNG", "content": {"image/png": {"schema": {"type": "string"}}}},
                "404": NOT_FOUND,
                "503": ERRORS["503"],
            },
        }
    },
}


AUTH_ERRORS = {
    "401": _json(
        ErrorResponse,
        "No valid access token (when the deployment authenticates callers): WWW-Authenticate says which",
    ),
    "403": _json(ErrorResponse, "The token lacks the scope this route needs (WWW-Authenticate names it)"),
}
SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An access token with the scope the route names: from Amazon Cognito on AWS (the hosted "
        "sign-in for people, client credentials for services), from `readmit token` under `readmit serve --auth "
        "dev`. Locally the API runs without authentication unless started with --auth.",
    }
}


def _secured(paths: dict[str, Any]) -> dict[str, Any]:
    """Each operation's security requirement and auth errors, from the one rule in chalicelib/serving/auth.py (OpenAPI
    3.1 lets a non-OAuth scheme list the roles it needs: the scopes here). A copy: WEB_PATHS is shared."""
    paths = copy.deepcopy(paths)
    for path, operations in paths.items():
        for operation in operations.values():
            scope = auth.ROUTE_SCOPES.get(path)
            if path in auth.PUBLIC_ROUTES or path == "/openapi.json":
                operation["security"] = []
            elif scope is not None:
                operation["security"] = [{"bearerAuth": [f"{auth.RESOURCE_SERVER}/{scope}"]}]
                operation["responses"] = {**operation["responses"], **AUTH_ERRORS}
    return paths


def document(version: str = "1") -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in MODELS], ref_template="#/components/schemas/{model}")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "readmit",
            "version": version,
            "description": (
                "30-day readmission risk for diabetic patients (UCI Diabetes 130-US hospitals). A path not listed "
                "here answers 404, and a listed path called with another method 405 with an Allow header, both "
                "as an ErrorResponse."
            ),
        },
        "paths": _secured(
            {
                "/predict": {
                    "post": {
                        "summary": "Score one encounter",
                        "parameters": [EXPLAIN, RECORD],
                        "requestBody": {
                            "required": True,
                            "content": {"application/json": {"schema": _ref(Encounter), "example": EXAMPLE}},
                        },
                        "responses": {"200": _json(Prediction, "Calibrated risk, tier and top factors"), **ERRORS},
                    }
                },
                "/predict/batch": {
                    "post": {
                        "summary": f"Score up to {MAX_BATCH} encounters; invalid items are reported by index",
                        "parameters": [EXPLAIN, RECORD],
                        "requestBody": {
                            "required": True,
                            "content": {"application/json": {"schema": _ref(BatchRequest)}},
                        },
                        "responses": {"200": _json(BatchResponse, "Per-item predictions or errors"), **ERRORS},
                    }
                },
                "/similar-patients": {
                    "post": {
                        "summary": (
                            "The most similar past encounters (outcome, age band, a few features; no identifiers)"
                        ),
                        "requestBody": {
                            "required": True,
                            "content": {"application/json": {"schema": _ref(SimilarRequest)}},
                        },
                        "responses": {
                            "200": _json(SimilarResponse, "Neighbours and their 30-day readmission rate"),
                            **{k: v for k, v in ERRORS.items() if k != "503"},
                            "503": _json(ErrorResponse, "No similar-patient index yet"),
                        },
                    }
                },
                "/chat": {
                    "post": {
                        "summary": "An answer grounded in the risk, its top factors and similar patients' outcomes",
                        "requestBody": {
                            "required": True,
                            "content": {"application/json": {"schema": _ref(ChatRequest)}},
                        },
                        "responses": {
                            "200": _json(
                                ChatResponse, "Bedrock's answer, or the template's (fallback_reason says why)"
                            ),
                            **ERRORS,
                        },
                    }
                },
                "/health": {"get": {"summary": "Liveness and readiness", "responses": {"200": _json(Health, "Up")}}},
                "/model": {
                    "get": {
                        "summary": "The champion's version, metrics, thresholds and features",
                        "responses": {
                            "200": {
                                "description": "Model information",
                                "content": {"application/json": {"schema": {"type": "object"}}},
                            },
                            "503": ERRORS["503"],
                        },
                    }
                },
                "/metrics": {
                    "get": {
                        "summary": "Prometheus metrics",
                        "responses": {
                            "200": {
                                "description": "Prometheus text format",
                                "content": {"text/plain": {"schema": {"type": "string"}}},
                            }
                        },
                    }
                },
                "/openapi.json": {
                    "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}
                },
                **WEB_PATHS,
            }
        ),
        "components": {"schemas": defs["$defs"], "securitySchemes": SECURITY_SCHEMES},
    }
