"""One contract, four stores: the numpy store, Qdrant in memory, Qdrant persisted to a path (both the real
client's embedded mode) and OpenSearch through the real opensearch-py client against a recorded-contract fake."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opensearchpy import OpenSearch, RequestError, helpers

from chalicelib.core.aws_clients import secret_string
from chalicelib.core.identifiers import hash_id
from chalicelib.similar.numpy_store import NumpyStore
from chalicelib.similar.opensearch_store import (
    CustomIdsUnsupported,
    OpenSearchStore,
    index_body,
    signing_target,
    similarity,
)
from chalicelib.similar.qdrant_store import QdrantStore, Replication, qdrant_client
from chalicelib.similar.vectors import (
    DimensionMismatch,
    IndexMissing,
    StoreNotConfigured,
    VectorStore,
    open_vector_store,
)
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


def opensearch_client_for(cluster: Cluster) -> OpenSearch:
    connection = type("Conn", (FakeConnection,), {"cluster": cluster})
    return OpenSearch(hosts=[{"host": "fake", "port": 9200}], connection_class=connection)


def opensearch_store(index: str = "encounters", kind: str = "domain") -> tuple[OpenSearchStore, Cluster]:
    cluster = Cluster(kind)
    return OpenSearchStore(opensearch_client_for(cluster), index, serverless=cluster.serverless), cluster


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


@pytest.mark.slow
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
    # The k-NN Spaces table: d = 1 - cos, score = (2 - d) / 2 = (1 + cos) / 2.
    for cos in (-1.0, -0.5, 0.0, 0.3, 0.6, 1.0):
        assert similarity((1.0 + cos) / 2.0) == pytest.approx(cos)
    assert similarity(0.8) == pytest.approx(0.6)  # not 2 - 1/0.8 = 0.75, the inflated 1/(2 - cos) reading


def test_the_fake_scores_cosinesimil_as_the_spaces_table_says() -> None:
    client = opensearch_client_for(Cluster("domain"))
    client.indices.create(index="t", body=index_body(2))
    docs = [("a", [1.0, 0.0]), ("b", [0.6, 0.8])]
    helpers.bulk(client, [{"_index": "t", "_id": i, "_source": {"vector": v}} for i, v in docs])
    client.indices.refresh(index="t")
    hits = client.search(index="t", body={"size": 2, "query": {"knn": {"vector": {"vector": [1.0, 0.0], "k": 2}}}})
    scores = {h["_id"]: h["_score"] for h in hits["hits"]["hits"]}
    assert scores == pytest.approx({"a": 1.0, "b": 0.8})  # (1 + cos) / 2 for cos 1.0 and 0.6


def test_the_store_reports_the_true_cosine_of_each_neighbour() -> None:
    store, _ = opensearch_store()
    ids = [hash_id(i, "salt", kind="encounter") for i in range(3)]
    vectors = np.array([[1, 0, 0, 0, 0, 0, 0, 0], [0.6, 0.8, 0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0]], np.float32)
    store.upsert(ids, vectors, [{"age": "[50-60)"}] * 3)
    store.flush()
    hits = store.search(vectors[0], 3)
    assert [(h.id, round(h.similarity, 4)) for h in hits] == [(ids[0], 1.0), (ids[1], 0.6), (ids[2], 0.0)]


def test_the_index_is_faiss_hnsw_cosine_on_a_domain() -> None:
    store, cluster = opensearch_store("readmit")
    store.ensure(DIM)
    index = cluster.indices["readmit"]
    assert (index["engine"], index["space"]) == ("faiss", "cosinesimil")


def test_a_classic_serverless_collection_refuses_lucene_and_the_store_uses_faiss() -> None:
    cluster = Cluster("classic")
    client = opensearch_client_for(cluster)
    lucene = index_body(DIM)
    lucene["mappings"]["properties"]["vector"]["method"]["engine"] = "lucene"
    with pytest.raises(RequestError):  # "Vector search collections don't support the Apache Lucene ANN engine"
        client.indices.create(index="old", body=lucene)
    store = OpenSearchStore(client, "readmit", serverless=True)
    store.ensure(DIM)
    assert cluster.indices["readmit"]["engine"] == "faiss"  # not Classic's nmslib default, which cannot filter


def test_a_classic_serverless_collection_cannot_keep_our_ids_and_the_store_says_so() -> None:
    store, cluster = opensearch_store("readmit", kind="classic")
    ids, vectors, payloads = points(3)
    with pytest.raises(CustomIdsUnsupported, match="NextGen"):
        store.upsert(ids, vectors, payloads)
    assert cluster.indices["readmit"]["docs"] == {}  # nothing indexed under server-made ids


def test_a_nextgen_serverless_collection_gets_an_engine_free_mapping_no_refresh_and_filtered_search() -> None:
    store, cluster = opensearch_store("readmit", kind="nextgen")
    ids, vectors, payloads = points(30)
    store.upsert(ids, vectors, payloads)
    store.flush()
    assert not any(path.endswith("_refresh") for _, path in cluster.requests)  # Serverless has no _refresh
    assert "engine" not in cluster.indices["readmit"]["mappings"]["properties"]["vector"].get("method", {})
    assert store.search(vectors[0], 3) == []  # not searchable before the 10 s refresh interval
    cluster.advance(10)
    assert store.count() == 30
    hits = store.search(vectors[0], 4, age_band="[70-80)")
    mask = np.array([p["age"] == "[70-80)" for p in payloads])
    assert [h.id for h in hits] == [ids[i] for i in brute_force(vectors, vectors[0], 4, mask)]
    assert [h.similarity for h in hits] == pytest.approx([float(vectors[0] @ vectors[ids.index(h.id)]) for h in hits])
    store.upsert(ids[:1], -vectors[:1], payloads[:1])  # a redelivery overwrites by id: custom ids are kept
    cluster.advance(10)
    assert store.count() == 30 and store.search(-vectors[0], 1)[0].id == ids[0]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://abc123.us-west-2.aoss.amazonaws.com", ("abc123.us-west-2.aoss.amazonaws.com", "us-west-2", "aoss")),
        (
            "https://search-readmit-x1.eu-west-1.es.amazonaws.com",
            ("search-readmit-x1.eu-west-1.es.amazonaws.com", "eu-west-1", "es"),
        ),
        (
            "https://vpc-readmit-x1.ap-south-1.es.amazonaws.com/",
            ("vpc-readmit-x1.ap-south-1.es.amazonaws.com", "ap-south-1", "es"),
        ),
    ],
)
def test_requests_are_signed_for_the_endpoint_service_and_region(url: str, expected: tuple[str, str, str]) -> None:
    from botocore.credentials import Credentials
    from opensearchpy import Urllib3AWSV4SignerAuth

    assert signing_target(url, None) == expected
    host, region, service = expected
    headers = Urllib3AWSV4SignerAuth(Credentials("AKIDEXAMPLE", "secret"), region, service)(
        "GET", f"https://{host}/readmit/_count", None
    )
    assert f"/{region}/{service}/aws4_request" in headers["Authorization"]
    assert "x-amz-content-sha256" in headers["Authorization"]  # signed: Serverless requires it


def test_a_serverless_url_makes_a_serverless_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    env = {"READMIT_OPENSEARCH_URL": "https://abc123.us-west-2.aoss.amazonaws.com"}
    assert open_vector_store("opensearch", env=env).serverless is True  # type: ignore[attr-defined]
    env = {"READMIT_OPENSEARCH_URL": "https://search-x.us-west-2.es.amazonaws.com"}
    assert open_vector_store("opensearch", env=env).serverless is False  # type: ignore[attr-defined]


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


# --- Qdrant on a server: replication and the API key ------------------------------------------------------------
class RecordingClient:
    """The real in-memory qdrant-client, recording what create_collection was asked for."""

    def __init__(self) -> None:
        self.inner = qdrant_client(path=":memory:")
        self.created: dict[str, Any] = {}

    def create_collection(self, name: str, **kwargs: Any) -> Any:
        self.created = kwargs
        return self.inner.create_collection(name, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_server_collection_is_created_with_two_copies_and_still_works() -> None:
    client = RecordingClient()
    store = QdrantStore(client, "c", Replication())
    ids, vectors, payloads = points(10)
    store.upsert(ids, vectors, payloads)
    assert (client.created["replication_factor"], client.created["write_consistency_factor"]) == (2, 1)
    assert store.search(vectors[4], 1)[0].id == ids[4]


def test_embedded_mode_creates_an_unreplicated_collection() -> None:
    client = RecordingClient()
    QdrantStore(client, "c").ensure(DIM)
    assert "replication_factor" not in client.created and "write_consistency_factor" not in client.created


def test_replication_settings_come_from_the_environment_and_are_checked() -> None:
    env = {"READMIT_QDRANT_REPLICATION_FACTOR": "3", "READMIT_QDRANT_WRITE_CONSISTENCY": "2"}
    assert Replication.from_env(env) == Replication(replication_factor=3, write_consistency_factor=2)
    assert Replication.from_env({}) == Replication(replication_factor=2, write_consistency_factor=1)
    with pytest.raises(StoreNotConfigured, match="cannot exceed"):
        Replication.from_env({"READMIT_QDRANT_REPLICATION_FACTOR": "1", "READMIT_QDRANT_WRITE_CONSISTENCY": "2"})
    with pytest.raises(StoreNotConfigured):
        Replication.from_env({"READMIT_QDRANT_REPLICATION_FACTOR": "0"})


def test_a_server_store_gets_its_api_key_from_secrets_manager_over_https(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    import boto3
    from moto import mock_aws

    import chalicelib.similar.qdrant_store as qs

    made: list[dict[str, Any]] = []

    def fake_client(**kwargs: Any) -> Any:
        made.append(kwargs)
        return qdrant_client(path=":memory:")

    monkeypatch.setattr(qs, "qdrant_client", fake_client)
    secret_string.cache_clear()
    key = "k-" + "7" * 40
    with mock_aws():
        arn = boto3.client("secretsmanager").create_secret(Name="readmit/qdrant", SecretString=key)["ARN"]
        env = {
            "READMIT_VECTOR_STORE": "qdrant",
            "READMIT_QDRANT_URL": "https://qdrant.readmit.internal:6333",
            "READMIT_QDRANT_API_KEY_SECRET": arn,
            "READMIT_QDRANT_API_KEY": "not-this-one",
            "AWS_LAMBDA_FUNCTION_NAME": "readmit-embedder",
        }
        store = open_vector_store(env=env)
    assert made == [{"url": "https://qdrant.readmit.internal:6333", "api_key": key}]
    assert isinstance(store, QdrantStore) and store.replication == Replication()
    assert key not in caplog.text and key not in "".join(capsys.readouterr())
    secret_string.cache_clear()


def test_a_server_store_without_a_secret_uses_the_plain_key_and_local_mode_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import chalicelib.similar.qdrant_store as qs

    made: list[dict[str, Any]] = []
    monkeypatch.setattr(qs, "qdrant_client", lambda **kw: made.append(kw) or qdrant_client(path=":memory:"))
    open_vector_store("qdrant", env={"READMIT_QDRANT_URL": "http://q:6333", "READMIT_QDRANT_API_KEY": "abc"})
    store = open_vector_store("qdrant", env={"READMIT_QDRANT_PATH": ":memory:"})
    assert made == [{"url": "http://q:6333", "api_key": "abc"}, {"path": ":memory:"}]
    assert isinstance(store, QdrantStore) and store.replication is None


def test_an_https_url_gives_a_tls_client_with_the_key() -> None:
    with warnings.catch_warnings():  # the client's version check cannot reach this made-up host
        warnings.simplefilter("ignore")
        client = qdrant_client(url="https://qdrant.readmit.internal:6333", api_key="abc")
    assert client._client.rest_uri == "https://qdrant.readmit.internal:6333"
    assert client._client._https is True
