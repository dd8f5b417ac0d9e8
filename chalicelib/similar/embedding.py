"""Embedders: encounters in columnar form → unit-length float32 vectors, one interface chosen by config.

``local`` (the default) needs no model and no network: it re-weights the features ``features.encode`` computes
(the same code path the model uses) into a fixed-dimension vector. Its scales are design constants, not fitted
to any data set, so an encounter gets the same vector whichever file, chunk or request it arrives in: that is
what makes redelivery idempotent and lets the API embed a query exactly as the indexer embedded the data.
History features are left out for the same reason (a lone encounter has no history), and race is left out on
purpose: who counts as "a patient like this" should not depend on race.

``bedrock`` sends an identifier-free text rendering of the encounter to Amazon Titan Text Embeddings v2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from chalicelib.core import settings
from chalicelib.core.aws_clients import LazyClient
from chalicelib.data.schema import COLUMN_BY_NAME, FEATURE_INPUTS, MEDICATIONS
from chalicelib.features.encoding import encode
from chalicelib.features.icd9 import diag_group
from chalicelib.features.table import DISCHARGE_GROUPS, DISCHARGE_LABELS, FEATURE_NAMES, Columns

TITAN_DIMENSIONS = (256, 512, 1024)


class Embedder(Protocol):
    """What the indexer and the API need from an embedder."""

    name: str
    dimension: int

    def embed(self, cols: Columns) -> np.ndarray:
        """(n × dimension) float32, each row of unit length."""
        ...


class EmbeddingError(RuntimeError):
    """The embedding service answered, but not with a usable vector."""


# ---- local ------------------------------------------------------------------------------------------------
# Not part of the similarity: raw codes (not metric), patient history (absent for a lone encounter), race.
_LEFT_OUT = ("_code", "hist_", "race_")
# Counts: log1p(min(x, cap)) / log1p(cap) maps 0..cap onto 0..1 and damps the long tails.
_LOG_CAPS = {
    "time_in_hospital": 14,
    "num_lab_procedures": 130,
    "num_procedures": 6,
    "num_medications": 80,
    "number_diagnoses": 16,
    "number_outpatient": 40,
    "number_emergency": 40,
    "number_inpatient": 20,
    "total_visits": 80,
    "meds_active": 6,
    "meds_changed": 4,
    "meds_up": 4,
    "meds_down": 4,
    "charlson_index": 10,
    "lace_score": 19,
    "meds_per_day": 80,
    "labs_per_day": 130,
    "inpatient_x_los": 200,
    "age_x_inpatient": 2000,
}
_LINEAR_CAPS = {"age_years": 100.0, "diags_missing": 3.0}  # plus every diags_<group> count (0..3)
# What a clinician would call "alike" first: prior utilisation, age, the primary diagnosis, where they went.
_WEIGHTS = {
    "number_inpatient": 3.0,
    "any_inpatient": 2.0,
    "number_emergency": 2.0,
    "age_years": 2.0,
    "time_in_hospital": 1.5,
    "diag1_": 1.5,
    "discharge_": 1.5,
    "gender_male": 0.5,
    "payer_": 0.5,
    "meds_per_day": 0.5,
    "labs_per_day": 0.5,
    "inpatient_x_los": 0.5,
    "age_x_inpatient": 0.5,
}


def _weight(name: str) -> float:
    return next((w for key, w in _WEIGHTS.items() if name == key or (key.endswith("_") and name.startswith(key))), 1.0)


AXES: tuple[str, ...] = tuple(n for n in FEATURE_NAMES if not any(part in n for part in _LEFT_OUT))
_COLUMNS = np.array([FEATURE_NAMES.index(n) for n in AXES])
_WEIGHT = np.array([_weight(n) for n in AXES], dtype=np.float32)
_IS_LOG = np.array([n in _LOG_CAPS for n in AXES])
_CAP = np.array(
    [_LOG_CAPS.get(n) or _LINEAR_CAPS.get(n) or (3.0 if n.startswith("diags_") else 1.0) for n in AXES],
    dtype=np.float32,
)


class LocalEmbedder:
    """Weighted, scaled clinical features, L2-normalised: cosine similarity = "how alike are these stays"."""

    name = "local"
    dimension = len(AXES)

    def embed(self, cols: Columns) -> np.ndarray:
        return self.from_features(encode(cols))

    @staticmethod
    def from_features(X: np.ndarray) -> np.ndarray:
        """The embedding of an already-encoded feature matrix (the batch indexer has one)."""
        Z = np.nan_to_num(X[:, _COLUMNS].astype(np.float32), nan=0.0)
        np.clip(Z, 0.0, _CAP, out=Z)
        Z[:, _IS_LOG] = np.log1p(Z[:, _IS_LOG]) / np.log1p(_CAP[_IS_LOG])
        Z[:, ~_IS_LOG] /= _CAP[~_IS_LOG]
        Z *= _WEIGHT
        return normalise(Z)


def normalise(Z: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    return (Z / np.where(norms == 0, 1.0, norms)).astype(np.float32)


# ---- bedrock ----------------------------------------------------------------------------------------------
_DISCHARGE_BY_ID = {i: DISCHARGE_LABELS[g] for g, ids in DISCHARGE_GROUPS.items() for i in ids}


def row_record(cols: Columns, i: int) -> dict[str, Any]:
    """Row ``i`` of the columnar form back as UCI values (categories decoded, '' and NaN as None)."""
    out: dict[str, Any] = {}
    for col in FEATURE_INPUTS:
        v = cols[col.name][i]
        if col.kind == "category":
            out[col.name] = None if int(v) < 0 else col.allowed[int(v)]
        elif col.kind == "icd9":
            out[col.name] = str(v) or None
        else:
            out[col.name] = None if np.isnan(v) else int(v)
    return out


def render_text(record: Mapping[str, Any]) -> str:
    """A concise clinical summary with no identifiers (and no race), for a text embedding model."""
    diags = [f"{d} ({diag_group(d)})" for d in (record.get(k) for k in ("diag_1", "diag_2", "diag_3")) if d]
    drugs = [f"{m} {record[m]}" for m in MEDICATIONS if record.get(m) not in (None, "No")]
    admission = COLUMN_BY_NAME["admission_type_id"].codes or {}
    source = COLUMN_BY_NAME["admission_source_id"].codes or {}
    parts = [
        f"{record['gender']} patient aged {record['age']}.",
        f"Admission: {admission.get(record['admission_type_id'], '?')}, "
        f"via {source.get(record['admission_source_id'], '?')}.",
        f"{record['time_in_hospital']} days in hospital.",
        f"Diagnoses: {', '.join(diags) or 'not recorded'}; {record['number_diagnoses']} diagnoses entered.",
        f"{record['num_lab_procedures']} lab tests, {record['num_procedures']} procedures, "
        f"{record['num_medications']} medications.",
        f"Prior year: {record['number_outpatient']} outpatient, {record['number_emergency']} emergency, "
        f"{record['number_inpatient']} inpatient visits.",
        f"HbA1c {record.get('A1Cresult') or 'None'}; max glucose serum {record.get('max_glu_serum') or 'None'}.",
        f"Diabetes drugs: {', '.join(drugs) or 'none'}; change {record.get('change')}; on diabetes medication "
        f"{record.get('diabetesMed')}.",
        f"Discharged {_DISCHARGE_BY_ID.get(record['discharge_disposition_id'], 'to other or unknown destination')}.",
    ]
    return " ".join(parts)


class BedrockEmbedder:
    """Amazon Titan Text Embeddings v2 through ``bedrock-runtime`` ``invoke_model`` (one text per call)."""

    name = "bedrock"

    def __init__(
        self, client: Any = None, model_id: str = settings.DEFAULT_EMBED_MODEL, dimension: int = 512, workers: int = 4
    ) -> None:
        if dimension not in TITAN_DIMENSIONS:
            raise ValueError(f"Titan v2 dimensions are {TITAN_DIMENSIONS}, not {dimension}")
        self._client = client
        self.model_id = model_id
        self.dimension = dimension
        self.workers = workers

    client = LazyClient("bedrock-runtime")

    def embed(self, cols: Columns) -> np.ndarray:
        n = len(cols["time_in_hospital"])
        texts = [render_text(row_record(cols, i)) for i in range(n)]
        if self.workers <= 1 or n <= 1:
            rows = [self.embed_text(t) for t in texts]
        else:
            with ThreadPoolExecutor(self.workers) as pool:
                rows = list(pool.map(self.embed_text, texts))
        return normalise(np.array(rows, dtype=np.float32).reshape(n, self.dimension))

    def embed_text(self, text: str) -> list[float]:
        body = {"inputText": text, "dimensions": self.dimension, "normalize": True, "embeddingTypes": ["float"]}
        response = self.client.invoke_model(
            modelId=self.model_id, body=json.dumps(body), contentType="application/json", accept="application/json"
        )
        answer = json.loads(response["body"].read())
        vector = answer.get("embedding") or (answer.get("embeddingsByType") or {}).get("float")
        if not isinstance(vector, list) or len(vector) != self.dimension:
            raise EmbeddingError(f"{self.model_id} returned no {self.dimension}-dimension embedding")
        return vector


def open_embedder(name: str | None = None, env: Mapping[str, str] = os.environ, client: Any = None) -> Embedder:
    """The embedder named explicitly, else by $READMIT_EMBEDDER (default ``local``)."""
    s = settings.Settings.from_env(env)
    name = name or s.embedder
    if name == "local":
        return LocalEmbedder()
    if name == "bedrock":
        return BedrockEmbedder(client, s.embed_model, s.embed_dimensions)
    raise ValueError(f"unknown embedder {name!r}; use local or bedrock")
