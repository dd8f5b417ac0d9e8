"""The drift monitor Lambda, replayed from events/ against moto S3: a prediction log of shifted encounters
raises DriftDetected in EMF; an unshifted one does not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib.batch.local import score_table
from chalicelib.core.audit import AuditRecord, S3PredictionLog
from chalicelib.data.simulate import shift_file
from chalicelib.data.tabular import read_table
from chalicelib.model.bundle import ModelBundle
from chalicelib.registry.registry import Registry
from tests.helpers import FakeContext, load_event, load_function, moto_s3

ROOT = Path(__file__).resolve().parent.parent


Context = partial(FakeContext, "readmit-drift-monitor")


def handler() -> Any:
    return load_function("drift_monitor").handler


def audit_records(model: ModelBundle, csv: Path, at: datetime) -> list[AuditRecord]:
    scored = score_table(model, read_table(csv, require_target=False))
    keep = ~scored.excluded
    return [
        AuditRecord(request_id=f"r{i}", at=at.isoformat(), model_version=model.version, risk=float(r),
                    risk_tier=str(t), encounter_hash=None, features=[float(v) for v in x], source="batch")
        for i, (r, t, x) in enumerate(zip(scored.risk[keep], scored.tiers[keep], scored.X[keep], strict=True))
    ]  # fmt: skip


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, small_bundle: Path) -> Iterator[Registry]:
    monkeypatch.setenv("READMIT_REGISTRY", "s3://models/registry")
    monkeypatch.setenv("READMIT_PREDICTION_LOG", "s3://predictions/log")
    with moto_s3("models", "predictions"):
        registry = Registry.open("s3://models/registry")
        registry.register(small_bundle)
        registry.promote(small_bundle.name, "test champion")
        yield registry


def emf(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    assert lines, "no EMF line was printed"
    # EMF may carry a metric as a list of values; one value per metric here
    return {k: v[0] if isinstance(v, list) and len(v) == 1 else v for k, v in lines[-1].items()}


@pytest.mark.parametrize(("shift", "drifted"), [("none", 0.0), ("utilisation", 1.0)])
@pytest.mark.slow
def test_the_monitor_publishes_drift_metrics_for_the_last_day(
    aws: Registry, small_bundle: Path, data_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    shift: str, drifted: float,
) -> None:  # fmt: skip
    csv = tmp_path / f"{shift}.csv"
    shift_file(data_path, csv, shift, rows=2500, seed=4)
    now = datetime.now(UTC)
    log = S3PredictionLog("predictions", "log")
    log.append(audit_records(ModelBundle.load(small_bundle), csv, now - timedelta(hours=2)))
    log.append(audit_records(ModelBundle.load(small_bundle), csv, now - timedelta(days=3))[:50])  # outside the window

    event = load_event("drift_monitor_daily.json")
    result = handler()(event, Context())
    metrics = emf(capsys)

    assert result["status"] == ("drift" if drifted else "ok"), result["alerts"]
    assert metrics["DriftDetected"] == drifted and metrics["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Readmit"
    assert metrics["MonitoredPredictions"] == result["metrics"]["MonitoredPredictions"] > 2000
    assert metrics["model_version"] == small_bundle.name
    if drifted:
        assert result["top_features"][0]["feature"] in ("number_inpatient", "any_inpatient", "total_visits")
        assert metrics["RiskPSI"] > 0.2


@pytest.mark.slow
def test_without_predictions_the_monitor_says_so_and_does_not_alarm(
    aws: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    result = handler()(load_event("drift_monitor_daily.json"), Context())
    assert result["status"] == "too few predictions" and emf(capsys)["DriftDetected"] == 0.0


@pytest.mark.slow
def test_matured_predictions_joined_to_uploaded_outcomes_publish_realized_auc(
    aws: Registry, small_bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    from chalicelib.core.identifiers import hash_id

    monkeypatch.setenv("READMIT_ID_SALT", "monitor-test")
    monkeypatch.setenv("READMIT_OUTCOMES_URI", "s3://predictions/outcomes")
    rng = np.random.default_rng(0)
    risks = rng.beta(2, 14, 600)
    at = (datetime.now(UTC) - timedelta(days=45)).isoformat()
    S3PredictionLog("predictions", "log").append(
        [
            AuditRecord(request_id=f"m{i}", at=at, model_version=small_bundle.name, risk=float(r),
                        risk_tier="high" if r > 0.2 else "low", encounter_hash=hash_id(70_000 + i, kind="encounter"),
                        features=[0.0] * 97, source="api")
            for i, r in enumerate(risks)
        ]
    )  # fmt: skip
    outcomes = "encounter_id,readmitted\n" + "".join(
        f"{70_000 + i},{'<30' if rng.random() < r else 'NO'}\n" for i, r in enumerate(risks[:450])
    )
    boto3.client("s3").put_object(Bucket="predictions", Key="outcomes/2026-11.csv", Body=outcomes.encode())

    result = handler()(load_event("drift_monitor_daily.json"), Context())
    metrics = emf(capsys)

    assert result["performance"]["label_coverage"] == pytest.approx(0.75)
    assert 0.5 < metrics["RealizedAUC"] <= 1 and metrics["LabelCoverage"] == pytest.approx(75.0)
    assert "outcomes" not in json.dumps(result["performance"]["outcome_problems"])  # no bad rows
