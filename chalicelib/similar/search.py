"""Similar past patients for one encounter: embed it as the index was embedded, search, shape the neighbours.

A neighbour carries its similarity, outcome, age band and shown features, never an identifier: point ids are
salted hashes and stay inside this module. The queried encounter itself, if it was indexed, is not its own
neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chalicelib.data.schema import POSITIVE_LABEL, columns_from_records
from chalicelib.similar.embedding import Embedder
from chalicelib.similar.indexing import point_id
from chalicelib.similar.vectors import VectorStore

DEFAULT_K = 5
MAX_K = 50


@dataclass
class Neighbours:
    neighbours: list[dict[str, Any]]

    @property
    def count(self) -> int:
        return len(self.neighbours)

    @property
    def readmission_rate(self) -> float:
        """Share of the neighbours readmitted within 30 days (0 when there are none)."""
        if not self.neighbours:
            return 0.0
        return round(sum(n["readmitted_30d"] for n in self.neighbours) / len(self.neighbours), 4)


class SimilarPatients:
    def __init__(self, embedder: Embedder, store: VectorStore) -> None:
        self.embedder = embedder
        self.store = store

    def find(self, record: dict[str, Any], k: int = DEFAULT_K, same_age_band: bool = False) -> Neighbours:
        """The k most similar indexed encounters (raises vectors.IndexMissing when nothing is indexed)."""
        vector = self.embedder.embed(columns_from_records([record]))[0]
        own = point_id(record["encounter_id"]) if record.get("encounter_id") is not None else None
        hits = self.store.search(vector, k + (own is not None), record["age"] if same_age_band else None)
        shown = [h for h in hits if h.id != own][:k]
        return Neighbours([_neighbour(h.similarity, h.payload) for h in shown])


def _neighbour(similarity: float, payload: dict[str, Any]) -> dict[str, Any]:
    outcome = payload.get("outcome")
    return {
        "similarity": round(min(1.0, max(-1.0, similarity)), 4),
        "outcome": outcome,
        "readmitted_30d": outcome == POSITIVE_LABEL,
        "age": payload.get("age"),
        "features": dict(payload.get("features") or {}),
    }
