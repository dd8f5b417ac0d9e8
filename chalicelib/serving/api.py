"""The API's behaviour, independent of Chalice: parse → call the predictor → respond.

`app.py` maps each route to one method here; tests and the benchmark call the same methods. Every
error leaves as ``{"error", "details": [{"field", "message"}]}`` with a 4xx (or 503 when no model is
loaded); an unexpected failure is a 500 without a stack trace, logged by type only.
"""

from __future__ import annotations

import gc
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import to_json

from chalicelib.core import telemetry
from chalicelib.core.settings import ENV_SHADOW_LOG, Settings, raw, registry_uri
from chalicelib.data.schema import COLUMN_NAMES, IDENTIFIERS
from chalicelib.features.table import FEATURES
from chalicelib.monitoring.shadow import ShadowScorer
from chalicelib.registry.provider import ModelProvider
from chalicelib.serving import auth, card
from chalicelib.serving.api_models import (
    MAX_BATCH_BODY_BYTES,
    MAX_BODY_BYTES,
    BatchRequest,
    parse_batch_body,
    parse_encounter_body,
    parse_json,
)
from chalicelib.serving.errors import (
    ApiError,
    Detail,
    InvalidQuery,
    MethodNotAllowed,
    RouteNotFound,
    UnsupportedMediaType,
    ValidationFailed,
    safe_text,
)
from chalicelib.serving.history_store import open_history_store
from chalicelib.serving.openapi import document
from chalicelib.serving.page import clinician_page, page_auth
from chalicelib.serving.prediction_stream import FirehosePredictionLog, open_api_prediction_log
from chalicelib.serving.service import Predictor, cohort_error
from chalicelib.serving.similar_models import (
    ChatRequest,
    IndexNotReady,
    SimilarFilters,
    SimilarRequest,
    parse_chat,
    parse_similar,
)
from chalicelib.similar.chat import Explainer, Facts
from chalicelib.similar.search import Neighbours, SimilarPatients
from chalicelib.similar.vectors import DimensionMismatch, IndexMissing, StoreNotConfigured

UNROUTED = "(unrouted)"  # the route label of unknown paths: bounded metric labels, and no path in the logs
log = telemetry.logger
# The names an error detail may carry that are the service's own (UCI columns, envelope fields, the parts of a
# request); any other name in a detail is one the caller chose, which is never logged nor used as a metric label.
SCHEMA_NAMES = frozenset(
    {
        *COLUMN_NAMES,
        *BatchRequest.model_fields,
        *SimilarRequest.model_fields,
        *ChatRequest.model_fields,
        *SimilarFilters.model_fields,
        *("body", "Content-Type", "Authorization", "explain", "record", "model", "index", "path", "method"),
    }
)
_WHERE = re.compile(r"(?:encounters\[\d+\]\.|encounter\.|filters\.)?(.*)", re.DOTALL)  # where in the body


def loggable_fields(details: Iterable[Detail]) -> tuple[list[str], int]:
    """(the detail fields that are schema names, how many are not): what a log line or a metric may carry. An
    unknown field's name is the caller's text (``{"MRN 69384114 John Smith": 1}``), so only its count is kept."""
    known, unknown = [], 0
    for d in details:
        match = _WHERE.fullmatch(d.field)
        if match and match.group(1) in SCHEMA_NAMES:
            known.append(d.field)
        else:
            unknown += 1
    return known, unknown


def _recordable(record: Mapping[str, Any], prefix: str = "") -> None:
    """?record=true stores the encounter under (patient_nbr, encounter_id): without both it cannot be stored, and
    scoring it as if it had been would hide that from the caller, so it is a 422 (the OpenAPI document says so)."""
    if missing := [name for name in IDENTIFIERS if record.get(name) is None]:
        raise ValidationFailed([Detail(f"{prefix}{name}", "is required when record=true") for name in missing])


