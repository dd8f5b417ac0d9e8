"""Retraining workflow step: check training. Thin handler over chalicelib.pipeline."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from chalicelib import pipeline

logger = Logger(service="readmit-retrain")
metrics = Metrics(namespace="Readmit", service="readmit-retrain")
tracer = Tracer(service="readmit-retrain")


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return pipeline.check_training(event)
