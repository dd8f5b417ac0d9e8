"""The API fixtures' content, replayed through template.yaml's ApiFunction as `readmit invoke` runs it (each
fixture's status code is checked with every other fixture in tests/test_invoke.py)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from tests.replay import proxy, run


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