@dataclass
class Response:
    status: int
    body: Any
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        # pydantic-core's serializer: equivalent JSON to json.dumps, 4-5× faster on a 500-encounter batch
        return self.body if isinstance(self.body, str) else to_json(self.body).decode()

    def payload(self) -> str | bytes:
        """What goes on the wire: bytes (a PNG) as they are, anything else as text."""
        return self.body if isinstance(self.body, bytes) else self.text()


@dataclass
class Request:
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Verified token claims API Gateway's authorizer passed in the event (requestContext.authorizer.claims)
    claims: Mapping[str, Any] | None = None
    # API Gateway stage variables (the page's sign-in settings: authDomain, authClientId); empty locally
    stage_vars: Mapping[str, str] = field(default_factory=dict)
    identity: auth.Identity = auth.ANONYMOUS  # set by ReadmitAPI once the caller is authorized

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)


def _flag(request: Request, name: str, default: bool) -> bool:
    value = request.query.get(name)
    if value is None:
        return default
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise InvalidQuery(name, f"must be true or false, got {value!r}")


def _matches(template: str, path: str) -> bool:
    """Whether ``path`` is an instance of the route ``template``, as API Gateway matches resources: ``{name}``
    is one non-empty segment, ``{name+}`` (greedy) the non-empty rest; a trailing slash is ignored."""
    want, got = template.rstrip("/").split("/"), path.rstrip("/").split("/")
    for i, part in enumerate(want):
        if part.startswith("{") and part.endswith("+}"):
            return len(got) > i and all(got[i:])
        if i >= len(got) or not (got[i] if part.startswith("{") and part.endswith("}") else got[i] == part):
            return False
    return len(got) == len(want)


def route_error(path: str, method: str, routes: Mapping[str, Iterable[str]]) -> ApiError:
    """Why ``method path`` reached no route: 405 (with the methods the path has) when some route matches the path,
    else 404. ``routes`` maps each route template to its methods."""
    allowed = {m for template, methods in routes.items() if _matches(template, path) for m in methods}
    if allowed and method not in allowed:
        return MethodNotAllowed(method, sorted(allowed))
    return RouteNotFound()


def _require_json(request: Request) -> None:
    content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise UnsupportedMediaType(content_type or None)


