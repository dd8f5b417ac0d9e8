"""A fake of the OpenSearch k-NN REST API, built from the documentation, plugged in as opensearch-py's connection.

No OpenSearch server can run here, so the real client builds and serialises every request and this fake answers
at the HTTP level. It models three kinds of endpoint, each as its documentation describes it (nothing here is
taken from the store's code):

``domain`` -- an OpenSearch Service domain (OpenSearch 2.19+/3.x).
    Engines ``faiss`` (default) and ``lucene``; ``nmslib`` is refused for new indexes from OpenSearch 3.0.
    Faiss HNSW spaces: l2, innerproduct, cosinesimil (2.19+); Lucene HNSW: l2, cosinesimil, innerproduct.
    ``space_type`` sits in ``method`` or at the field's top level; default ``l2``.
    https://docs.opensearch.org/latest/mappings/supported-field-types/knn-methods-engines/
    Documents are searchable after ``_refresh`` (or the 1 s default refresh interval).
``classic`` -- a Classic OpenSearch Serverless vector collection.
    "Vector search collections don't support the Apache Lucene ANN engine"; "support only the HNSW algorithm
    with Faiss"; without ``engine`` an index uses ``nmslib``; "the refresh interval ... is 60 seconds".
    https://docs.aws.amazon.com/opensearch-service/latest/developerguide/serverless-vector-search.html
    Index operations with a custom ``_id`` are for SEARCH collections only (``PUT <index>/_doc/<id>`` "for search
    collection types only"); the per-item error text is the one clients recorded
    (https://github.com/langchain-ai/langchainjs/pull/4229).
    https://docs.aws.amazon.com/opensearch-service/latest/developerguide/serverless-genref.html
``nextgen`` -- a NextGen OpenSearch Serverless vector collection (same page): custom document ids are supported;
    mappings do not take ``engine`` (the service picks it; a mapping with ``engine`` is answered 400
    "Field parameter 'engine' is not supported", as tested live in
    https://github.com/opensearch-project/opensearch-agent-skills/pull/78); the refresh interval is 10 seconds;
    search responses leave the vector out of ``_source`` unless asked.

Serverless (both kinds): ``_refresh`` is not a supported operation (404: the genref table does not list it; see
https://github.com/opensearch-project/opensearch-hadoop/pull/692) and ``refresh=true`` is refused with
"true refresh policy is not supported" (https://github.com/opensearch-project/opensearch-ruby/issues/131).
Time is a fake clock (``Cluster.advance``) so the refresh interval can be observed.

Scores follow the k-NN "Spaces" table (https://docs.opensearch.org/latest/mappings/supported-field-types/knn-spaces/):
``cosinesimil``: d = 1 - cos, score = (2 - d) / 2; ``l2``: d = sum (x - y)^2, score = 1 / (1 + d);
``innerproduct`` (Faiss): d = -x.y, score = 1 / (1 + d) if d >= 0 else 1 - d. Search is exact (the fake has no
HNSW graph, and no NextGen compression). A ``knn.filter`` is efficient filtering, which Lucene and Faiss support
and NMSLIB does not (https://docs.opensearch.org/latest/vector-search/filter-search-knn/index/).
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import parse_qs, unquote

import numpy as np
from opensearchpy import Connection

SHARDS = {"total": 2, "successful": 1, "failed": 0}
KINDS = ("domain", "classic", "nextgen")
REFRESH_SECONDS = {"domain": 1.0, "classic": 60.0, "nextgen": 10.0}
SPACES = {
    "faiss": {"l2", "innerproduct", "cosinesimil", "hamming"},
    "lucene": {"l2", "cosinesimil", "innerproduct"},
    "nmslib": {"l2", "innerproduct", "cosinesimil", "l1", "linf"},
}


def score(space: str, doc: np.ndarray, query: np.ndarray) -> float:
    """The OpenSearch score for one document, per the Spaces table."""
    if space == "cosinesimil":
        d = 1.0 - float(doc @ query / (np.linalg.norm(doc) * np.linalg.norm(query)))
        return (2.0 - d) / 2.0
    if space == "l2":
        return 1.0 / (1.0 + float(np.sum((doc - query) ** 2)))
    if space == "innerproduct":
        d = -float(doc @ query)
        return 1.0 / (1.0 + d) if d >= 0 else 1.0 - d
    raise ValueError(f"the fake does not score {space}")


class Cluster:
    """The state behind every FakeConnection of one test: the endpoint kind, indexes, a clock and a request log."""

    def __init__(self, kind: str = "domain") -> None:
        if kind not in KINDS:
            raise ValueError(kind)
        self.kind = kind
        self.indices: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.now = 0.0

    @property
    def serverless(self) -> bool:
        return self.kind != "domain"

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def visible(self, index: dict[str, Any]) -> dict[str, Any]:
        """Documents a search sees: those indexed at least one refresh interval ago, or before a _refresh."""
        horizon = max(self.now - REFRESH_SECONDS[self.kind], index["refreshed_at"])
        return {k: d for k, d in index["docs"].items() if d["indexed_at"] <= horizon}


def _error(status: int, kind: str, reason: str, index: str | None = None) -> tuple[int, dict[str, Any]]:
    cause = {"type": kind, "reason": reason, **({"index": index} if index else {})}
    return status, {"error": {"root_cause": [cause], **cause}, "status": status}


class FakeConnection(Connection):
    cluster: Cluster  # set per test (class attribute: opensearch-py instantiates the connection itself)

    def perform_request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        params: Any = None,
        body: bytes | None = None,
        timeout: Any = None,
        ignore: Any = (),
        headers: Any = None,
    ) -> tuple[int, dict[str, str], str]:
        path, _, query = url.partition("?")
        path = unquote(path).strip("/")
        params = {**{k: v[-1] for k, v in parse_qs(query).items()}, **(params or {})}
        self.cluster.requests.append((method, path))
        text = body.decode() if isinstance(body, bytes) else body
        if self.cluster.serverless and str(params.get("refresh", "false")).lower() == "true":
            status, data = _error(400, "status_exception", "true refresh policy is not supported.")
        else:
            status, data = self._route(method, path.split("/"), text)
        raw = "" if data is None else json.dumps(data)
        if not (200 <= status < 300) and status not in (ignore or ()):
            self._raise_error(status, raw, "application/json")
        return status, {"content-type": "application/json"}, raw

    # -- routing ------------------------------------------------------------------------------------------------
    def _route(self, method: str, parts: list[str], body: str | None) -> tuple[int, Any]:
        indices = self.cluster.indices
        if parts == ["_bulk"] and method in ("POST", "PUT"):
            return self._bulk(body or "")
        name = parts[0]
        if len(parts) == 1:
            if method == "HEAD":
                return (200 if name in indices else 404), None
            if method == "PUT":
                return self._create(name, json.loads(body or "{}"))
            if method == "DELETE":
                if name not in indices:
                    return _error(404, "index_not_found_exception", f"no such index [{name}]", name)
                del indices[name]
                return 200, {"acknowledged": True}
        op = parts[1] if len(parts) > 1 else ""
        if op == "_refresh" and self.cluster.serverless:
            return 404, {"error": f"no handler found for uri [/{name}/_refresh]", "status": 404}
        if name not in indices:
            return _error(404, "index_not_found_exception", f"no such index [{name}]", name)
        index = indices[name]
        if op == "_mapping" and method == "GET":
            return 200, {name: {"mappings": index["mappings"]}}
        if op == "_refresh":
            index["refreshed_at"] = self.cluster.now
            return 200, {"_shards": SHARDS}
        if op == "_count":
            return 200, {"count": len(self.cluster.visible(index)), "_shards": {**SHARDS, "skipped": 0}}
        if op == "_search":
            return self._search(name, json.loads(body or "{}"))
        return _error(400, "illegal_argument_exception", f"unsupported by the fake: {method} /{'/'.join(parts)}")

    def _create(self, name: str, body: dict[str, Any]) -> tuple[int, Any]:
        if name in self.cluster.indices:
            return _error(400, "resource_already_exists_exception", f"index [{name}] already exists", name)
        settings = body.get("settings", {})
        knn = settings.get("index", {}).get("knn", settings.get("index.knn"))
        props = body.get("mappings", {}).get("properties", {})
        vectors = {k: v for k, v in props.items() if v.get("type") == "knn_vector"}
        if knn is not True:
            return _error(400, "illegal_argument_exception", "knn_vector fields need index.knn: true")
        if len(vectors) != 1:
            return _error(400, "mapper_parsing_exception", "the fake expects exactly one knn_vector field")
        [(field, spec)] = vectors.items()
        method = spec.get("method", {})
        kind = self.cluster.kind
        if kind == "nextgen" and "engine" in method:
            return _error(400, "mapper_parsing_exception", "Field parameter 'engine' is not supported")
        engine = method.get("engine") or {"domain": "faiss", "classic": "nmslib", "nextgen": "faiss"}[kind]
        if kind == "classic" and engine == "lucene":
            return _error(400, "mapper_parsing_exception", "Vector search collections don't support the Lucene engine")
        if kind == "domain" and engine == "nmslib":
            reason = "nmslib engine is deprecated in OpenSearch and cannot be used for new index creation"
            return _error(400, "mapper_parsing_exception", reason)
        if engine not in SPACES or method.get("name", "hnsw") != "hnsw":
            return _error(400, "mapper_parsing_exception", f"Invalid engine or method: {engine}/{method.get('name')}")
        space = method.get("space_type") or spec.get("space_type") or "l2"
        if space not in SPACES[engine]:
            return _error(400, "mapper_parsing_exception", f"{engine} hnsw does not support space {space}")
        self.cluster.indices[name] = {
            "mappings": body["mappings"],
            "field": field,
            "dimension": int(spec["dimension"]),
            "engine": engine,
            "space": space,
            "docs": {},
            "refreshed_at": float("-inf"),
        }
        return 200, {"acknowledged": True, "shards_acknowledged": True, "index": name}

    def _bulk(self, body: str) -> tuple[int, Any]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        items: list[dict[str, Any]] = []
        errors = False

        def fail(op: str, name: str, doc_id: Any, status: int, kind: str, reason: str) -> None:
            nonlocal errors
            errors = True
            items.append(
                {op: {"_index": name, "_id": doc_id, "status": status, "error": {"type": kind, "reason": reason}}}
            )

        for action, source in zip(lines[::2], lines[1::2], strict=True):
            [(op, meta)] = action.items()
            name, doc_id = meta["_index"], meta.get("_id")
            index = self.cluster.indices.get(name)
            if index is None:
                fail(op, name, doc_id, 404, "index_not_found_exception", f"no such index [{name}]")
                continue
            if op not in ("index", "create"):
                fail(op, name, doc_id, 400, "illegal_argument_exception", f"the fake does not model bulk {op}")
                continue
            if doc_id is not None and self.cluster.kind == "classic":
                reason = "Document ID is not supported in create/index operation request"
                fail(op, name, doc_id, 400, "illegal_argument_exception", reason)
                continue
            vector = source.get(index["field"])
            if not isinstance(vector, list) or len(vector) != index["dimension"]:
                got = len(vector) if isinstance(vector, list) else type(vector).__name__
                reason = f"Vector dimension mismatch. Expected: {index['dimension']}, Given: {got}"
                fail(op, name, doc_id, 400, "mapper_parsing_exception", reason)
                continue
            doc_id = doc_id if doc_id is not None else uuid.uuid4().hex[:20]
            existed = doc_id in index["docs"]
            version = index["docs"][doc_id]["_version"] + 1 if existed else 1
            index["docs"][doc_id] = {"_source": source, "_version": version, "indexed_at": self.cluster.now}
            result = {
                "_index": name,
                "_id": doc_id,
                "_version": version,
                "result": "updated" if existed else "created",
                "_shards": SHARDS,
                "_seq_no": len(items),
                "_primary_term": 1,
                "status": 200 if existed else 201,
            }
            items.append({op: result})
        return 200, {"took": 3, "errors": errors, "items": items}

    def _search(self, name: str, body: dict[str, Any]) -> tuple[int, Any]:
        index = self.cluster.indices[name]
        knn = body.get("query", {}).get("knn", {}).get(index["field"])
        if not knn or "k" not in knn or "vector" not in knn:
            return _error(400, "parsing_exception", "[knn] requires vector and k", name)
        query = np.asarray(knn["vector"], dtype=np.float64)
        if len(query) != index["dimension"]:
            reason = f"Query vector has invalid dimension: {len(query)}. Dimension should be: {index['dimension']}"
            return _error(400, "illegal_argument_exception", reason, name)
        where = knn.get("filter")
        if where is not None and index["engine"] == "nmslib":
            return _error(400, "illegal_argument_exception", "Engine [NMSLIB] does not support filters", name)
        term = (where or {}).get("term", {})
        if set(where or {}) - {"term"}:
            return _error(400, "illegal_argument_exception", "the fake models only a term filter", name)
        scored = []
        for doc_id, doc in self.cluster.visible(index).items():
            source = doc["_source"]
            if all(source.get(f) == v for f, v in term.items()):
                vector = np.asarray(source[index["field"]], dtype=np.float64)
                scored.append((score(index["space"], vector, query), doc_id, source))
        scored.sort(key=lambda s: -s[0])
        top = scored[: min(int(knn["k"]), int(body.get("size", 10)))]
        excludes = set(body.get("_source", {}).get("excludes", []))
        if self.cluster.kind == "nextgen" and body.get("_source") is not True:
            excludes.add(index["field"])
        hits = [
            {
                "_index": name,
                "_id": doc_id,
                "_score": s,
                "_source": {k: v for k, v in source.items() if k not in excludes},
            }
            for s, doc_id, source in top
        ]
        return 200, {
            "took": 4,
            "timed_out": False,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {
                "total": {"value": len(top), "relation": "eq"},
                "max_score": top[0][0] if top else None,
                "hits": hits,
            },
        }
