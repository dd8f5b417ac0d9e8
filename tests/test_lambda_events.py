"""The API fixtures' content, replayed through template.yaml's ApiFunction as `readmit invoke` runs it (each
fixture's status code is checked with every other fixture in tests/test_invoke.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.replay import EVENTS, proxy, run


@pytest.fixture
def invoke(small_bundle: Path) -> Any:
    def call(name: str) -> tuple[int, Any]:
        return proxy(run("ApiFunction", name, READMIT_MODEL=str(small_bundle)))

    return call


def test_the_predict_fixture_returns_factors_and_the_no_factor_one_does_not(invoke: Any) -> None:
    assert invoke("api_predict.json")[1]["top_factors"]
    assert invoke("api_predict_no_factors.json")[1]["top_factors"] is None


def test_the_invalid_fixture_names_all_three_bad_fields(invoke: Any) -> None:
    _, body = invoke("api_predict_invalid.json")
    assert {d["field"] for d in body["details"]} == {"age", "A1Cresult", "number_inpatient"}


def test_the_batch_fixture_reports_the_bad_item_and_scores_the_rest(invoke: Any) -> None:
    _, body = invoke("api_predict_batch.json")
    assert body["scored"] == 2 and body["results"][1]["details"][0]["field"] == "encounters[1].gender"


def test_the_model_fixture_describes_the_model_it_was_given(invoke: Any, small_bundle: Path) -> None:
    status, body = invoke("api_model.json")
    assert status == 200 and body["version"] == small_bundle.name


def test_the_page_fixture_gets_html_with_a_content_security_policy(small_bundle: Path) -> None:
    response = run("ApiFunction", "api_page.json", READMIT_MODEL=str(small_bundle))
    assert response["statusCode"] == 200 and response["headers"]["Content-Type"].startswith("text/html")
    assert "script-src 'sha256-" in response["headers"]["Content-Security-Policy"]
    assert "<form" in response["body"] and not response.get("isBase64Encoded")


def test_the_plot_fixture_returns_a_base64_png_as_api_gateway_expects(small_bundle: Path) -> None:
    response = run("ApiFunction", "api_model_plot.json", READMIT_MODEL=str(small_bundle))
    assert response["statusCode"] == 200 and response["isBase64Encoded"] is True
    assert base64.b64decode(response["body"]).startswith(b"\x89PNG\r\n")


def test_an_unknown_path_on_the_catch_all_resource_is_a_404_in_the_api_error_format(invoke: Any) -> None:
    """API Gateway sends paths no other resource has to /{proxy+} (template.yaml's CatchAll event)."""
    status, body = invoke("api_unknown_path.json")
    assert status == 404
    assert body["error"] == "not found" and body["details"][0]["field"] == "path" and body["request_id"]


def test_a_known_path_with_another_method_is_a_405_with_the_allow_header(small_bundle: Path) -> None:
    response = run("ApiFunction", "api_predict_wrong_method.json", READMIT_MODEL=str(small_bundle))
    assert response["statusCode"] == 405 and response["headers"]["Allow"] == "POST"
    body = json.loads(response["body"])
    assert body["error"] == "method not allowed" and body["details"][0]["field"] == "method"


def test_a_wrong_method_on_a_route_resource_gets_the_same_405(small_bundle: Path) -> None:
    """Should a resource ever route a method the app lacks, Chalice's own 405 is not what the caller sees."""
    event = json.loads((EVENTS / "api_health.json").read_text())
    event["httpMethod"] = event["requestContext"]["httpMethod"] = "DELETE"
    # through a method with the authorizer, as the catch-all has: a caller the app does not know gets a 401 first
    event["requestContext"]["authorizer"] = json.loads((EVENTS / "api_predict.json").read_text())["requestContext"][
        "authorizer"
    ]
    response = run("ApiFunction", event, READMIT_MODEL=str(small_bundle))
    assert response["statusCode"] == 405 and response["headers"]["Allow"] == "GET"
    assert json.loads(response["body"])["error"] == "method not allowed"
