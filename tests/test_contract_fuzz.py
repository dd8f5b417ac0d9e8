"""The OpenAPI document against the real server (issue #20): schemathesis generates requests from the document,
valid and invalid, sends them to `readmit serve` over HTTP, and checks every answer against the same document, so
the contract and the server cannot drift apart unnoticed. Also over HTTP: hostile bodies and field names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from chalicelib.serving.auth import SCOPES, DevAuth
from chalicelib.serving.openapi import document
from tests.conftest import SIMILAR_SALT
from tests.test_server_e2e import free_port

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
# Every answer a documented status with a documented body and content type, never a 5xx; and the document exact both
# ways: valid data is accepted (positive_data_acceptance) and invalid data refused (negative_data_rejection).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    positive_data_acceptance,
    negative_data_rejection,
]
# negative_data_rejection's default statuses (400, 401, 403, 404, 405, 406, 409, 415, 422, 428, 429, 5xx; see
# schemathesis/config/_checks.py) lack 413, which /predict/batch answers to more than maxItems encounters, as its
# document says: a refusal, so it is added for that operation alone. The option is documented at
# https://schemathesis.readthedocs.io/en/stable/reference/checks/ ("[checks.negative_data_rejection]
# expected-statuses") and per operation at https://schemathesis.readthedocs.io/en/stable/reference/configuration/.
REJECTED = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429", "5xx"]
# Bounded: at most 30 generated cases per operation for valid and for invalid data (mode "all": positive and
# negative), plus the document's examples and schemathesis' boundary ("coverage") cases, including other methods.
CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"max-examples": 30, "mode": "all", "deterministic": False},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True}},
        "request-timeout": 30,
        "operations": [
            {
                "include-path": "/predict/batch",
                "checks": {"negative_data_rejection": {"expected-statuses": [*REJECTED, "413"]}},
            }
        ],
    }
)
schema = schemathesis.openapi.from_dict(document(), config=CONFIG)


@schema.hook
def map_case(ctx: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    """?record=true makes patient_nbr and encounter_id required, which OpenAPI cannot say in the schema (a query
    parameter cannot make a body field required; the `record` parameter's description says it). So when /predict
    is drawn with record=true and a body lacking either identifier, both are given, as the description asks: the
    request is then what the document calls valid. A schema-local map_case hook, documented at
    https://schemathesis.readthedocs.io/en/stable/reference/hooks/ ("map_{component}", component "case")."""
    if ctx.operation is None or ctx.operation.path != "/predict" or not isinstance(case.body, dict):
        return case
    if str((case.query or {}).get("record", "")).lower() != "true":
        return case
    for name, value in (("patient_nbr", 800001), ("encounter_id", 900001)):
        if case.body.get(name) in (None, "?", ""):  # the values the Encounter schema allows for a missing id
            case.body[name] = value
    return case


DEV_SECRET = "contract-fuzz-dev-secret-of-forty-characters"
TOKEN = DevAuth(DEV_SECRET).issue("schemathesis", SCOPES, ttl_seconds=24 * 3600)


def _drops_security(case: schemathesis.Case) -> bool:
    """A negative case whose header part is the mutation: the document's only header is the bearer token, so it
    is sent as generated (missing, or not a token) and must be refused. Every other case carries a valid token."""
    components = getattr(case.meta, "components", None) or {}
    return any(
        getattr(where, "value", where) == "header" and getattr(info.mode, "value", info.mode) == "negative"
        for where, info in components.items()
    )


@dataclass
class Served:
    url: str
    log_path: Path

    def post(self, path: str, body: bytes) -> tuple[int, Any]:
        req = urllib.request.Request(
            self.url + path,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def served(small_bundle: Path, sample_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`readmit serve` on a free port with the small model and the sample's similar-patient index, without Bedrock
    (so /chat answers from its template). Its stdout and stderr go to one file."""
    tmp = tmp_path_factory.mktemp("contract")
    port = free_port()
    log_path = tmp / "server.log"
    env = {
        **os.environ,
        "READMIT_HOME": str(tmp / "home"),
        "READMIT_ID_SALT": SIMILAR_SALT,
        "READMIT_INDEX_DIR": str(sample_index),
        "PYTHONUNBUFFERED": "1",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "READMIT_DEV_AUTH_SECRET": DEV_SECRET,
    }
    command = [sys.executable, "-m", "chalicelib.cli.main", "serve", "--port", str(port), "--model", str(small_bundle)]
    command += ["--auth", "dev"]  # the document declares bearer tokens: a request without one must get its 401
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as resp:
                if json.loads(resp.read())["ready"]:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail(f"server did not start:\n{log_path.read_text()}")
        time.sleep(0.2)
    yield Served(url, log_path)
    process.terminate()
    process.wait(timeout=10)


@schema.parametrize()
@settings(deadline=timedelta(seconds=5))  # per request, with room for a shared 2-core machine (they take ~2 ms)
@pytest.mark.slow
def test_every_answer_conforms_to_the_openapi_document(case: schemathesis.Case, served: Served) -> None:
    if not _drops_security(case):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {TOKEN}"}
    case.call_and_validate(base_url=served.url, checks=CHECKS)


@pytest.mark.slow
def test_the_parser_breakers_are_400s_over_http_too(served: Served) -> None:
    digits = sys.get_int_max_str_digits()
    for path in ("/predict", "/predict/batch", "/similar-patients", "/chat"):
        status, out = served.post(path, b"[" * 1000 + b"]" * 1000)
        assert status == 400 and "nested deeper than" in out["details"][0]["message"], (path, out)
        status, out = served.post(path, b'{"k": ' + b"1" * (digits + 1) + b"}")
        assert status == 400 and f"more than {digits} digits" in out["details"][0]["message"], (path, out)


@pytest.mark.slow
def test_unknown_field_names_never_reach_the_server_log(served: Served) -> None:
    example = json.loads(json.loads((EVENTS / "api_predict.json").read_text())["body"])
    hostile = {"MRN 69384114 John Smith": 1, "K" * 60_000: 2, 'evil\n{"level":"ERROR"}\x1b[31m\u202e': 3}
    before = served.log_path.stat().st_size
    status, out = served.post("/predict", json.dumps({**example, **hostile}).encode())
    assert status == 422 and len(out["details"]) == 3
    status, _ = served.post("/chat", json.dumps({"encounter": example, "question": "why?", **hostile}).encode())
    assert status == 422
    time.sleep(0.3)  # the server writes its lines after answering
    with served.log_path.open(encoding="utf-8", errors="replace") as fh:
        fh.seek(before)
        logs = fh.read()
    assert logs.count('"request rejected"') == 2 and '"unknown_fields":3' in logs
    assert "69384114" not in logs and "John Smith" not in logs and "KKKKKKKK" not in logs
    assert "evil" not in logs and "\x1b" not in logs and "\u202e" not in logs
    assert max(len(line) for line in logs.splitlines()) < 2000


@pytest.mark.slow
def test_the_rejection_statuses_are_schemathesis_defaults_plus_413_only() -> None:
    """REJECTED restates negative_data_rejection's default list: a schemathesis upgrade that changes it fails here."""
    from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES

    assert REJECTED == NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES
