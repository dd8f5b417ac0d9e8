"""One way to wrap a retraining step as a Lambda handler: Powertools logging (no event logged: it may name
data locations), EMF metrics and X-Ray tracing around a domain function that takes the event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

SERVICE = "readmit-retrain"


def step(
    fn: Callable[[dict[str, Any]], dict[str, Any]], *, count_as: str | None = None, service: str = SERVICE
) -> Callable[..., Any]:
    """The handler for ``fn``; ``count_as`` names a Count metric emitted once per successful call."""
    logger = Logger(service=service)
    metrics = Metrics(namespace="Readmit", service=service)
    tracer = Tracer(service=service)

    @logger.inject_lambda_context(log_event=False)
    @metrics.log_metrics
    @tracer.capture_lambda_handler
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        result = fn(event)
        if count_as:
            metrics.add_metric(name=count_as, unit=MetricUnit.Count, value=1)
        return result

    return handler
