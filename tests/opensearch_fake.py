"""A recorded-contract fake of OpenSearch's k-NN REST API, plugged in as opensearch-py's connection class.

No OpenSearch server can run here, so the real client builds and serialises every request and this fake
answers at the HTTP level with the response shapes OpenSearch 2.x documents (create index, _bulk, _search with a
``knn`` query, _count, _mapping, _refresh, HEAD, DELETE). It enforces the contract the store depends on and
answers a violation as OpenSearch would (status and error type): an index without ``index.knn``, a vector field
that is not a ``knn_vector``, a document vector of the wrong dimension, a ``knn`` query without ``k`` or of the
wrong dimension. Search is exact cosine, scored as the ``cosinesimil`` space documents: 1 / (2 - cos).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import numpy as np
from opensearchpy import Connection

SHARDS = {"total": 2, "successful": 1, "failed": 0}


class Cluster:
    """The state behind every FakeConnection (one per test)."""

    def __init__(self) -> None:
        self.indices: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []


def _error(status: int, kind: str, reason: str, index: str | None = None) -> tuple[int, dict[str, Any]]:
    cause = {"type": kind, "reason": reason, **({"index": index} if index else {})}
    return status, {"error": {"root_cause": [cause], **cause}, "status": status}


class FakeConnection(Connection):
    cluster: Cluster  # set by the fixture (class attribute: opensearch-py instantiates the connection itself)

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
        path = unquote(url.split("?")[0]).strip("/")
        self.cluster.requests.append((method, path))
        text = body.decode() if isinstance(body, bytes) else body
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
        if name not in indices:
            return _error(404, "index_not_found_exception", f"no such index [{name}]", name)
        op = parts[1]
        if op == "_mapping" and method == "GET":
            return 200, {name: {"mappings": indices[name]["mappings"]}}
        if op == "_refresh":
            return 200, {"_shards": SHARDS}
        if op == "_count":
            return 200, {"count": len(indices[name]["docs"]), "_shards": {**SHARDS, "skipped": 0}}
        if op == "_search":
            return self._search(name, json.loads(body or "{}"))
        return _error(400, "illegal_argument_exception", f"unsupported by the fake: {method} /{'/'.join(parts)}")

    def _create(self, name: str, body: dict[str, Any]) -> tuple[int, Any]:
        if name in self.cluster.indices:
            return _error(400, "resource_already_exists_exception", f"index [{name}] already exists", name)
        knn = body.get("settings", {}).get("index", {}).get("knn")
        props = body.get("mappings", {}).get("properties", {})
        vectors = {k: v for k, v in props.items() if v.get("type") == "knn_vector"}
        if knn is not True:
            return _error(400, "illegal_argument_exception", "knn_vector fields need index.knn: true")
        if len(vectors) != 1:
            return _error(400, "mapper_parsing_exception", "expected exactly one knn_vector field")
        [(field, spec)] = vectors.items()
        method = spec.get("method", {})
        if method.get("space_type") != "cosinesimil" or method.get("engine") not in ("lucene", "faiss", "nmslib"):
            return _error(400, "mapper_parsing_exception", f"unexpected k-NN method {method}")
        self.cluster.indices[name] = {
            "mappings": body["mappings"],
            "field": field,
            "dimension": int(spec["dimension"]),
            "docs": {},
        }
        return 200, {"acknowledged": True, "shards_acknowledged": True, "index": name}

    def _bulk(self, body: str) -> tuple[int, Any]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        items, errors = [], False
        for action, source in zip(lines[::2], lines[1::2], strict=True):
            [(op, meta)] = action.items()
            name, doc_id = meta["_index"], meta["_id"]
            index = self.cluster.indices.get(name)
            if op != "index" or index is None:
                status, err = _error(404, "index_not_found_exception", f"no such index [{name}]", name)
                items.append({op: {"_index": name, "_id": doc_id, "status": status, "error": err["error"]}})
                errors = True
                continue
            vector = source.get(index["field"])
            if not isinstance(vector, list) or len(vector) != index["dimension"]:
                got = len(vector) if isinstance(vector, list) else type(vector).__name__
                reason = f"Vector dimension mismatch. Expected: {index['dimension']}, Given: {got}"
                error = {"type": "mapper_parsing_exception", "reason": reason}
                items.append({op: {"_index": name, "_id": doc_id, "status": 400, "error": error}})
                errors = True
                continue
            existed = doc_id in index["docs"]
            version = index["docs"][doc_id]["_version"] + 1 if existed else 1
            index["docs"][doc_id] = {"_source": source, "_version": version}
            items.append(
                {
                    op: {
                        "_index": name,
                        "_id": doc_id,
                        "_version": version,
                        "result": "updated" if existed else "created",
                        "_shards": SHARDS,
                        "_seq_no": len(items),
                        "_primary_term": 1,
                        "status": 200 if existed else 201,
                    }
                }
            )
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
        term = (knn.get("filter") or {}).get("term", {})
        docs = [
            (doc_id, d["_source"])
            for doc_id, d in index["docs"].items()
            if all(d["_source"].get(f) == v for f, v in term.items())
        ]
        scored = []
        for doc_id, source in docs:
            v = np.asarray(source[index["field"]], dtype=np.float64)
            cos = float(v @ query / (np.linalg.norm(v) * np.linalg.norm(query)))
            scored.append((1.0 / (2.0 - cos), doc_id, source))
        scored.sort(key=lambda s: -s[0])
        top = scored[: min(int(knn["k"]), int(body.get("size", 10)))]
        excludes = set(body.get("_source", {}).get("excludes", []))
        hits = [
            {
                "_index": name,
                "_id": doc_id,
                "_score": score,
                "_source": {k: v for k, v in source.items() if k not in excludes},
            }
            for score, doc_id, source in top
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
