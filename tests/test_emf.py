"""The API's EMF metrics line (issue #16, item 7): valid per the CloudWatch embedded metric format specification
(https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html),
the same document Powertools' Metrics emitted before for the same request, one write per request, and no PHI."""

from __future__ import annotations

import io
import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit

import app as chalice_module
from chalicelib.core import telemetry
from chalicelib.core.audit import LocalPredictionLog
from chalicelib.registry.provider import ModelProvider
from chalicelib.serving.api import ReadmitAPI
from chalicelib.serving.history_store import SQLiteHistoryStore
from chalicelib.serving.service import Predictor
from tests.helpers import FakeContext, load_event

EVENT = load_event("api_predict.json")
# What template.yaml's alarms and dashboard read: namespace Readmit, dimension service=readmit.
EXPECTED_UNITS = {"Predictions": "Count", "HighRiskPredictions": "Count", "LatencyMs": "Milliseconds"}


Context = partial(FakeContext, "readmit-api", aws_request_id="emf")


class LambdaStdout(io.StringIO):
    """awslambdaric's Unbuffered stdout: every write() is flushed to the log pipe, so each one is counted."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


@pytest.fixture
def lambda_app(small_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    provider = ModelProvider(model_uri=str(small_bundle))
    api = ReadmitAPI(Predictor(provider, SQLiteHistoryStore(tmp_path / "h.sqlite3"), LocalPredictionLog(tmp_path)))
    monkeypatch.setattr(chalice_module, "_api", api)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.delenv("POWERTOOLS_DEV", raising=False)
    chalice_module.app(EVENT, Context())  # warm: load the champion
    return chalice_module.app


def predict(lambda_app: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], LambdaStdout]:
    out = LambdaStdout()
    with monkeypatch.context() as m:
        m.setattr("sys.stdout", out)
        response = lambda_app(EVENT, Context())
    assert response["statusCode"] == 200, response
    return json.loads(response["body"]), out


def assert_valid_emf(doc: dict[str, Any]) -> None:
    """The specification's structure: _aws {Timestamp (epoch ms), CloudWatchMetrics: [MetricDirective]}; every
    dimension and declared metric a root member; a metric value a number or an array of at most 100 numbers."""
    aws = doc["_aws"]
    assert isinstance(aws["Timestamp"], int) and abs(aws["Timestamp"] - time.time() * 1000) < 60_000
    [directive] = aws["CloudWatchMetrics"]
    assert set(directive) == {"Namespace", "Dimensions", "Metrics"}
    assert directive["Namespace"] == "Readmit"
    assert directive["Dimensions"] == [["service"]] and doc["service"] == "readmit"
    for metric in directive["Metrics"]:
        assert set(metric) == {"Name", "Unit"} and metric["Unit"] == EXPECTED_UNITS[metric["Name"]]
        value = doc[metric["Name"]]
        values = value if isinstance(value, list) else [value]
        assert 1 <= len(values) <= 100 and all(isinstance(v, int | float) for v in values)


def test_one_predict_writes_one_valid_emf_line_in_one_write(lambda_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    body, out = predict(lambda_app, monkeypatch)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and out.getvalue().endswith("\n")
    assert out.writes == 1  # print() made two writes, each a flush on Lambda
    doc = json.loads(lines[0])
    assert_valid_emf(doc)
    names = [m["Name"] for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
    assert names == ["Predictions", "HighRiskPredictions", "LatencyMs"]
    assert doc["Predictions"] == [1.0]
    assert doc["HighRiskPredictions"] == [1.0 if body["risk_tier"] == "high" else 0.0]
    assert 0 < doc["LatencyMs"][0] < 60_000
    assert doc["model_version"] == body["model_version"]
    # No PHI: only the members above, none of the request's values (identifiers included)
    assert set(doc) == {"_aws", "service", "model_version", *names}
    request = json.loads(EVENT["body"])
    # the metric values are numbers we measured (a latency's digits can contain "800001" by chance): the text
    # checked is every other member, and each value is compared whole
    text = json.dumps({k: v for k, v in doc.items() if k not in names})
    for value in (request["encounter_id"], request["patient_nbr"], request["diag_1"], request["payer_code"]):
        assert str(value) not in text
        assert all(v not in (value, str(value)) for name in names for v in doc[name])


def test_the_line_equals_what_powertools_emitted_for_the_same_request(
    lambda_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The previous implementation (Powertools' Metrics, its calls verbatim) runs beside the new one on the same
    request with the same arguments; both documents must be equal but for the Timestamp."""
    reference = Metrics(namespace="Readmit", service="readmit")
    reference.clear_metrics()
    record_prediction, record_latency, flush = telemetry.record_prediction, telemetry.record_latency, telemetry.flush

    def both_prediction(tiers: list[str], model_version: str) -> None:
        record_prediction(tiers, model_version)
        reference.add_metric(name="Predictions", unit=MetricUnit.Count, value=len(tiers))
        reference.add_metric(name="HighRiskPredictions", unit=MetricUnit.Count, value=tiers.count("high"))
        reference.add_metadata(key="model_version", value=model_version)

    def both_latency(route: str, seconds: float) -> None:
        record_latency(route, seconds)
        reference.add_metric(name="LatencyMs", unit=MetricUnit.Milliseconds, value=seconds * 1000)

    def both_flush() -> None:
        flush()
        if reference.metric_set:
            reference.flush_metrics()

    monkeypatch.setattr(telemetry, "record_prediction", both_prediction)
    monkeypatch.setattr(telemetry, "record_latency", both_latency)
    monkeypatch.setattr(telemetry, "flush", both_flush)
    _, out = predict(lambda_app, monkeypatch)
    new, old = (json.loads(line) for line in out.getvalue().splitlines())
    assert abs(new["_aws"].pop("Timestamp") - old["_aws"].pop("Timestamp")) < 1000
    assert new == old
    assert list(new) == list(old)  # member order too


def test_disabled_metrics_write_nothing_and_keep_nothing(lambda_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    _, out = predict(lambda_app, monkeypatch)
    assert out.getvalue() == "" and telemetry.emf_line() is None


def test_a_caller_that_never_flushes_still_gets_bounded_valid_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside app.py nobody flushes; at the specification's 100 values per metric the line is written."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    out = LambdaStdout()
    monkeypatch.setattr("sys.stdout", out)
    for _ in range(100):
        telemetry.record_latency("/health", 0.001)
    [line] = out.getvalue().splitlines()
    doc = json.loads(line)
    assert_valid_emf(doc)
    assert doc["LatencyMs"] == [1.0] * 100 and telemetry.emf_line() is None
