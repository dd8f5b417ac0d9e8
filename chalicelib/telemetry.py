"""Logging, metrics and tracing, PHI-safe by construction: only ids we generate, versions, counts, timings
and field *names* are ever logged, never field values or patient/encounter identifiers.

Powertools (JSON logs with correlation id, EMF metrics) for Lambda; a Prometheus registry for the
container deployment on EKS and local runs (`GET /metrics`).
"""

from __future__ import annotations

import functools
import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

SERVICE = "readmit"
NAMESPACE = "Readmit"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
# No Tracer here: aws_xray_sdk costs ~0.6 s of cold start; Lambda's active tracing records the API's segments,
# and the worker functions that call other services create their own Tracer.

registry = CollectorRegistry()
PREDICTIONS = Counter("readmit_predictions", "Encounters scored", ["tier"], registry=registry)
REQUESTS = Counter("readmit_requests", "API requests by route and status", ["route", "status"], registry=registry)
INVALID = Counter("readmit_invalid_fields", "Rejected fields by field name", ["field"], registry=registry)
LATENCY = Histogram(
    "readmit_request_seconds",
    "Request latency",
    ["route"],
    registry=registry,
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
MODEL_SWAPS = Counter("readmit_model_swaps", "Champion hot swaps", registry=registry)
MODEL_FAILURES = Counter("readmit_model_load_failures", "Failed champion loads (kept the last good)", registry=registry)
MODEL_INFO = Gauge("readmit_model_info", "The served model version (value 1)", ["version"], registry=registry)


def prometheus_text() -> bytes:
    return generate_latest(registry)


def _emf_enabled() -> bool:
    """Powertools' own switch, looked up once per environment: it is read three times per request."""
    key = (os.environ.get("POWERTOOLS_DEV"), os.environ.get("POWERTOOLS_METRICS_DISABLED"))
    enabled = _emf_switch.get(key)
    if enabled is None:
        enabled = _emf_switch[key] = not is_metrics_disabled()
    return enabled


_emf_switch: dict[tuple[str | None, str | None], bool] = {}


@functools.lru_cache(maxsize=64)
def _child(metric: Any, *labels: str) -> Any:
    """A labelled Prometheus series, bound once (``labels()`` takes a lock and builds a key on every call)."""
    return metric.labels(*labels)


def record_prediction(tiers: list[str], model_version: str) -> None:
    """Count scored encounters (Prometheus + EMF). Tiers only: no values, no identifiers."""
    for tier in set(tiers):
        _child(PREDICTIONS, tier).inc(tiers.count(tier))
    if _emf_enabled():  # Powertools still auto-flushes at 100 values when disabled
        metrics.add_metric(name="Predictions", unit=MetricUnit.Count, value=len(tiers))
        metrics.add_metric(name="HighRiskPredictions", unit=MetricUnit.Count, value=tiers.count("high"))
        metrics.add_metadata(key="model_version", value=model_version)


def record_latency(route: str, seconds: float) -> None:
    _child(LATENCY, route).observe(seconds)
    if _emf_enabled():
        metrics.add_metric(name="LatencyMs", unit=MetricUnit.Milliseconds, value=seconds * 1000)


def flush() -> None:
    """Emit this request's EMF metrics (Lambda); a no-op when there are none or metrics are disabled."""
    if metrics.metric_set and _emf_enabled():
        metrics.flush_metrics()


def record_request(route: str, status: int) -> None:
    _child(REQUESTS, route, str(status)).inc()


def record_invalid(fields: list[str]) -> None:
    for f in fields:
        INVALID.labels(field=f).inc()
