"""/similar-patients and /chat over HTTP, against the real local server (`readmit serve`) with an index on disk
found through the environment, as `make demo` leaves it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chalicelib.registry.registry import Registry
from tests.test_server_e2e import EVENTS, Server, start_server

pytestmark = pytest.mark.slow  # a real HTTP server over a trained model and an index


@pytest.fixture(scope="module")
def server(small_bundle: Path, sample_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("similar-e2e")
    registry = Registry.open(tmp / "registry")
    registry.register(small_bundle)
    registry.promote(small_bundle.name, "first")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("READMIT_INDEX_DIR", str(sample_index))
        mp.delenv("READMIT_CHAT_MODEL", raising=False)
        running = start_server(tmp, tmp / "registry")
    yield running
    running.process.terminate()
    running.process.wait(timeout=10)


def body_of(name: str) -> dict[str, Any]:
    return json.loads(json.loads((EVENTS / name).read_text())["body"])


def test_similar_patients_and_chat_answer_over_http(server: Server) -> None:
    status, similar = server.call("POST", "/similar-patients", body_of("api_similar_patients.json"))
    assert status == 200 and similar["count"] == 5 and similar["neighbours"][0]["similarity"] > 0
    status, chat = server.call("POST", "/chat", body_of("api_chat.json"))
    assert status == 200 and chat["source"] == "template" and chat["fallback_reason"] == "not_configured"
    assert chat["similar"] == {"count": 5, "readmission_rate": similar["readmission_rate"]}
    assert "/similar-patients" in server.call("GET", "/openapi.json")[1]["paths"]


def test_bad_requests_are_4xx_over_http_and_the_log_holds_no_values(server: Server) -> None:
    status, out = server.call("POST", "/similar-patients", body_of("api_similar_patients_invalid.json"))
    assert status == 422 and {d["field"] for d in out["details"]} == {"k", "filters.same_age_band", "encounter.age"}
    assert server.call("POST", "/chat", body_of("api_chat_invalid.json"))[0] == 422
    logs = server.logs()
    assert "[200-210)" not in logs and "800001" not in logs and "900001" not in logs
