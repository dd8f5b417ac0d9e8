"""Qdrant as the vector store: a server (the EKS deployment, by URL) or the client's embedded local mode.

qdrant-client takes ~2 s to import, so this module is imported only when the qdrant store is selected.

On a server the collection is created with a deliberate replication (``Replication``): the default of one copy
per shard makes the collection unavailable when one of the three StatefulSet peers is down, while "three or more
nodes and two or more shard replicas ... can perform all operations even while one node is down"
(https://qdrant.tech/documentation/guides/distributed_deployment/). The server's API key comes from Secrets
Manager (``$READMIT_QDRANT_API_KEY_SECRET``) or ``$READMIT_QDRANT_API_KEY``; it is never logged.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from chalicelib.core import settings
from chalicelib.core.aws_clients import secret_string
from chalicelib.similar.vectors import (
    DimensionMismatch,
    Hit,
    StoreNotConfigured,
    check_upsert,
    point_uuid,
    query_vector,
)

UPSERT_BATCH = 1024


class Replication(BaseModel):
    """Copies of each shard across the server's peers, and how many must acknowledge a write.

    Defaults: 2 copies (one peer can be lost or drained without losing a shard) and 1 acknowledgement (writes
    keep succeeding while a peer is down; ``write_consistency_factor`` is "the number of replicas that must
    acknowledge a write", https://qdrant.tech/documentation/scaling/consistency-guarantees/)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    replication_factor: int = Field(settings.default("qdrant_replication_factor"), ge=1)
    write_consistency_factor: int = Field(settings.default("qdrant_write_consistency"), ge=1)

    @model_validator(mode="after")
    def _acks_within_copies(self) -> Replication:
        if self.write_consistency_factor > self.replication_factor:
            raise ValueError("write_consistency_factor cannot exceed replication_factor: no write could succeed")
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Replication:
        s = settings.Settings.from_env(env)
        try:
            return cls(
                replication_factor=s.qdrant_replication_factor, write_consistency_factor=s.qdrant_write_consistency
            )
        except ValueError as e:
            raise StoreNotConfigured(f"invalid Qdrant replication settings: {e}") from e


def secret_api_key(secret_id: str, client: Any = None) -> str:
    """The API key from Secrets Manager, fetched once per container (aws_clients.secret_string)."""
    value = secret_string(secret_id, client)
    if not value:
        raise StoreNotConfigured(f"secret {secret_id} holds an empty Qdrant API key")
    return value


def api_key(env: Mapping[str, str]) -> str | None:
    """The server's API key: the Secrets Manager secret when one is named, else the plain variable, else none."""
    s = settings.Settings.from_env(env)
    if s.qdrant_api_key_secret:
        return secret_api_key(s.qdrant_api_key_secret)
    return s.qdrant_api_key.get_secret_value() if s.qdrant_api_key else None


def qdrant_client(url: str | None = None, path: str | None = None, api_key: str | None = None) -> Any:
    """A client for the server at ``url`` (``http://`` in the cluster, ``https://`` through the TLS load balancer),
    else embedded local mode persisted under ``path`` (default ``$READMIT_HOME/qdrant``); ``":memory:"`` keeps it
    in memory."""
    from qdrant_client import QdrantClient

    if url:
        return QdrantClient(url=url, api_key=api_key or None, timeout=10)
    if path == ":memory:":
        return QdrantClient(":memory:")
    folder = Path(path) if path else settings.home() / "qdrant"
    folder.mkdir(parents=True, exist_ok=True)
    return QdrantClient(path=str(folder))


class QdrantStore:
    def __init__(
        self, client: Any, collection: str = settings.DEFAULT_COLLECTION, replication: Replication | None = None
    ) -> None:
        """``replication`` is for a server; None (embedded mode, one process) leaves the collection unreplicated."""
        from qdrant_client import models

        self.client = client
        self.collection = collection
        self.replication = replication
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
            copies = self.replication.model_dump() if self.replication else {}
            self.client.create_collection(
                self.collection, vectors_config=m.VectorParams(size=dimension, distance=m.Distance.COSINE), **copies
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
