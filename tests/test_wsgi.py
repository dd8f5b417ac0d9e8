"""chalicelib.serving.wsgi in-process: an HTTP request through the WSGI adapter gets what the Lambda path gives the same
request (API Gateway event → app.app), and the adapter's own limits answer in the API's error format."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import app as chalice_module
from chalicelib.core.audit import LocalPredictionLog
from chalicelib.registry.provider import ModelProvider
from chalicelib.serving.api import ReadmitAPI
from chalicelib.serving.card import PLOT_NAMES
from chalicelib.serving.history_store import SQLiteHistoryStore
from chalicelib.serving.service import Predictor
from chalicelib.serving.wsgi import CATCH_ALL, MAX_PAYLOAD_BYTES, ROUTE_KEY, ChaliceWSGI

EVENTS = Path(__file__).resolve().parent.parent / "events"


@pytest.fixture
def wsgi(small_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ChaliceWSGI]:
    provider = ModelProvider(model_uri=str(small_bundle))
    provider.current()  # loaded before the first request, as ReadmitAPI.from_env does in each worker
    api = ReadmitAPI(Predictor(provider, SQLiteHistoryStore(tmp_path / "h.sqlite3"), LocalPredictionLog(tmp_path)))
    monkeypatch.setattr(chalice_module, "_api", api)
    yield ChaliceWSGI(chalice_module.app)


def call(
    wsgi: ChaliceWSGI, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes, dict[str, Any]]:
    path, _, query = path.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "CONTENT_LENGTH": str(len(body)) if body else "",
        "wsgi.input": io.BytesIO(body),
        "REMOTE_ADDR": "127.0.0.1",
    }
    for name, value in (headers or {}).items():
        key = name.upper().replace("-", "_")
        environ[key if key == "CONTENT_TYPE" else "HTTP_" + key] = value
    seen: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = int(status.split()[0]), dict(response_headers)

    out = b"".join(wsgi(environ, start_response))
    return seen["status"], seen["headers"], out, environ


def lambda_call(event: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    result = chalice_module.app(event, None)
    body = result["body"]
    raw = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode()
    return result["statusCode"], result["headers"], raw


def without_request_id(raw: bytes) -> Any:
    body = json.loads(raw)
    body.pop("request_id", None)
    for item in body.get("results", []):
        (item.get("prediction") or {}).pop("request_id", None)
    return body


def test_predict_over_wsgi_equals_the_lambda_answer_to_api_gateways_event(wsgi: ChaliceWSGI) -> None:
    event = json.loads((EVENTS / "api_predict.json").read_text())
    want_status, want_headers, want_body = lambda_call(event)
    status, headers, body, environ = call(wsgi, "POST", "/predict", event["body"].encode(), event["headers"])
    assert status == want_status == 200
    assert headers["Content-Type"] == want_headers["Content-Type"] == "application/json"
    assert without_request_id(body) == without_request_id(want_body)
    assert environ[ROUTE_KEY] == "/predict"


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("TRACE", "/health", 405, "GET"),
        ("GET", "/predict", 405, "POST"),
        ("PROPFIND", "/", 405, "GET"),
        ("GET", "/patients/8675309", 404, None),
        ("GET", "/model/plots/", 404, None),  # an empty {name} segment matches no route, as on API Gateway
    ],
)
def test_unrouted_requests_get_the_apis_404_and_405(
    wsgi: ChaliceWSGI, method: str, path: str, status: int, allow: str | None
) -> None:
    got, headers, body, environ = call(wsgi, method, path)
    assert got == status and headers.get("Allow") == allow
    assert headers["Content-Type"] == "application/json" and json.loads(body)["details"]
    assert environ[ROUTE_KEY] == ("(unrouted)" if status == 404 else path)


def test_a_plot_leaves_as_png_bytes(wsgi: ChaliceWSGI) -> None:
    status, headers, body, environ = call(wsgi, "GET", f"/model/plots/{PLOT_NAMES[0]}", headers={"Accept": "image/png"})
    assert status == 200 and headers["Content-Type"] == "image/png" and body[:4] == b"\x89PNG"
    assert int(headers["Content-Length"]) == len(body)
    assert environ[ROUTE_KEY] == "/model/plots/{name}"


def test_the_event_is_api_gateways_rest_proxy_shape(wsgi: ChaliceWSGI) -> None:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/model/plots/roc.png/", "QUERY_STRING": "a=1&a=2&b="}
    event = wsgi.event({**environ, "HTTP_ACCEPT": "image/png"}, None)
    assert event["resource"] == event["requestContext"]["resourcePath"] == "/model/plots/{name}"
    assert event["pathParameters"] == {"name": "roc.png"}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": [""]}
    assert event["queryStringParameters"] == {"a": "2", "b": ""}
    assert event["headers"] == {"Accept": "image/png"} and event["body"] is None
    unknown = wsgi.event({**environ, "PATH_INFO": "/a/b"}, b"\xff\x00")
    assert unknown["resource"] == CATCH_ALL and unknown["pathParameters"] == {"proxy": "a/b"}
    assert base64.b64decode(unknown["body"]) == b"\xff\x00" and unknown["isBase64Encoded"] is True


def test_a_body_over_api_gateways_10_mb_is_a_413_without_reading_it(wsgi: ChaliceWSGI) -> None:
    class Unreadable(io.BytesIO):
        def read(self, *_: Any) -> bytes:
            raise AssertionError("the body was read")

    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/predict",
        "CONTENT_LENGTH": str(MAX_PAYLOAD_BYTES + 1),
        "wsgi.input": Unreadable(),
    }
    seen: list[str] = []
    body = b"".join(wsgi(environ, lambda status, headers: seen.append(status)))
    assert seen == ["413 Request Entity Too Large"] and json.loads(body)["error"] == "payload too large"


def test_concurrent_requests_each_see_their_own_request(wsgi: ChaliceWSGI) -> None:
    """Chalice keeps the current request on the app object; the adapter makes it per thread."""
    encounter = json.loads((EVENTS / "api_predict.json").read_text())["body"].encode()
    results: list[tuple[bool, Any]] = []
    barrier = threading.Barrier(8)

    errors: list[BaseException] = []
    headers = {"Content-Type": "application/json"}

    def work(explain: bool) -> None:
        try:
            barrier.wait()
            for _ in range(10):
                status, _, body, _ = call(wsgi, "POST", f"/predict?explain={str(explain).lower()}", encounter, headers)
                results.append((explain, json.loads(body).get("top_factors") if status == 200 else json.loads(body)))
        except BaseException as exc:  # surfaced below: a thread swallows it otherwise
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 80, (errors, [r for r in results if isinstance(r[1], dict)][:3])
    bad = [(e, f) for e, f in results if bool(f) != e]
    assert not bad, bad[:3]


def test_each_worker_thread_has_its_own_current_request(wsgi: ChaliceWSGI) -> None:
    app = chalice_module.app
    app.current_request = "this thread's"
    seen: list[Any] = []

    def other() -> None:
        seen.append(app.current_request)
        app.current_request = "the other thread's"

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    try:
        assert seen == [None] and app.current_request == "this thread's"
    finally:
        app.current_request = None
