"""End to end against the real HTTP server (`readmit serve`: gunicorn, two workers), as a client would use it."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from chalicelib.model.train import TrainConfig, train
from chalicelib.registry.registry import Registry

pytestmark = pytest.mark.slow  # real HTTP servers in subprocesses (a minute and more together)

EVENTS = Path(__file__).resolve().parent.parent / "events"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path
    home: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def call(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> tuple[int, Any]:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={"Content-Type": ctype})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw, status, kind = resp.read(), resp.status, resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            raw, status, kind = err.read(), err.code, err.headers.get("Content-Type", "")
        return status, json.loads(raw) if "json" in kind else raw.decode()

    def exchange(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], Any]:
        """Status, headers and (JSON) body of one request."""
        req = urllib.request.Request(self.url + path, data=body, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw, status, headers = resp.read(), resp.status, dict(resp.headers)
        except urllib.error.HTTPError as err:
            raw, status, headers = err.read(), err.code, dict(err.headers)
        return status, headers, json.loads(raw) if "json" in headers.get("Content-Type", "") else raw.decode()

    def logs(self) -> str:
        return self.log_path.read_text()


def start_server(tmp: Path, registry: Path, check_interval: float = 0.2, *extra: str) -> Server:
    port = free_port()
    log_path = tmp / "server.log"
    env = {**os.environ, "READMIT_HOME": str(tmp / "home"), "READMIT_ID_SALT": "test-salt", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chalicelib.cli.main",
            "serve",
            "--port",
            str(port),
            "--registry",
            str(registry),
            "--check-interval",
            str(check_interval),
            *extra,
        ],
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    server = Server(f"http://127.0.0.1:{port}", process, log_path, tmp / "home")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if server.call("GET", "/health")[0] == 200:
                return server
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server did not start:\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def models(sample_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two real, different models (different tree counts) to swap between."""
    out = tmp_path_factory.mktemp("e2e-bundles")
    a = train(sample_csv, out, TrainConfig(n_estimators=40, folds=3, baselines=False)).bundle_dir
    time.sleep(1.1)  # versions carry a timestamp to the second
    b = train(sample_csv, out, TrainConfig(n_estimators=80, folds=3, baselines=False)).bundle_dir
    return a, b


@pytest.fixture(scope="module")
def served(models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Registry]]:
    tmp = tmp_path_factory.mktemp("e2e")
    registry = Registry.open(tmp / "registry")
    a, b = models
    registry.register(a)
    registry.register(b)
    registry.promote(a.name, "first")
    server = start_server(tmp, tmp / "registry", 0.2, "--workers", "2")
    yield server, registry
    server.process.terminate()
    server.process.wait(timeout=10)


def example() -> dict[str, Any]:
    return json.loads(json.loads((EVENTS / "api_predict.json").read_text())["body"])


def test_health_model_openapi_and_metrics_answer_over_http(served: tuple[Server, Registry]) -> None:
    server, registry = served
    status, health = server.call("GET", "/health")
    assert status == 200 and health["ready"] and health["model_version"] == registry.champion()
    assert server.call("GET", "/model")[1]["version"] == registry.champion()
    assert "/predict" in server.call("GET", "/openapi.json")[1]["paths"]
    status, text = server.call("GET", "/metrics")
    assert status == 200 and "readmit_requests_total" in text


def test_predict_and_batch_over_http(served: tuple[Server, Registry]) -> None:
    server, _ = served
    status, body = server.call("POST", "/predict", example())
    assert status == 200 and 0 < body["risk"] < 1 and body["top_factors"]
    status, body = server.call("POST", "/predict/batch", {"encounters": [example(), {**example(), "age": "old"}]})
    assert status == 200 and body["scored"] == 1 and body["results"][1]["details"][0]["field"] == "encounters[1].age"


@pytest.mark.parametrize(
    ("body", "ctype", "status"),
    [
        (b"{not json", "application/json", 400),
        (json.dumps(example()).encode(), "text/plain", 415),
        (json.dumps({**example(), "time_in_hospital": 0}).encode(), "application/json", 422),
        (json.dumps({"encounters": [example()] * 501}).encode(), "application/json", 413),
    ],
)
def test_bad_requests_over_http_get_4xx_with_details_and_no_trace(
    served: tuple[Server, Registry], body: bytes, ctype: str, status: int
) -> None:
    server, _ = served
    path = "/predict/batch" if b"encounters" in body else "/predict"
    got, out = server.call("POST", path, body, ctype)
    assert got == status and out["details"] and "Traceback" not in json.dumps(out)


def test_a_champion_swap_under_continuous_requests_loses_none(
    served: tuple[Server, Registry], models: tuple[Path, Path]
) -> None:
    server, registry = served
    a, b = models
    seen: list[tuple[float, int, str | None]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            status, body = server.call("POST", "/predict", example())
            seen.append((time.monotonic(), status, body.get("model_version") if isinstance(body, dict) else None))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    registry.promote(b.name, "swap test")
    promoted = time.monotonic()
    deadline = promoted + 30

    def first_b() -> float | None:
        return next((at for at, _, v in list(seen) if v == b.name), None)

    # Each worker checks within a check interval (0.2 s) and then validates and loads the new champion on its
    # own: allow the second worker 5 s after the first has swapped, then watch 1 s more.
    while time.monotonic() < deadline and ((t := first_b()) is None or time.monotonic() < t + 6.0):
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    statuses = {s for _, s, _ in seen}
    versions = [v for _, _, v in seen]
    assert statuses == {200}, f"some requests failed: {statuses}"
    assert versions[0] == a.name and versions[-1] == b.name
    swapped = first_b()
    assert swapped is not None
    last_old = max(at for at, _, v in seen if v == a.name) - swapped
    settled = [v for at, _, v in seen if at > swapped + 5.0]
    assert settled and set(settled) == {b.name}, f"the old champion answered {last_old:.2f} s after the first swap"
    registry.promote(a.name, "back to a for the next test")


def test_a_corrupt_new_champion_is_not_swapped_in(
    served: tuple[Server, Registry], models: tuple[Path, Path], tmp_path: Path
) -> None:
    server, registry = served
    broken = tmp_path / "broken"
    shutil.copytree(models[1], broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["version"] = "20990101T000000Z-broken00"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    version = registry.register(broken)
    # corrupt the stored booster after registration (a bad upload, a flipped bit)
    stored = Path(registry.storage.uri) / "models" / version / "model.ubj"
    stored.write_bytes(stored.read_bytes()[:-100])
    # Every worker holds its own model and swaps on its own: first see them all serve the current champion.
    good = registry.champion()
    before = _model_answers(server, until=lambda answers: {a["version"] for a in answers} == {good})
    # Registry.open's promote would refuse it (hash check, then model_check); plant it as a direct write would
    Registry(registry.storage).promote(version, "corrupt on purpose")
    time.sleep(1.5)
    for _ in range(10):
        status, body = server.call("POST", "/predict", example())
        assert status == 200 and body["model_version"] == good
    after = _model_answers(server, until=lambda answers: max(a["load_failures"] for a in answers) > 0)
    assert {a["version"] for a in after} == {good}  # the last good model, in every worker
    assert max(a["load_failures"] for a in after) > max(a["load_failures"] for a in before)
    registry.promote(models[0].name, "restore")


def _model_answers(server: Server, until: Any, calls: int = 20, seconds: float = 15) -> list[dict[str, Any]]:
    """/model answers from whichever workers take the calls, repeated until ``until`` holds for one round."""
    deadline = time.monotonic() + seconds
    while True:
        answers = [server.call("GET", "/model")[1] for _ in range(calls)]
        if until(answers) or time.monotonic() > deadline:
            return answers
        time.sleep(0.2)


def test_server_logs_never_contain_identifiers_or_record_values(
    served: tuple[Server, Registry], raw_frame: pd.DataFrame
) -> None:
    server, _ = served
    marker = {**example(), "encounter_id": 314159265, "patient_nbr": 271828182, "medical_specialty": "Podiatry"}
    server.call("POST", "/predict?record=true", marker)
    server.call("POST", "/predict", {**marker, "age": "[999-1000)", "diag_2": "V99.99x"})
    server.call("POST", "/predict/batch", {"encounters": [marker, {**marker, "race": "Zorblax"}]})
    time.sleep(0.3)
    logs = server.logs()
    assert "request rejected" in logs  # the log is really captured
    for secret in ("314159265", "271828182", "Podiatry", "[999-1000)", "V99.99x", "Zorblax", "250.02"):
        assert secret not in logs, f"{secret!r} leaked into the server log"


@pytest.mark.parametrize("path", ["/nope", "/patients/86753090/history", "/predict/batch/extra?explain=false"])
def test_an_unknown_path_is_a_404_in_the_api_error_format(served: tuple[Server, Registry], path: str) -> None:
    server, _ = served
    for method in ("GET", "POST", "DELETE"):
        status, headers, body = server.exchange(method, path, b"{}" if method == "POST" else None)
        assert status == 404, (method, path, body)
        assert body["error"] == "not found" and body["details"][0]["field"] == "path" and body["request_id"]
        assert headers["Content-Type"] == "application/json" and "Allow" not in headers
    time.sleep(0.3)
    assert "86753090" not in server.logs()  # a path may carry an identifier: it is never logged


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/predict", "POST"),
        ("PUT", "/predict/batch", "POST"),
        ("POST", "/health", "GET"),
        ("DELETE", "/", "GET"),
    ],
)
def test_a_known_path_with_another_method_is_a_405_with_the_allow_header(
    served: tuple[Server, Registry], method: str, path: str, allow: str
) -> None:
    server, _ = served
    status, headers, body = server.exchange(method, path, b"{}" if method in ("POST", "PUT") else None)
    assert status == 405 and headers["Allow"] == allow, (status, headers, body)
    assert body["error"] == "method not allowed" and body["details"][0]["field"] == "method"


