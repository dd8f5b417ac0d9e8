"""Qdrant as the vector store: a server (the EKS deployment, by URL) or the client's embedded local mode.

qdrant-client takes ~2 s to import, so this module is imported only when the qdrant store is selected.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import settings
from .vectors import DimensionMismatch, Hit, check_upsert, point_uuid, query_vector

UPSERT_BATCH = 1024


def qdrant_client(url: str | None = None, path: str | None = None, api_key: str | None = None) -> Any:
    """A client for the server at ``url``, else embedded local mode persisted under ``path``
    (default ``$READMIT_HOME/qdrant``); ``path=":memory:"`` keeps it in memory."""
    from qdrant_client import QdrantClient

    if url:
        return QdrantClient(url=url, api_key=api_key or None, timeout=10)
    if path == ":memory:":
        return QdrantClient(":memory:")
    folder = Path(path) if path else settings.home() / "qdrant"
    folder.mkdir(parents=True, exist_ok=True)
    return QdrantClient(path=str(folder))


class QdrantStore:
    def __init__(self, client: Any, collection: str = settings.DEFAULT_COLLECTION) -> None:
        from qdrant_client import models

        self.client = client
        self.collection = collection
        self._models = models

    def _dimension(self) -> int | None:
        if not self.client.collection_exists(self.collection):
            return None
        vectors = self.client.get_collection(self.collection).config.params.vectors
        return int(vectors.size)

    def ensure(self, dimension: int) -> None:
        m = self._models
        current = self._dimension()
        if current is None:
            self.client.create_collection(
                self.collection, vectors_config=m.VectorParams(size=dimension, distance=m.Distance.COSINE)
            )
            with warnings.catch_warnings():  # embedded mode has no payload indexes and says so
                warnings.simplefilter("ignore")
                self.client.create_payload_index(self.collection, "age", m.PayloadSchemaType.KEYWORD)
        elif current != dimension:
            raise DimensionMismatch(f"collection {self.collection} holds {current}-d vectors, not {dimension}-d")

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[Mapping[str, Any]]) -> None:
        check_upsert(ids, vectors, payloads)
        self.ensure(vectors.shape[1])
        for start in range(0, len(ids), UPSERT_BATCH):
            stop = start + UPSERT_BATCH
            batch = self._models.Batch(
                ids=[point_uuid(i) for i in ids[start:stop]],
                vectors=np.asarray(vectors[start:stop], dtype=np.float32).tolist(),
                payloads=[dict(p) for p in payloads[start:stop]],
            )
            self.client.upsert(self.collection, points=batch, wait=True)

    def flush(self) -> None:
        """Upserts wait for the server's acknowledgement; nothing is buffered here."""

    def search(self, vector: np.ndarray, k: int, age_band: str | None = None) -> list[Hit]:
        m = self._models
        missing = f"no Qdrant collection {self.collection}: index some encounters first"
        query = query_vector(vector, self._dimension(), missing, f"collection {self.collection}")
        where = None
        if age_band is not None:
            where = m.Filter(must=[m.FieldCondition(key="age", match=m.MatchValue(value=age_band))])
        result = self.client.query_points(
            self.collection, query=query.tolist(), limit=k, query_filter=where, with_payload=True
        )
        return [Hit(str(p.id).replace("-", ""), float(p.score), dict(p.payload or {})) for p in result.points]

    def count(self) -> int:
        if not self.client.collection_exists(self.collection):
            return 0
        return int(self.client.count(self.collection, exact=True).count)

    def reset(self) -> None:
        if self.client.collection_exists(self.collection):
            self.client.delete_collection(self.collection)
