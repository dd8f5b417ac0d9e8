"""Amazon OpenSearch (a Service domain or a Serverless vector collection) k-NN as the vector store, via opensearch-py.

One document per encounter, ``_id`` = the salted hash (so a redelivered record overwrites its document), with
the payload fields next to a ``knn_vector``. What the service accepts, and why the store does what it does:

- Engine: Faiss HNSW with the ``cosinesimil`` space. Serverless vector collections reject the Lucene engine and
  support only HNSW with Faiss (Classic collections); NextGen collections choose the engine themselves and take
  the mapping without ``engine``, as AWS's NextGen example shows, so a NextGen rejection of ``engine`` is answered
  by creating the index without it. Faiss applies the ``knn.filter`` (age band) during the search: efficient
  filtering, OpenSearch 2.9+; Faiss HNSW takes ``cosinesimil`` from OpenSearch 2.19 (domains need 2.19+).
  https://docs.aws.amazon.com/opensearch-service/latest/developerguide/serverless-vector-search.html
  https://docs.opensearch.org/latest/mappings/supported-field-types/knn-methods-engines/
  https://docs.opensearch.org/latest/vector-search/filter-search-knn/efficient-knn-filtering/
- Score: OpenSearch reports ``score = (2 - d) / 2`` with ``d = 1 - cos`` for ``cosinesimil``, i.e. (1 + cos) / 2,
  which ``similarity`` turns back into the cosine.
  https://docs.opensearch.org/latest/mappings/supported-field-types/knn-spaces/
- Serverless has no ``_refresh`` (not among its supported operations): documents become searchable after the
  collection's refresh interval (10 s NextGen, 60 s Classic), so ``flush`` sends nothing there.
  https://docs.aws.amazon.com/opensearch-service/latest/developerguide/serverless-genref.html
- Custom document ids: NextGen vector collections and domains accept them; Classic vector collections assign
  their own (``PUT <index>/_doc/<id>`` is for SEARCH collections only), which would break the overwrite-by-id
  contract, so the store stops with an error naming the fix instead of indexing duplicates.
- Signing: SigV4 with service ``aoss`` for ``*.aoss.amazonaws.com`` and ``es`` for domains, in the endpoint's region.
  https://docs.aws.amazon.com/opensearch-service/latest/developerguide/serverless-clients.html
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

import numpy as np

from chalicelib.core import settings
from chalicelib.similar.vectors import DimensionMismatch, Hit, VectorStoreError, check_upsert, query_vector

VECTOR = "vector"
BULK_CHUNK = 500
ENGINE = "faiss"
SPACE = "cosinesimil"
SERVERLESS_SUFFIX = ".aoss.amazonaws.com"
DOMAIN_SUFFIX = ".es.amazonaws.com"
# What a Classic vector collection answers for an index operation carrying an _id (recorded by opensearch-project
# clients, e.g. https://github.com/langchain-ai/langchainjs/pull/4229); NextGen collections accept custom ids.
CUSTOM_ID_REJECTED = "Document ID is not supported"


class CustomIdsUnsupported(VectorStoreError):
    """A Classic Serverless vector collection: it assigns document ids, so redelivered encounters would duplicate."""


def index_body(dimension: int, engine: str | None = ENGINE) -> dict[str, Any]:
    """The index: Faiss HNSW cosine (``engine=None``: the NextGen form, where the collection picks the engine)."""
    if engine:
        vector = {
            "type": "knn_vector",
            "dimension": dimension,
            "method": {"name": "hnsw", "engine": engine, "space_type": SPACE},
        }
    else:
        vector = {"type": "knn_vector", "dimension": dimension, "space_type": SPACE, "method": {"name": "hnsw"}}
    return {
        "settings": {"index": {"knn": True}},
        "mappings": {
            "properties": {
                VECTOR: vector,
                "outcome": {"type": "keyword"},
                "age": {"type": "keyword"},
                "features": {"type": "object", "enabled": False},  # shown, never searched
            }
        },
    }


def similarity(score: float) -> float:
    """Cosine similarity from an OpenSearch ``cosinesimil`` score, which is (1 + cos) / 2."""
    return min(1.0, max(-1.0, 2.0 * score - 1.0))


def is_serverless(url: str) -> bool:
    return (urlparse(url).hostname or url).endswith(SERVERLESS_SUFFIX)


def signing_target(url: str, region: str | None = None) -> tuple[str, str, str]:
    """(host, region, SigV4 service) for an endpoint URL: ``aoss`` for Serverless, ``es`` for domains. The region
    is the endpoint's own (``<id>.<region>.aoss.amazonaws.com``, ``…<region>.es.amazonaws.com``), else the env's."""
    host = urlparse(url).hostname or url
    service = "aoss" if host.endswith(SERVERLESS_SUFFIX) else "es"
    suffix = SERVERLESS_SUFFIX if service == "aoss" else DOMAIN_SUFFIX
    if region is None and host.endswith(suffix):
        region = host[: -len(suffix)].rsplit(".", 1)[-1]
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return host, region, service


def opensearch_client(url: str, region: str | None = None) -> Any:
    """A client for an Amazon OpenSearch endpoint over TLS, signing every request with SigV4."""
    import boto3
    from opensearchpy import OpenSearch, Urllib3AWSV4SignerAuth, Urllib3HttpConnection

    host, region, service = signing_target(url, region)
    auth = Urllib3AWSV4SignerAuth(boto3.Session().get_credentials(), region, service)
    return OpenSearch(
        hosts=[{"host": host, "port": 443}],
        http_auth=auth,
        use_ssl=True,
        verify_certs=True,
        connection_class=Urllib3HttpConnection,
        timeout=10,
    )


def _reason(error: Any) -> str:
    info = getattr(error, "info", None)
    if isinstance(info, dict):
        return str(info.get("error", {}).get("reason", "")) + " " + str(info.get("error", {}).get("type", ""))
    return str(error)


class OpenSearchStore:
    def __init__(self, client: Any, index: str = settings.DEFAULT_COLLECTION, serverless: bool = False) -> None:
        self.client = client
        self.index = index
        self.serverless = serverless

    def _dimension(self) -> int | None:
        if not self.client.indices.exists(index=self.index):
            return None
        mapping = self.client.indices.get_mapping(index=self.index)[self.index]["mappings"]
        return int(mapping["properties"][VECTOR]["dimension"])

    def _create(self, dimension: int) -> None:
        from opensearchpy.exceptions import RequestError

        try:
            self.client.indices.create(index=self.index, body=index_body(dimension))
        except RequestError as e:
            reason = _reason(e)
            if "resource_already_exists_exception" in reason:
                return  # another writer (a concurrent embedder) created it first; ensure() re-checks the dimension
            if not (self.serverless and "engine" in reason):
                raise
            # A NextGen vector collection: it chooses the engine and does not take the parameter.
            self.client.indices.create(index=self.index, body=index_body(dimension, engine=None))

    def ensure(self, dimension: int) -> None:
        current = self._dimension()
        if current is None:
            self._create(dimension)
            current = self._dimension()
        if current != dimension:
            raise DimensionMismatch(f"index {self.index} holds {current}-d vectors, not {dimension}-d")

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[Mapping[str, Any]]) -> None:
        from opensearchpy import helpers

        check_upsert(ids, vectors, payloads)
        self.ensure(vectors.shape[1])

        def actions() -> Iterator[dict[str, Any]]:
            for pid, vector, payload in zip(ids, np.asarray(vectors, dtype=np.float32).tolist(), payloads, strict=True):
                yield {"_op_type": "index", "_index": self.index, "_id": pid, "_source": {**payload, VECTOR: vector}}

        try:
            helpers.bulk(self.client, actions(), chunk_size=BULK_CHUNK)  # raises BulkIndexError on any failed item
        except helpers.BulkIndexError as e:
            if self.serverless and any(CUSTOM_ID_REJECTED in str(item) for item in e.errors):
                raise CustomIdsUnsupported(
                    f"{self.index} is in a Classic OpenSearch Serverless vector collection, which assigns its own "
                    "document ids, so a redelivered encounter would be indexed twice: use a NextGen vector "
                    "collection (custom document ids) or an OpenSearch Service domain"
                ) from e
            raise

    def flush(self) -> None:
        """Domains: refresh, so the upserts are searchable now. Serverless has no refresh operation; its
        collections make documents searchable after their refresh interval (10 s NextGen, 60 s Classic)."""
        if not self.serverless:
            self.client.indices.refresh(index=self.index)

    def search(self, vector: np.ndarray, k: int, age_band: str | None = None) -> list[Hit]:
        missing = f"no OpenSearch index {self.index}: index some encounters first"
        query = query_vector(vector, self._dimension(), missing, f"index {self.index}")
        knn: dict[str, Any] = {"vector": query.tolist(), "k": k}
        if age_band is not None:
            knn["filter"] = {"term": {"age": age_band}}  # efficient filtering: applied during the HNSW search
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
