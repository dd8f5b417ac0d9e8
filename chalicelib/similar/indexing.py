"""Past encounters → points in the vector store: id, vector, payload. Shared by `readmit index` and the embedder
Lambda; columnar in and numpy throughout (no pandas), so 100k rows and a 50-row chunk run the same code.

A point id is the salted hash of the encounter id, so indexing the same encounter twice (a redelivered message,
an overlapping file, a re-run) overwrites one point. The payload is model-free and identifier-free: the outcome,
the age band and a few features a clinician would want to compare, under the labels the API uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chalicelib.core.identifiers import hash_id
from chalicelib.data.schema import COLUMN_BY_NAME, EXCLUDED_DISPOSITIONS
from chalicelib.features.encoding import encode
from chalicelib.features.icd9 import DIAG_GROUPS
from chalicelib.features.table import DISCHARGE_GROUPS, DISCHARGE_LABELS, FEATURE_BY_NAME, FEATURE_NAMES, Columns
from chalicelib.similar.embedding import Embedder, LocalEmbedder
from chalicelib.similar.vectors import VectorStore

OUTCOMES = ("<30", ">30", "NO")
CHUNK = 5000
# Payload features: (label, feature whose value is shown). Labels are the model's own, as in /predict's factors.
SHOWN_COUNTS = (
    "time_in_hospital",
    "number_inpatient",
    "number_emergency",
    "number_diagnoses",
    "num_medications",
    "charlson_index",
)
PRIMARY_DIAGNOSIS = "Primary diagnosis group"
HBA1C = "HbA1c result"
INSULIN = FEATURE_BY_NAME["insulin_on"].label
DISCHARGE = "Discharged"
_AGE_BANDS = np.array((*COLUMN_BY_NAME["age"].allowed, "?"), dtype=object)
_A1C = np.array((*COLUMN_BY_NAME["A1Cresult"].allowed, "?"), dtype=object)
_DISCHARGE = np.full(32, "other or unknown", dtype=object)
for _group, _ids in DISCHARGE_GROUPS.items():
    _DISCHARGE[list(_ids)] = DISCHARGE_LABELS[_group]
_DIAG1 = [FEATURE_NAMES.index(f"diag1_{g}") for g in DIAG_GROUPS]


def point_id(encounter_id: int | str) -> str:
    return hash_id(encounter_id, kind="encounter")


def payloads(cols: Columns, X: np.ndarray, outcomes: Sequence[str]) -> list[dict[str, Any]]:
    """One identifier-free payload per row."""
    counts = X[:, [FEATURE_NAMES.index(n) for n in SHOWN_COUNTS]].astype(int).tolist()
    labels = [FEATURE_BY_NAME[n].label for n in SHOWN_COUNTS]
    diag = X[:, _DIAG1]
    primary = np.where(diag.max(axis=1) > 0, np.array(DIAG_GROUPS, dtype=object)[diag.argmax(axis=1)], "not recorded")
    ages = _AGE_BANDS[cols["age"]].tolist()
    a1c = _A1C[cols["A1Cresult"]].tolist()
    insulin = np.where(X[:, FEATURE_NAMES.index("insulin_on")] > 0, "yes", "no").tolist()
    discharge = _DISCHARGE[cols["discharge_disposition_id"].astype(int)].tolist()
    out = []
    for i, outcome in enumerate(outcomes):
        features: dict[str, Any] = dict(zip(labels, counts[i], strict=True))
        features.update({PRIMARY_DIAGNOSIS: primary[i], HBA1C: a1c[i], INSULIN: insulin[i], DISCHARGE: discharge[i]})
        out.append({"outcome": outcome, "age": ages[i], "features": features})
    return out


@dataclass
class Selection:
    """Which rows of a labelled batch go into the index, and why the others do not."""

    keep: np.ndarray
    excluded: int  # discharged to hospice or expired: outside the cohort, as for the model
    unlabelled: int  # no known outcome: nothing to show a clinician


def select(cols: Columns, outcomes: np.ndarray) -> Selection:
    excluded = np.isin(cols["discharge_disposition_id"], list(EXCLUDED_DISPOSITIONS))
    labelled = np.isin(outcomes, OUTCOMES)
    return Selection(~excluded & labelled, int(excluded.sum()), int((~excluded & ~labelled).sum()))


def take(cols: Columns, rows: np.ndarray) -> dict[str, np.ndarray]:
    return {name: values[rows] for name, values in cols.items()}


def index_rows(
    cols: Columns,
    encounter_ids: Sequence[int | str],
    outcomes: Sequence[str],
    embedder: Embedder,
    store: VectorStore,
    *,
    chunk: int = CHUNK,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Embed and upsert every row (already selected), ``chunk`` rows at a time; returns how many."""
    n = len(encounter_ids)
    store.ensure(embedder.dimension)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(start + chunk, n))
        part = take(cols, rows)
        X = encode(part)
        vectors = LocalEmbedder.from_features(X) if isinstance(embedder, LocalEmbedder) else embedder.embed(part)
        ids = [point_id(encounter_ids[int(i)]) for i in rows]
        store.upsert(ids, vectors, payloads(part, X, [outcomes[int(i)] for i in rows]))
        if progress:
            progress(len(rows))
    store.flush()
    return n
