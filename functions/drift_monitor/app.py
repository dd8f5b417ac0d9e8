"""Scheduled drift monitor: a thin handler over chalicelib.monitoring.monitor, publishing EMF metrics. Its event is the
EventBridge schedule's "Scheduled Event", parsed with Powertools' EventBridgeModel: only its time is read (logged)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from chalicelib.core import settings
from chalicelib.core.audit import open_prediction_log
from chalicelib.monitoring import monitor
from chalicelib.registry.registry import Registry

logger = Logger(service="readmit-monitor")
metrics = Metrics(namespace="Readmit", service="readmit")


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    scheduled = EventBridgeModel.model_validate(event)  # a ValidationError for anything but an EventBridge event
    config = settings.Settings.from_env()
    result = monitor.run(
        Registry.open(settings.registry_uri()),  # on AWS both come from the environment; locally, the defaults
        open_prediction_log(),
        window=timedelta(hours=config.drift_window_hours),
        outcomes_uri=config.outcomes_uri,
    )
    for name, value in result.get("metrics", {}).items():
        unit = MetricUnit.Count if name in ("DriftDetected", "MonitoredPredictions") else MetricUnit.NoUnit
        unit = MetricUnit.Percent if name == "LabelCoverage" else unit
        value = value * 100 if name == "LabelCoverage" else value
        metrics.add_metric(name=name, unit=unit, value=value)
    if result.get("model_version"):
        metrics.add_metadata(key="model_version", value=result["model_version"])
    logger.info(
        "drift check",
        extra={"status": result["status"], "alerts": result.get("alerts", []), "scheduled": scheduled.time.isoformat()},
    )
    return result
