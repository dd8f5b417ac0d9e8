"""Chalice routes: a thin adapter from API Gateway events to `chalicelib.api.ReadmitAPI`."""

from __future__ import annotations

import uuid

from chalice import Chalice
from chalice import Response as ChaliceResponse

from chalicelib import telemetry
from chalicelib.api import ReadmitAPI, Request, Response

app = Chalice(app_name="readmit-api")  # not "readmit": Chalice would set the Powertools logger to ERROR
app.debug = False  # never send stack traces to callers
ANY = ["*/*"]  # accept every Content-Type so a wrong one gets our 415 body, not Chalice's
_api: ReadmitAPI | None = None


def api() -> ReadmitAPI:
    """One API (and one loaded champion) per process, created on first use."""
    global _api
    if _api is None:
        _api = ReadmitAPI.from_env()
    return _api


def _request() -> Request:
    r = app.current_request
    request_id = (r.context or {}).get("requestId") or uuid.uuid4().hex
    return Request(r.raw_body, dict(r.headers or {}), dict(r.query_params or {}), request_id)


def _respond(response: Response) -> ChaliceResponse:
    telemetry.flush()
    headers = {"Content-Type": response.content_type, **response.headers}
    return ChaliceResponse(body=response.payload(), status_code=response.status, headers=headers)


@app.route("/predict", methods=["POST"], content_types=ANY)
def predict() -> ChaliceResponse:
    return _respond(api().predict(_request()))


@app.route("/predict/batch", methods=["POST"], content_types=ANY)
def predict_batch() -> ChaliceResponse:
    return _respond(api().predict_batch(_request()))


@app.route("/health", methods=["GET"])
def health() -> ChaliceResponse:
    return _respond(api().health(_request()))


@app.route("/model", methods=["GET"])
def model() -> ChaliceResponse:
    return _respond(api().model_info(_request()))


@app.route("/metrics", methods=["GET"])
def prometheus_metrics() -> ChaliceResponse:
    return _respond(api().metrics(_request()))


@app.route("/openapi.json", methods=["GET"])
def openapi() -> ChaliceResponse:
    return _respond(api().openapi(_request()))


@app.route("/similar-patients", methods=["POST"], content_types=ANY)
def similar_patients() -> ChaliceResponse:
    return _respond(api().similar_patients(_request()))


@app.route("/chat", methods=["POST"], content_types=ANY)
def chat() -> ChaliceResponse:
    return _respond(api().chat(_request()))


# ---- clinician page and model card (issue #8) ------------------------------------------------------------------
@app.route("/", methods=["GET"])
def page() -> ChaliceResponse:
    return _respond(api().page(_request()))


@app.route("/model/card", methods=["GET"])
def model_card() -> ChaliceResponse:
    return _respond(api().model_card(_request()))


@app.route("/model/plots/{name}", methods=["GET"])
def model_plot(name: str) -> ChaliceResponse:
    return _respond(api().model_plot(_request(), name))
