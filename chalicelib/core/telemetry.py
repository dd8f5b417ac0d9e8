"""Logging, metrics and tracing, PHI-safe by construction: only ids we generate, versions, counts, timings
and field *names* are ever logged, never field values or patient/encounter identifiers.

Powertools JSON logs (with correlation id) and EMF metric lines for Lambda; a Prometheus registry for the
container deployment on EKS and local runs (`GET /metrics`).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

SERVICE = "readmit"
NAMESPACE = "Readmit"

logger = Logger(service=SERVICE)
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
    """Powertools' own switch (POWERTOOLS_METRICS_DISABLED, POWERTOOLS_DEV), looked up once per environment."""
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


# ---- EMF (Lambda) ------------------------------------------------------------------------------------------------
# One EMF line per request, written from pre-built JSON fragments: Powertools' Metrics cost ~26 us per request in
# isolation and ~0.1 ms inside /predict (unit/name validation and an f-string of the metric per add_metric, a
# debug dict, dicts rebuilt and json.dumps at every flush, and print's two writes, each a flush on Lambda's
# unbuffered stdout); this costs ~2 us alone, ~0.03 ms inside /predict. The line is the document Powertools
# emitted (same members, order, units, dimension and value arrays; tests/test_emf.py compares the two), per the
# EMF specification:
# https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html
# (root object with _aws.Timestamp in epoch ms and _aws.CloudWatchMetrics[] of MetricDirective {Namespace,
# Dimensions: [[dimension names]], Metrics: [{Name, Unit}]}; every dimension and metric name a root member; a metric
# value is a number or an array of at most 100 numbers). Names, units and the service dimension are what
# template.yaml's alarms and dashboard read (Readmit/LatencyMs, Predictions, HighRiskPredictions, service=readmit).
EMF_UNITS: dict[str, str] = {
    "Predictions": MetricUnit.Count.value,
    "HighRiskPredictions": MetricUnit.Count.value,
    "LatencyMs": MetricUnit.Milliseconds.value,
}
EMF_MAX_VALUES = 100  # the specification's limit on one metric's value array
_compact = functools.partial(json.dumps, separators=(",", ":"))
_EMF_DECLARED = {name: _compact({"Name": name, "Unit": unit}) for name, unit in EMF_UNITS.items()}
_EMF_KEY = {name: _compact(name) for name in EMF_UNITS}
_EMF_HEAD = '{"_aws":{"Timestamp":'
_EMF_DIRECTIVE = ',"CloudWatchMetrics":[{"Namespace":' + _compact(NAMESPACE) + ',"Dimensions":[["service"]],"Metrics":['
_EMF_SERVICE = "]}]}," + _compact({"service": SERVICE})[1:-1]
_emf_values: dict[str, list[float]] = {}  # this request's values by metric name, in the order first recorded
_emf_metadata: dict[str, str] = {}  # this request's metadata (root members CloudWatch ignores): the model version


@functools.lru_cache(maxsize=16)
def _json_member(key: str, value: str) -> str:
    return _compact({key: value})[1:-1]


def _emf_add(name: str, value: float) -> None:
    values = _emf_values.setdefault(name, [])
    values.append(float(value))
    if len(values) >= EMF_MAX_VALUES:  # a caller that never flushes (outside app.py) still emits valid, bounded lines
        flush()


def emf_line() -> str | None:
    """This request's EMF document as one JSON line, or None when nothing was recorded."""
    if not _emf_values:
        return None
    declared = ",".join([_EMF_DECLARED[name] for name in _emf_values])
    metadata = "".join(["," + _json_member(k, v) for k, v in _emf_metadata.items()])
    # repr(float) is json.dumps' own float encoding; the values are counts and a perf_counter difference (finite)
    values = ",".join([f"{_EMF_KEY[name]}:[{','.join(map(repr, vs))}]" for name, vs in _emf_values.items()])
    return f"{_EMF_HEAD}{int(time.time() * 1000)}{_EMF_DIRECTIVE}{declared}{_EMF_SERVICE}{metadata},{values}}}\n"


def record_prediction(tiers: list[str], model_version: str) -> None:
    """Count scored encounters (Prometheus + EMF). Tiers only: no values, no identifiers."""
    for tier in set(tiers):
        _child(PREDICTIONS, tier).inc(tiers.count(tier))
    _emf_add("Predictions", len(tiers))
    _emf_add("HighRiskPredictions", tiers.count("high"))
    _emf_metadata["model_version"] = model_version


def record_latency(route: str, seconds: float) -> None:
    _child(LATENCY, route).observe(seconds)
    _emf_add("LatencyMs", seconds * 1000)


def flush() -> None:
    """Write this request's EMF line to stdout (CloudWatch Logs extracts the metrics on Lambda) in one write, unless
    metrics are disabled; then forget the request's values either way."""
    if _emf_values and _emf_enabled():
        sys.stdout.write(emf_line() or "")  # one write: Lambda's stdout flushes on every write (awslambdaric)
    _emf_values.clear()
    _emf_metadata.clear()


def record_request(route: str, status: int) -> None:
    _child(REQUESTS, route, str(status)).inc()


def record_invalid(fields: list[str]) -> None:
    for f in fields:
        INVALID.labels(field=f).inc()
