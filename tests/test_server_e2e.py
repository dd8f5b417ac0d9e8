"""End to end against the real local HTTP server (`readmit serve`), as a client would use it."""

from __future__ import annotations

import json
import os
import shutil
import socket
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

from chalicelib.registry import Registry
from chalicelib.train import TrainConfig, train

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


def start_server(tmp: Path, registry: Path, check_interval: float = 0.2) -> Server:
    port = free_port()
    log_path = tmp / "server.log"
    env = {**os.environ, "READMIT_HOME": str(tmp / "home"), "READMIT_ID_SALT": "test-salt", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chalicelib.cli",
            "serve",
            "--port",
            str(port),
            "--registry",
            str(registry),
            "--check-interval",
            str(check_interval),
        ],
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
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
    server = start_server(tmp, tmp / "registry")
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
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            status, body = server.call("POST", "/predict", example())
            seen.append((status, body.get("model_version") if isinstance(body, dict) else None))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    registry.promote(b.name, "swap test")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not any(v == b.name for _, v in seen[-5:]):
        time.sleep(0.2)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    statuses = {s for s, _ in seen}
    versions = [v for _, v in seen]
    assert statuses == {200}, f"some requests failed: {statuses}"
    assert versions[0] == a.name and versions[-1] == b.name
    first_b = versions.index(b.name)
    assert set(versions[first_b + 6 :]) <= {b.name}  # once swapped, it stays swapped (allowing in-flight requests)
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
    before = server.call("GET", "/model")[1]
    registry.promote(version, "corrupt on purpose")
    time.sleep(1.5)
    status, body = server.call("POST", "/predict", example())
    after = server.call("GET", "/model")[1]
    assert status == 200 and body["model_version"] == before["version"]
    assert after["load_failures"] > before["load_failures"]
    registry.promote(models[0].name, "restore")


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