# ---- the production server (issue #20) --------------------------------------------------------------------------
def test_a_kept_alive_connection_answers_without_the_delayed_ack_stall(served: tuple[Server, Registry]) -> None:
    """Chalice's dev server wrote headers and body separately, so on a kept-alive connection every response
    waited ~40 ms for the client's delayed ACK (Nagle). gunicorn answers in a couple of milliseconds."""
    server, _ = served
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    timings = []
    for _ in range(21):
        started = time.perf_counter()
        conn.request("GET", "/health")
        response = conn.getresponse()
        response.read()
        timings.append(time.perf_counter() - started)
        assert response.status == 200 and not response.will_close  # the same connection throughout
    conn.close()
    assert statistics.median(timings[1:]) < 0.020, [round(t * 1000, 1) for t in timings]


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND"])
def test_trace_and_unknown_methods_get_a_405_in_the_api_error_format(
    served: tuple[Server, Registry], method: str
) -> None:
    server, _ = served
    status, headers, body = server.exchange(method, "/health")
    assert status == 405 and headers["Content-Type"] == "application/json" and headers["Allow"] == "GET"
    assert body["error"] == "method not allowed" and body["details"][0]["field"] == "method"


def test_a_body_longer_than_its_content_length_never_reaches_the_log_or_the_reply(
    served: tuple[Server, Registry],
) -> None:
    """On a kept-alive connection the bytes after Content-Length are read as the next request line: gunicorn's
    own handler (and the dev server) log and echo that line, which is the rest of a patient's record."""
    server, _ = served
    head = b'{"age": "[70-80)"'
    rest = b', "patient_nbr": 55511999, "payer_code": "Qzx-secret-payer"}\r\n\r\n'
    request = (
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Connection: keep-alive\r\nContent-Length: {len(head)}\r\n\r\n".encode()
        + head
        + rest
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):  # the server closes the connection after the malformed "request"
            received += chunk
    replies = received.split(b"HTTP/1.1 ")[1:]
    assert len(replies) == 2, received
    assert replies[0].startswith(b"400") and b"application/json" in replies[0]  # the truncated JSON
    assert (
        replies[1].startswith(b"400") and b"application/json" in replies[1] and b'"error":"bad request"' in replies[1]
    )
    time.sleep(0.3)
    for secret in (b"55511999", b"Qzx-secret-payer", b"payer_code"):
        assert secret not in received
        assert secret.decode() not in server.logs(), "the rest of the body leaked into the server log"


def test_the_access_log_names_route_templates_never_paths_or_queries(served: tuple[Server, Registry]) -> None:
    from chalicelib.serving.card import PLOT_NAMES

    server, _ = served
    for accept in ("image/png", "*/*"):
        url = server.url + f"/model/plots/{PLOT_NAMES[0]}?patient=44332211"
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": accept}), timeout=30) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
            assert resp.read()[:8] == b"\x89PNG\r\n\x1a\n"  # binary bytes as they are, not base64
    server.exchange("GET", "/patients/44332211")
    time.sleep(0.3)
    logs = server.logs()
    assert '"GET /model/plots/{name}" 200' in logs and '"GET (unrouted)" 404' in logs
    assert "44332211" not in logs and PLOT_NAMES[0] not in logs


def test_recorded_history_holds_no_raw_encounter_id(served: tuple[Server, Registry]) -> None:
    server, _ = served
    eid = 987654321
    status, _ = server.call("POST", "/predict?record=true", {**example(), "encounter_id": eid, "patient_nbr": 13579})
    assert status == 200
    files = list(server.home.glob("history.sqlite3*"))
    assert files
    data = b"".join(f.read_bytes() for f in files)
    # SQLite stores an integer as a big-endian 1-8 byte value; text as its digits
    for needle in (str(eid).encode(), struct.pack(">i", eid), struct.pack(">q", eid)):
        assert needle not in data


def test_the_chalice_dev_server_remains_behind_dev(models: tuple[Path, Path], tmp_path: Path) -> None:
    registry = Registry.open(tmp_path / "registry")
    registry.register(models[0])
    registry.promote(models[0].name, "dev")
    server = start_server(tmp_path, tmp_path / "registry", 0.2, "--dev")
    try:
        assert server.call("GET", "/health")[0] == 200
        assert server.exchange("GET", "/nope")[0] == 404
    finally:
        server.process.terminate()
        server.process.wait(timeout=10)
