"""The scheduled drift monitor: read a window of the prediction log, compare it with the champion's training
reference, and publish the figures as CloudWatch metrics (EMF) that the drift alarm watches.

The alarm (`readmit-drift-<stage>`, on ``DriftDetected``) entering ALARM starts retraining through EventBridge.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from chalicelib.core.audit import PredictionLog
from chalicelib.features import drift
from chalicelib.features.table import FEATURE_NAMES
from chalicelib.registry.registry import Registry

METRICS = (
    "MaxFeaturePSI",
    "RiskPSI",
    "HighRiskRate",
    "DriftDetected",
    "MonitoredPredictions",
    "RealizedAUC",
    "LabelCoverage",
)
PERFORMANCE_WINDOW = timedelta(days=120)  # predictions 30-120 days old have matured labels


def window_arrays(log: PredictionLog, since: datetime, until: datetime) -> tuple[np.ndarray, np.ndarray, set[str]]:
    """Features, risks and model versions of the predictions made in [since, until)."""
    records = [r for r in log.read(since, until) if r.source != "shadow"]  # shadow records are not the record of care
    if not records:
        return np.empty((0, len(FEATURE_NAMES)), dtype=np.float32), np.empty(0), set()
    X = np.array([[np.nan if v is None else v for v in r.features] for r in records], dtype=np.float32)
    risk = np.array([r.risk for r in records], dtype=np.float64)
    return X, risk, {r.model_version for r in records}


def performance(log: PredictionLog, outcomes_uri: str, now: datetime, s3_client: Any = None) -> dict[str, Any]:
    """Realized performance of matured predictions, joined to the outcome uploads by hashed encounter id."""
    from chalicelib.monitoring.outcomes import load_outcome_uploads, realized

    labels, problems = load_outcome_uploads(outcomes_uri, s3_client)
    report = realized(log, labels, now - PERFORMANCE_WINDOW, now, now)
    report["outcome_problems"] = problems[:20]
    return report


def run(
    registry: Registry,
    log: PredictionLog,
    *,
    outcomes_uri: str | None = None,
    now: datetime | None = None,
    window: timedelta = timedelta(days=1),
    thresholds: drift.DriftThresholds | None = None,
) -> dict[str, Any]:
    """Drift of the last ``window`` of predictions against the champion's reference."""
    until = now or datetime.now(UTC)
    since = until - window
    version = registry.champion()
    if version is None:
        return {"status": "no champion", "window": [since.isoformat(), until.isoformat()]}
    with tempfile.TemporaryDirectory() as tmp:
        profile, sample = drift.load_reference(registry.download(version, Path(tmp)))
    X, risk, versions = window_arrays(log, since, until)
    report = drift.compare(profile, sample, X, risk, thresholds)
    too_few = report.n < report.thresholds["min_rows"]
    result: dict[str, Any] = {
        "status": "too few predictions" if too_few else ("drift" if report.drifted else "ok"),
        "model_version": version,
        "served_versions": sorted(versions),
        "window": [since.isoformat(), until.isoformat()],
        "metrics": {
            "MaxFeaturePSI": report.max_feature_psi,
            "RiskPSI": report.risk_psi,
            "HighRiskRate": report.high_risk_rate,
            "DriftDetected": float(report.drifted and not too_few),
            "MonitoredPredictions": float(report.n),
        },
        "alerts": report.alerts,
        "top_features": [
            {"feature": f.feature, "psi": f.psi, "test": f.test, "p_value": f.p_value}
            for f in sorted(report.features, key=lambda f: -f.psi)[:10]
        ],
    }
    if outcomes_uri:
        perf = performance(log, outcomes_uri, until)
        result["performance"] = perf
        realized_block = perf.get("realized") or {}
        if realized_block.get("roc_auc") is not None:
            result["metrics"]["RealizedAUC"] = realized_block["roc_auc"]
        if perf.get("label_coverage") is not None:
            result["metrics"]["LabelCoverage"] = perf["label_coverage"]
    return result