class ReadmitAPI:
    def __init__(
        self,
        predictor: Predictor,
        similar: SimilarPatients | None = None,
        explainer: Explainer | None = None,
        authenticator: auth.Authenticator | None = None,
    ) -> None:
        self.predictor = predictor
        self.auth = authenticator if authenticator is not None else auth.Authenticator()
        self.provider = predictor.provider
        # /chat explains without the audit log: /predict is the prediction of record.
        self._explaining = Predictor(self.provider, predictor.history, None)
        self._similar = similar
        self.explainer = explainer if explainer is not None else Explainer.from_env()

    @property
    def similar(self) -> SimilarPatients:
        """Opened on first use from the environment: /predict never waits for (or depends on) the vector store."""
        if self._similar is None:
            from chalicelib.similar.embedding import open_embedder
            from chalicelib.similar.vectors import open_vector_store

            self._similar = SimilarPatients(open_embedder(), open_vector_store())
        return self._similar

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ReadmitAPI:
        s = Settings.from_env(env)  # once, at start-up: an invalid READMIT_* value stops the start here
        registry = None if s.model else registry_uri(s.registry)
        interval = s.check_interval
        provider = ModelProvider(registry_uri=registry, model_uri=s.model, check_interval=interval)

        def on_swap(_old: str, new: str) -> None:
            telemetry.MODEL_SWAPS.inc()
            _set_info(new)

        provider.status.listeners.append(on_swap)
        authenticator = auth.from_env(env)  # a wrong setting stops the start, before any model is loaded
        log = open_api_prediction_log(None)
        # A challenger under the registry's "shadow" alias scores beside the champion, off the request path; a
        # fixed model (READMIT_MODEL) has no registry, so no shadow.
        shadow = ShadowScorer.from_env(registry, log, interval) if registry else None
        predictor = Predictor(provider, open_history_store(None), log, shadow)
        api = cls(predictor, authenticator=authenticator)
        provider.current()  # load the champion once per process, before the first request
        # What is loaded now lives as long as the process: keep it out of every later garbage collection, whose
        # full passes otherwise walk all of it in the middle of a request (milliseconds at p99).
        gc.collect()  # what the first load left as garbage (cycles in its clients) goes now, not frozen forever
        gc.freeze()
        return api

    # -- routes -----------------------------------------------------------------------------------
    def predict(self, request: Request) -> Response:
        return self._handle("/predict", request, self._predict)

    def predict_batch(self, request: Request) -> Response:
        return self._handle("/predict/batch", request, self._predict_batch)

    def similar_patients(self, request: Request) -> Response:
        return self._handle("/similar-patients", request, self._similar_patients)

    def chat(self, request: Request) -> Response:
        return self._handle("/chat", request, self._chat)

    def health(self, request: Request) -> Response:
        def run(_r: Request) -> Response:
            model = self.provider.current()
            body = {"status": "ok", "ready": model is not None, "model_version": model.version if model else None}
            if model is None:
                body["detail"] = self.provider.status.last_error or "no model loaded yet"
            return Response(200, body)

        return self._handle("/health", request, run)

    def model_info(self, request: Request) -> Response:
        def run(_r: Request) -> Response:
            model = self.predictor.model()
            meta = model.meta
            return Response(
                200,
                {
                    "version": model.version,
                    "trained_at": meta["created_at"],
                    "metrics": meta["summary"],
                    "evaluation": meta["evaluation"],
                    "thresholds": meta["thresholds"],
                    "calibration": meta["calibration"]["method"],
                    "features": [{"name": f.name, "label": f.label, "sources": list(f.sources)} for f in FEATURES],
                    "data_sha256": meta["data"]["sha256"],
                    "code_version": meta["code_version"],
                    "capacity": meta.get("capacity"),  # top-q% capture on the evaluation set; None if older
                    "swaps": self.provider.status.swaps,
                    "load_failures": self.provider.status.failures,
                },
            )

        return self._handle("/model", request, run)

    def metrics(self, request: Request) -> Response:
        def run(_r: Request) -> Response:
            return Response(200, telemetry.prometheus_text().decode(), "text/plain; version=0.0.4")

        return self._handle("/metrics", request, run)

    def openapi(self, request: Request) -> Response:
        return Response(200, document())

    def page(self, request: Request) -> Response:
        """The clinician page (HTML with its CSS and JS inlined; public, like /health)."""

        def run(_r: Request) -> Response:
            html, headers = clinician_page(page_auth(self.auth.mode, request.stage_vars))
            return Response(200, html, "text/html; charset=utf-8", dict(headers))

        return self._handle("/", request, run)

    def model_card(self, request: Request) -> Response:
        def run(_r: Request) -> Response:
            model = self.predictor.model()
            body = {
                "version": model.version,
                "markdown": card.markdown(model.path),
                "html": card.card_html(model.path),
                "plots": list(card.PLOT_NAMES),
            }
            return Response(200, body)

        return self._handle("/model/card", request, run)

    def model_plot(self, request: Request, name: str) -> Response:
        def run(_r: Request) -> Response:
            png = card.plot(self.predictor.model().path, name)
            return Response(200, png, "image/png", {"Cache-Control": "no-cache"})

        return self._handle("/model/plots/{name}", request, run)

    def model_shadow(self, request: Request) -> Response:
        """The shadow model against the champion on the same requests (chalicelib/monitoring/shadow_report.py), and
        this process's shadow worker; ``shadow_version`` null means no shadow model."""
        return self._handle("/model/shadow", request, self._model_shadow)

    def unrouted(self, request: Request, path: str, method: str, routes: Mapping[str, Iterable[str]]) -> Response:
        """A request no route serves (API Gateway's catch-all resource, or a method the route lacks): 404, or 405
        with an Allow header, in the error format of every other route."""

        def run(_r: Request) -> Response:
            raise route_error(path, method, routes)

        return self._handle(UNROUTED, request, run)

    # -- implementation ---------------------------------------------------------------------------
    def _predict(self, request: Request) -> Response:
        _require_json(request)
        explain, remember = _flag(request, "explain", True), _flag(request, "record", False)
        record = parse_encounter_body(parse_json(request.body, MAX_BODY_BYTES))
        if err := cohort_error(record):
            raise err
        if remember:
            _recordable(record)
        model = self.predictor.model()
        [scored] = self.predictor.score(
            model,
            [record],
            explain=explain,
            request_id=request.request_id,
            remember=remember,
            caller=request.identity.caller,
        )
        telemetry.record_prediction([scored.tier], model.version)
        return Response(200, _prediction(scored, model, request.request_id))

    def _predict_batch(self, request: Request) -> Response:
        _require_json(request)
        explain, remember = _flag(request, "explain", True), _flag(request, "record", False)
        items = parse_batch_body(parse_json(request.body, MAX_BATCH_BODY_BYTES))
        results: list[dict[str, Any]] = [{"index": i} for i in range(len(items))]
        valid: list[tuple[int, dict[str, Any]]] = []
        for i, item in enumerate(items):
            try:
                record = parse_encounter_body(item, prefix=f"encounters[{i}].", batch_item=True)
                if err := cohort_error(record, prefix=f"encounters[{i}]."):
                    raise err
                if remember:
                    _recordable(record, prefix=f"encounters[{i}].")
                valid.append((i, record))
            except ValidationFailed as exc:
                known, _unknown = loggable_fields(exc.details)
                telemetry.record_invalid([f.split(".", 1)[-1] for f in known])
                results[i].update(exc.body())
        model = self.predictor.model()
        if valid:
            scored = self.predictor.score(
                model,
                [r for _, r in valid],
                explain=explain,
                request_id=request.request_id,
                remember=remember,
                caller=request.identity.caller,
            )
            for (i, _), s in zip(valid, scored, strict=True):
                results[i]["prediction"] = _prediction(s, model, request.request_id)
            telemetry.record_prediction([s.tier for s in scored], model.version)
        body = {
            "model_version": model.version,
            "request_id": request.request_id,
            "scored": len(valid),
            "invalid": len(items) - len(valid),
            "results": results,
        }
        return Response(200, body)

    def _similar_patients(self, request: Request) -> Response:
        _require_json(request)
        envelope, record = parse_similar(parse_json(request.body, MAX_BODY_BYTES))
        from chalicelib.similar.embedding import (
            EmbeddingError,  # with the store: loaded on the first similar-patients request
        )

        try:
            found = self.similar.find(record, envelope.k, envelope.filters.same_age_band)
        except (IndexMissing, DimensionMismatch, StoreNotConfigured, EmbeddingError) as exc:
            raise IndexNotReady(str(exc)) from None
        body = {
            "neighbours": found.neighbours,
            "count": found.count,
            "k": envelope.k,
            "readmission_rate": found.readmission_rate,
            "request_id": request.request_id,
        }
        return Response(200, body)

    def _chat(self, request: Request) -> Response:
        _require_json(request)
        envelope, record = parse_chat(parse_json(request.body, MAX_BODY_BYTES))
        model = self.predictor.model()
        [scored] = self._explaining.score(model, [record], explain=True, request_id=request.request_id)
        try:
            found = self.similar.find(record)
        except Exception as exc:  # no index, or the store is down: answer from the model's factors alone
            log.warning("chat without similar patients", extra={"error_type": type(exc).__name__})
            found = Neighbours([])
        factors = scored.factors or []
        facts = Facts(scored.risk, scored.tier, factors, found.count, found.readmission_rate)
        answer = self.explainer.answer(
            facts, envelope.question, (record.get("patient_nbr"), record.get("encounter_id"))
        )
        body = {
            "answer": answer.text,
            "source": answer.source,
            "fallback_reason": answer.fallback_reason,
            "guardrail": answer.guardrail.body() if answer.guardrail else None,
            "risk": round(scored.risk, 6),
            "risk_tier": scored.tier,
            "top_factors": factors,
            "similar": {"count": found.count, "readmission_rate": found.readmission_rate},
            "request_id": request.request_id,
        }
        return Response(200, body)

    def _model_shadow(self, request: Request) -> Response:
        from datetime import UTC, datetime, timedelta

        from chalicelib.core.audit import open_prediction_log
        from chalicelib.monitoring.shadow_report import current_report, outcome_labels
        from chalicelib.registry.registry import Registry

        hours = request.query.get("hours")
        since = None
        now = datetime.now(UTC)
        if hours is not None:
            try:
                value = float(hours)
            except ValueError:
                value = -1.0
            if not 0 < value <= 24 * 365:
                raise InvalidQuery("hours", f"must be a number of hours in (0, 8760], got {hours!r}")
            since = now - timedelta(hours=value)
        readable = raw(ENV_SHADOW_LOG)  # per request: one declared variable, no Settings built
        log = open_prediction_log(readable) if readable else self.predictor.log
        if log is None or isinstance(log, FirehosePredictionLog):  # write-only: the report reads its S3 prefix
            raise ApiError(
                "shadow report unavailable",
                [Detail("log", f"the API's prediction log cannot be read here: set {ENV_SHADOW_LOG}=s3://…")],
                503,
            )
        uri = self.provider.registry_uri
        registry = Registry.open(uri, validate=False) if uri else None
        body = current_report(registry, log, since=since, outcomes=outcome_labels(), now=now)
        shadow = self.predictor.shadow
        # this process's worker (each server process, each Lambda environment has its own): what it has loaded
        body["worker"] = {"loaded_version": shadow.version, **shadow.stats.as_dict()} if shadow is not None else None
        return Response(200, body)

    def _handle(self, route: str, request: Request, run: Callable[[Request], Response]) -> Response:
        started = time.perf_counter()
        try:
            # who is calling comes first: a stranger learns nothing from a 4xx about the body or the model
            request.identity = self.auth.authorize(route, request.header("authorization"), request.claims)
            response = run(request)
        except ApiError as exc:
            known, unknown = loggable_fields(exc.details)
            if exc.status == 422:
                telemetry.record_invalid(known)
            log.info(
                "request rejected",
                extra={
                    "route": route,
                    "status": exc.status,
                    "fields": known,  # schema names only (misplaced ones included); never a caller-chosen name
                    "unknown_fields": unknown,
                    "request_id": safe_text(request.request_id),
                },
            )
            response = Response(exc.status, exc.body(request.request_id), headers=exc.headers())
        except Exception as exc:  # the one place an unexpected failure becomes a clean 500
            log.error(
                "request failed",
                extra={"route": route, "error_type": type(exc).__name__, "request_id": safe_text(request.request_id)},
            )
            response = Response(500, {"error": "internal error", "details": [], "request_id": request.request_id})
        elapsed = time.perf_counter() - started
        telemetry.record_request(route, response.status)
        telemetry.record_latency(route, elapsed)
        response.headers.setdefault("X-Request-Id", request.request_id)
        return response


def _prediction(scored: Any, model: Any, request_id: str) -> dict[str, Any]:
    return {
        "risk": round(scored.risk, 6),
        "risk_tier": scored.tier,
        "threshold": round(model.threshold, 6),
        "model_version": model.version,
        "top_factors": scored.factors,
        "history_encounters": scored.history_encounters,
        "request_id": request_id,
    }


def _set_info(version: str) -> None:
    telemetry.MODEL_INFO.clear()
    telemetry.MODEL_INFO.labels(version=version).set(1)
