"""Amazon OpenSearch (Service or Serverless) k-NN as the vector store, through opensearch-py.

One document per encounter, ``_id`` = the salted hash (so a redelivered record overwrites its document), with
the payload fields next to a ``knn_vector``. The index uses the Lucene HNSW engine with cosine similarity,
whose efficient filtering applies the age-band filter during the search, not after it. OpenSearch reports
``score = 1 / (2 - cosine)`` for the ``cosinesimil`` space, which ``search`` turns back into the cosine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

import numpy as np

from . import settings
from .vectors import DimensionMismatch, Hit, check_upsert, query_vector

VECTOR = "vector"
BULK_CHUNK = 500


def index_body(dimension: int) -> dict[str, Any]:
    return {
        "settings": {"index": {"knn": True}},
        "mappings": {
            "properties": {
                VECTOR: {
                    "type": "knn_vector",
                    "dimension": dimension,
                    "method": {"name": "hnsw", "engine": "lucene", "space_type": "cosinesimil"},
                },
                "outcome": {"type": "keyword"},
                "age": {"type": "keyword"},
                "features": {"type": "object", "enabled": False},  # shown, never searched
            }
        },
    }


def similarity(score: float) -> float:
    """Cosine similarity from an OpenSearch ``cosinesimil`` score (1 / (1 + (1 - cos)))."""
    return 2.0 - 1.0 / score


def opensearch_client(url: str, region: str | None = None) -> Any:
    """A client for an Amazon OpenSearch endpoint, signing requests with SigV4 (``aoss`` for Serverless)."""
    import boto3
    from opensearchpy import OpenSearch, Urllib3AWSV4SignerAuth, Urllib3HttpConnection

    host = urlparse(url).hostname or url
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    service = "aoss" if host.endswith(".aoss.amazonaws.com") else "es"
    auth = Urllib3AWSV4SignerAuth(boto3.Session().get_credentials(), region, service)
    return OpenSearch(
        hosts=[{"host": host, "port": 443}],
        http_auth=auth,
        use_ssl=True,
        verify_certs=True,
        connection_class=Urllib3HttpConnection,
        timeout=10,
    )


class OpenSearchStore:
    def __init__(self, client: Any, index: str = settings.DEFAULT_COLLECTION) -> None:
        self.client = client
        self.index = index

    def _dimension(self) -> int | None:
        if not self.client.indices.exists(index=self.index):
            return None
        mapping = self.client.indices.get_mapping(index=self.index)[self.index]["mappings"]
        return int(mapping["properties"][VECTOR]["dimension"])

    def ensure(self, dimension: int) -> None:
        current = self._dimension()
        if current is None:
            self.client.indices.create(index=self.index, body=index_body(dimension))
        elif current != dimension:
            raise DimensionMismatch(f"index {self.index} holds {current}-d vectors, not {dimension}-d")

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[Mapping[str, Any]]) -> None:
        from opensearchpy import helpers

        check_upsert(ids, vectors, payloads)
        self.ensure(vectors.shape[1])

        def actions() -> Iterator[dict[str, Any]]:
            for pid, vector, payload in zip(ids, np.asarray(vectors, dtype=np.float32).tolist(), payloads, strict=True):
                yield {"_op_type": "index", "_index": self.index, "_id": pid, "_source": {**payload, VECTOR: vector}}

        helpers.bulk(self.client, actions(), chunk_size=BULK_CHUNK)  # raises BulkIndexError on any failed item

    def flush(self) -> None:
        self.client.indices.refresh(index=self.index)

    def search(self, vector: np.ndarray, k: int, age_band: str | None = None) -> list[Hit]:
        missing = f"no OpenSearch index {self.index}: index some encounters first"
        query = query_vector(vector, self._dimension(), missing, f"index {self.index}")
        knn: dict[str, Any] = {"vector": query.tolist(), "k": k}
        if age_band is not None:
            knn["filter"] = {"term": {"age": age_band}}
        body = {"size": k, "_source": {"excludes": [VECTOR]}, "query": {"knn": {VECTOR: knn}}}
        hits = self.client.search(index=self.index, body=body)["hits"]["hits"]
        return [Hit(h["_id"], similarity(float(h["_score"])), dict(h["_source"])) for h in hits]

    def count(self) -> int:
        if not self.client.indices.exists(index=self.index):
            return 0
        return int(self.client.count(index=self.index)["count"])

    def reset(self) -> None:
        if self.client.indices.exists(index=self.index):
            self.client.indices.delete(index=self.index)
