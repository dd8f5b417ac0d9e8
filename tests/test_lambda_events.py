"""Replays every API Gateway fixture in events/ through the Chalice app as Lambda would call it."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

import app as chalice_app

EVENTS = Path(__file__).resolve().parent.parent / "events"
EXPECTED = {
    "api_predict.json": 200,
    "api_predict_no_factors.json": 200,
    "api_predict_invalid.json": 422,
    "api_predict_malformed.json": 400,
    "api_predict_wrong_content_type.json": 415,
    "api_predict_batch.json": 200,
    "api_health.json": 200,
    "api_model.json": 200,
    "api_metrics.json": 200,
    "api_openapi.json": 200,
    # No similar-patient index in this replay: 503, while /chat answers from the model's factors alone.
    # tests/test_similar_api.py and tests/test_chat.py replay the same requests against an index.
    "api_similar_patients.json": 503,
    "api_similar_patients_invalid.json": 422,
    "api_chat.json": 200,
    "api_chat_invalid.json": 422,
    "api_page.json": 200,
    "api_model_card.json": 200,
    "api_model_plot.json": 200,
    "api_model_plot_unknown.json": 404,
}


class Context:
    """The parts of the Lambda context object that the runtime provides."""

    function_name = "readmit-api"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:readmit-api"
    aws_request_id = "fixture-request"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 29_000


@pytest.fixture
def handler(small_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("READMIT_MODEL", str(small_bundle))
    monkeypatch.setattr(chalice_app, "_api", None)
    return chalice_app.app


def invoke(handler: Any, name: str) -> tuple[int, Any]:
    event = json.loads((EVENTS / name).read_text())
    response = handler(event, Context())
    body = response["body"]
    kind = response["headers"].get("Content-Type", "")
    return response["statusCode"], json.loads(body) if "json" in kind else body


def test_every_api_fixture_has_an_expected_status() -> None:
    assert {p.name for p in EVENTS.glob("api_*.json")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_fixture_replays_with_its_expected_status(handler: Any, name: str) -> None:
    status, body = invoke(handler, name)
    assert status == EXPECTED[name]
    if status >= 400:
        assert body["error"] and body["details"] and body["request_id"].startswith("fixture-")


def test_the_predict_fixture_returns_factors_and_the_no_factor_one_does_not(handler: Any) -> None:
    assert invoke(handler, "api_predict.json")[1]["top_factors"]
    assert invoke(handler, "api_predict_no_factors.json")[1]["top_factors"] is None


def test_the_invalid_fixture_names_all_three_bad_fields(handler: Any) -> None:
    _, body = invoke(handler, "api_predict_invalid.json")
    assert {d["field"] for d in body["details"]} == {"age", "A1Cresult", "number_inpatient"}


def test_the_batch_fixture_reports_the_bad_item_and_scores_the_rest(handler: Any) -> None:
    _, body = invoke(handler, "api_predict_batch.json")
    assert body["scored"] == 2 and body["results"][1]["details"][0]["field"] == "encounters[1].gender"


def test_the_page_fixture_gets_html_with_a_content_security_policy(handler: Any) -> None:
    response = handler(json.loads((EVENTS / "api_page.json").read_text()), Context())
    assert response["statusCode"] == 200 and response["headers"]["Content-Type"].startswith("text/html")
    assert "script-src 'sha256-" in response["headers"]["Content-Security-Policy"]
    assert "<form" in response["body"] and not response.get("isBase64Encoded")


def test_the_plot_fixture_returns_a_base64_png_as_api_gateway_expects(handler: Any) -> None:
    response = handler(json.loads((EVENTS / "api_model_plot.json").read_text()), Context())
    assert response["statusCode"] == 200 and response["isBase64Encoded"] is True
    assert base64.b64decode(response["body"]).startswith(b"\x89PNG\r\n")
