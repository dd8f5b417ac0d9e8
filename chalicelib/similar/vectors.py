"""The vector-store interface, and the factory that picks an implementation from the environment.

Every store keeps the same thing: a unit-length vector per past encounter, under a point id that is the salted
hash of its encounter id (so redelivering a record overwrites its point), with a model-free, identifier-free
payload (outcome, age band, a few features). Implementations: ``numpy_store`` (the local default: exact search
over a float32 matrix), ``qdrant_store`` (a server URL, or the client's embedded local mode) and
``opensearch_store`` (Amazon OpenSearch k-NN).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from chalicelib.core import settings


@dataclass(frozen=True)
class Hit:
    """One neighbour: its point id (a salted hash), cosine similarity and payload."""

    id: str
    similarity: float
    payload: dict[str, Any]


class VectorStoreError(RuntimeError):
    """Base class for vector-store failures."""


class IndexMissing(VectorStoreError):
    """Nothing has been indexed yet (run `readmit index`, or upload encounters to the data bucket)."""


class StoreNotConfigured(VectorStoreError, ValueError):
    """The environment names no usable vector store (unknown name, or a server URL missing)."""


class DimensionMismatch(VectorStoreError):
    """The index was built with vectors of another dimension (another embedder): rebuild it."""


def query_vector(vector: np.ndarray, dimension: int | None, missing: str, where: str) -> np.ndarray:
    """The query as a flat float32 vector, checked against the index every store shares this rule for:
    no index yet (``dimension`` None or 0) is IndexMissing, another embedder's dimension is DimensionMismatch."""
    if not dimension:
        raise IndexMissing(missing)
    query = np.asarray(vector, dtype=np.float32).reshape(-1)
    if len(query) != dimension:
        raise DimensionMismatch(f"{where} holds {dimension}-d vectors, the query is {len(query)}-d")
    return query


class VectorStore(Protocol):
    def ensure(self, dimension: int) -> None:
        """Create the index for ``dimension``-long vectors if missing; raise DimensionMismatch if it differs."""
        ...

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[Mapping[str, Any]]) -> None:
        """Insert or overwrite points by id (idempotent: the same id twice is one point)."""
        ...

    def flush(self) -> None:
        """Make upserts durable and visible to other processes."""
        ...

    def search(self, vector: np.ndarray, k: int, age_band: str | None = None) -> list[Hit]:
        """The k most similar points, best first, optionally only those in one age band."""
        ...

    def count(self) -> int:
        """How many points are indexed (0 when there is no index)."""
        ...

    def reset(self) -> None:
        """Drop the index."""
        ...


def check_upsert(ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[Mapping[str, Any]]) -> None:
    if vectors.ndim != 2 or len(ids) != len(vectors) or len(ids) != len(payloads):
        raise ValueError(f"{len(ids)} ids, {vectors.shape} vectors and {len(payloads)} payloads do not line up")


def point_uuid(point_id: str) -> str:
    """Qdrant needs an integer or UUID id: a 32-hex-character hash is a UUID's 128 bits."""
    import uuid

    return str(uuid.UUID(hex=point_id))


def open_vector_store(name: str | None = None, env: Mapping[str, str] = os.environ) -> VectorStore:
    """The store named explicitly, else by $READMIT_VECTOR_STORE (default ``numpy``)."""
    s = settings.Settings.from_env(env)
    name = name or s.vector_store
    collection = s.vector_collection
    if name == "numpy":
        from chalicelib.similar.numpy_store import NumpyStore

        return NumpyStore(settings.index_dir(str(s.index_dir) if s.index_dir else None))
    if name == "qdrant":
        from chalicelib.similar.qdrant_store import QdrantStore, Replication, api_key, qdrant_client

        url, path = s.qdrant_url, s.qdrant_path
        # Embedded mode in a deployed Lambda would mean an index per container (sam/readmit invoke run locally).
        if not url and env.get("AWS_LAMBDA_FUNCTION_NAME") and env.get("AWS_SAM_LOCAL") != "true":
            raise StoreNotConfigured(f"on Lambda the qdrant store needs ${settings.ENV_QDRANT_URL} (the EKS service)")
        if not url:
            return QdrantStore(qdrant_client(path=path), collection)
        client = qdrant_client(url=url, api_key=api_key(env))
        return QdrantStore(client, collection, Replication.from_env(env))
    if name == "opensearch":
        from chalicelib.similar.opensearch_store import OpenSearchStore, is_serverless, opensearch_client

        url = s.opensearch_url
        if not url:
            raise StoreNotConfigured(f"the opensearch store needs ${settings.ENV_OPENSEARCH_URL}")
        return OpenSearchStore(opensearch_client(url), collection, serverless=is_serverless(url))
    raise StoreNotConfigured(f"unknown vector store {name!r}; use numpy, qdrant or opensearch")
