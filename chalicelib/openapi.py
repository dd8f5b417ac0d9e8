"""OpenAPI 3.1 document generated from the same pydantic models that validate requests."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .api_models import (
    MAX_BATCH,
    BatchRequest,
    BatchResponse,
    Encounter,
    ErrorResponse,
    Health,
    Prediction,
)
from .similar_models import ChatRequest, ChatResponse, SimilarRequest, SimilarResponse

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


ERRORS = {
    "400": _json(ErrorResponse, "Malformed JSON or bad query parameter"),
    "413": _json(ErrorResponse, "Body or batch too large"),
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
    "description": "true stores the encounter in the patient's history (needs patient_nbr and encounter_id)",
}


def document(version: str = "1") -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in MODELS], ref_template="#/components/schemas/{model}")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "readmit",
            "version": version,
            "description": "30-day readmission risk for diabetic patients (UCI Diabetes 130-US hospitals).",
        },
        "paths": {
            "/predict": {
                "post": {
                    "summary": "Score one encounter",
                    "parameters": [EXPLAIN, RECORD],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(Encounter)}}},
                    "responses": {"200": _json(Prediction, "Calibrated risk, tier and top factors"), **ERRORS},
                }
            },
            "/predict/batch": {
                "post": {
                    "summary": f"Score up to {MAX_BATCH} encounters; invalid items are reported by index",
                    "parameters": [EXPLAIN, RECORD],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(BatchRequest)}}},
                    "responses": {"200": _json(BatchResponse, "Per-item predictions or errors"), **ERRORS},
                }
            },
            "/similar-patients": {
                "post": {
                    "summary": "The most similar past encounters (outcome, age band, a few features; no identifiers)",
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
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(ChatRequest)}}},
                    "responses": {
                        "200": _json(ChatResponse, "Bedrock's answer, or the template's (fallback_reason says why)"),
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
        },
        "components": {"schemas": defs["$defs"]},
    }
