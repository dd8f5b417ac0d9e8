"""One way to wrap a retraining or batch step as a Lambda handler: Powertools logging (no event logged: it may name
data locations), EMF metrics and X-Ray tracing around a domain function that takes the event, and the library
exceptions a step cannot help seeing raised as the typed step errors its state machine names (core.errors)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

from chalicelib.core.errors import InvalidEvent, step_error

SERVICE = "readmit-retrain"


def step(
    fn: Callable[[dict[str, Any]], dict[str, Any]], *, count_as: str | None = None, service: str = SERVICE
) -> Callable[..., Any]:
    """The handler for ``fn``; ``count_as`` names a Count metric emitted once per successful call. An invalid event
    (pydantic) is raised as InvalidEvent, AWS throttling or a 5xx as AwsThrottled or AwsUnavailable: Lambda reports
    the class name as errorType, which the state machine's Retry and Catch match."""
    logger = Logger(service=service)
    metrics = Metrics(namespace="Readmit", service=service)
    tracer = Tracer(service=service)

    @logger.inject_lambda_context(log_event=False)
    @metrics.log_metrics
    @tracer.capture_lambda_handler
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        try:
            result = fn(event)
        except Exception as exc:
            typed = step_error(exc)
            if typed is None:
                raise
            # pydantic's own message quotes the input: dropped, as the batch steps always have
            raise typed from (None if isinstance(typed, InvalidEvent) else exc)
        if count_as:
            metrics.add_metric(name=count_as, unit=MetricUnit.Count, value=1)
        return result

    return handler
