"""One contract, four stores: the numpy store, Qdrant in memory, Qdrant persisted to a path (both the real
client's embedded mode) and OpenSearch through the real opensearch-py client against a recorded-contract fake."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from opensearchpy import OpenSearch

from chalicelib.identifiers import hash_id
from chalicelib.numpy_store import NumpyStore
from chalicelib.opensearch_store import OpenSearchStore, similarity
from chalicelib.qdrant_store import QdrantStore, qdrant_client
from chalicelib.vectors import DimensionMismatch, IndexMissing, VectorStore, open_vector_store
from tests.opensearch_fake import Cluster, FakeConnection

DIM = 8
BANDS = ("[50-60)", "[60-70)", "[70-80)")


def points(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, list[dict]]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [hash_id(1000 + i, "salt", kind="encounter") for i in range(n)]
    payloads = [
        {"outcome": ("<30", ">30", "NO")[i % 3], "age": BANDS[i % 3], "features": {"Length of stay (days)": i % 14}}
        for i in range(n)
    ]
    return ids, vectors, payloads


def opensearch_store(index: str = "encounters") -> tuple[OpenSearchStore, Cluster]:
    cluster = Cluster()
    connection = type("Conn", (FakeConnection,), {"cluster": cluster})
    client = OpenSearch(hosts=[{"host": "fake", "port": 9200}], connection_class=connection)
    return OpenSearchStore(client, index), cluster


@pytest.fixture(params=["numpy", "qdrant-memory", "qdrant-path", "opensearch-fake"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    kind = request.param
    if kind == "numpy":
        yield NumpyStore(tmp_path / "index")
    elif kind == "qdrant-memory":
        yield QdrantStore(qdrant_client(path=":memory:"), "test")
    elif kind == "qdrant-path":
        client = qdrant_client(path=str(tmp_path / "qdrant"))
        yield QdrantStore(client, "test")
        client.close()
    else:
        yield opensearch_store()[0]


def brute_force(vectors: np.ndarray, query: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[int]:
    scores = vectors @ query
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    return [int(i) for i in np.argsort(-scores)[:k] if np.isfinite(scores[i])]


def test_an_empty_store_counts_zero_and_a_search_says_the_index_is_missing(store: VectorStore) -> None:
    assert store.count() == 0
    with pytest.raises(IndexMissing):
        store.search(np.ones(DIM, dtype=np.float32), 5)


def test_search_returns_the_exact_nearest_points_best_first_with_their_cosine(store: VectorStore) -> None:
    ids, vectors, payloads = points(60)
    store.upsert(ids, vectors, payloads)
    store.flush()
    query = vectors[7] * 0.8 + vectors[3] * 0.2
    query /= np.linalg.norm(query)
    hits = store.search(query, 5)
    expected = brute_force(vectors, query, 5)
    assert [h.id for h in hits] == [ids[i] for i in expected]
    assert [h.similarity for h in hits] == pytest.approx([float(vectors[i] @ query) for i in expected], abs=1e-4)
    assert hits[0].payload == payloads[expected[0]]


def test_upserting_the_same_ids_again_overwrites_instead_of_duplicating(store: VectorStore) -> None:
    ids, vectors, payloads = points(30)
    store.upsert(ids, vectors, payloads)
    store.flush()
    changed = [{**p, "outcome": "NO"} for p in payloads]
    store.upsert(ids[:10], -vectors[:10], changed[:10])  # a redelivered batch, with newer content
    store.flush()
    assert store.count() == 30
    hits = store.search(-vectors[4], 1)
    assert hits[0].id == ids[4] and hits[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert hits[0].payload["outcome"] == "NO"


def test_the_age_band_filter_keeps_only_that_band_even_when_others_are_nearer(store: VectorStore) -> None:
    ids, vectors, payloads = points(45)
    store.upsert(ids, vectors, payloads)
    store.flush()
    query = vectors[0]  # band [50-60): its own nearest neighbour is itself
    hits = store.search(query, 4, age_band="[70-80)")
    mask = np.array([p["age"] == "[70-80)" for p in payloads])
    assert [h.id for h in hits] == [ids[i] for i in brute_force(vectors, query, 4, mask)]
    assert all(h.payload["age"] == "[70-80)" for h in hits)


def test_asking_for_more_neighbours_than_points_returns_every_point(store: VectorStore) -> None:
    ids, vectors, payloads = points(4)
    store.upsert(ids, vectors, payloads)
    store.flush()
    assert sorted(h.id for h in store.search(vectors[0], 50)) == sorted(ids)


def test_vectors_of_another_dimension_are_refused(store: VectorStore) -> None:
    ids, vectors, payloads = points(5)
    store.upsert(ids, vectors, payloads)
    store.flush()
    with pytest.raises(DimensionMismatch):
        store.search(np.ones(DIM + 1, dtype=np.float32), 3)
    with pytest.raises(DimensionMismatch):
        store.upsert(ids[:1], np.ones((1, DIM + 2), dtype=np.float32), payloads[:1])


def test_reset_drops_the_index(store: VectorStore) -> None:
    ids, vectors, payloads = points(5)
    store.upsert(ids, vectors, payloads)
    store.flush()
    store.reset()
    assert store.count() == 0
    with pytest.raises(IndexMissing):
        store.search(vectors[0], 1)


def test_a_numpy_reader_picks_up_a_new_index_written_by_another_process(tmp_path: Path) -> None:
    reader = NumpyStore(tmp_path / "index")
    writer = NumpyStore(tmp_path / "index")
    ids, vectors, payloads = points(20)
    writer.upsert(ids[:10], vectors[:10], payloads[:10])
    writer.flush()
    assert reader.count() == 10
    writer.upsert(ids[10:], vectors[10:], payloads[10:])
    assert reader.count() == 10  # not flushed yet: never half an index
    writer.flush()
    assert reader.count() == 20 and reader.search(vectors[15], 1)[0].id == ids[15]
    assert [p.name for p in (tmp_path / "index").iterdir() if p.is_dir()].__len__() == 1  # old generation gone


def test_qdrant_local_mode_persists_to_its_path(tmp_path: Path) -> None:
    ids, vectors, payloads = points(10)
    client = qdrant_client(path=str(tmp_path / "q"))
    QdrantStore(client, "c").upsert(ids, vectors, payloads)
    client.close()
    reopened = QdrantStore(qdrant_client(path=str(tmp_path / "q")), "c")
    assert reopened.count() == 10 and reopened.search(vectors[2], 1)[0].id == ids[2]
    reopened.client.close()


def test_opensearch_requests_follow_the_k_nn_contract() -> None:
    store, cluster = opensearch_store("readmit")
    ids, vectors, payloads = points(12)
    store.upsert(ids, vectors, payloads)
    store.flush()
    mapping = cluster.indices["readmit"]["mappings"]["properties"]["vector"]
    assert mapping["type"] == "knn_vector" and mapping["dimension"] == DIM
    assert ("POST", "_bulk") in cluster.requests and ("POST", "readmit/_search") not in cluster.requests
    hit = store.search(vectors[3], 1, age_band=payloads[3]["age"])[0]
    assert "vector" not in hit.payload and hit.id == ids[3]
    assert ("POST", "readmit/_search") in cluster.requests


def test_an_opensearch_cosinesimil_score_converts_back_to_the_cosine() -> None:
    for cos in (-0.5, 0.0, 0.3, 1.0):
        assert similarity(1.0 / (2.0 - cos)) == pytest.approx(cos)


def test_the_store_is_chosen_by_environment(tmp_path: Path) -> None:
    assert isinstance(open_vector_store(env={"READMIT_INDEX_DIR": str(tmp_path)}), NumpyStore)
    store = open_vector_store(env={"READMIT_VECTOR_STORE": "qdrant", "READMIT_QDRANT_PATH": ":memory:"})
    assert isinstance(store, QdrantStore)
    with pytest.raises(ValueError, match="READMIT_OPENSEARCH_URL"):
        open_vector_store("opensearch", env={})
    with pytest.raises(ValueError, match="READMIT_QDRANT_URL"):  # no per-container embedded index on Lambda
        open_vector_store("qdrant", env={"AWS_LAMBDA_FUNCTION_NAME": "readmit-embedder"})
    with pytest.raises(ValueError, match="unknown vector store"):
        open_vector_store("faiss", env={})
