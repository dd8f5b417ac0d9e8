"""Chalice routes: a thin adapter from API Gateway events to `chalicelib.serving.api.ReadmitAPI`."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlparse

from chalice import Chalice
from chalice import Response as ChaliceResponse
from chalice.app import Request as ChaliceRequest

from chalicelib.core import post_invoke, telemetry
from chalicelib.serving import snapstart
from chalicelib.serving.api import ReadmitAPI, Request, Response

app = Chalice(app_name="readmit-api")  # not "readmit": Chalice would set the Powertools logger to ERROR
app.debug = False  # never send stack traces to callers
ANY = ["*/*"]  # accept every Content-Type so a wrong one gets our 415 body, not Chalice's
CATCH_ALL = "/{proxy+}"  # template.yaml's CatchAll event: API Gateway sends every path no other resource has here
_api: ReadmitAPI | None = None
# On Lambda: an internal extension that sends the prediction log after each response (chalicelib/core/post_invoke.py);
# registered during Init, before the SnapStart hooks build the API, so the API's log defers to it. A no-op elsewhere.
post_invoke.start()


def api() -> ReadmitAPI:
    """One API (and one loaded champion) per process, created on first use."""
    global _api
    if _api is None:
        _api = ReadmitAPI.from_env()
    return _api


# Lambda SnapStart: build and warm the API before the version's snapshot; renew per-environment state after each
# restore (chalicelib/serving/snapstart.py). Registers nothing off Lambda or without the runtime's snapshot_restore_py.
snapstart.register(api)


def _request() -> Request:
    r = app.current_request
    assert r is not None  # Chalice sets it before it calls a route or a middleware
    context = r.context or {}
    request_id = context.get("requestId") or uuid.uuid4().hex
    # API Gateway's Cognito authorizer puts the verified token's claims here (Lambda proxy integration input format)
    claims = (context.get("authorizer") or {}).get("claims")
    stage_vars = dict(r.stage_vars or {})
    body = r.raw_body  # bytes: Chalice encodes a str body (its annotation says str | bytes)
    return Request(
        body if isinstance(body, bytes) else body.encode(),
        dict(r.headers or {}),
        dict(r.query_params or {}),
        request_id,
        claims,
        stage_vars=stage_vars,
    )


def _respond(response: Response) -> ChaliceResponse:
    telemetry.flush()
    headers: dict[str, str | list[str]] = {"Content-Type": response.content_type, **response.headers}
    return ChaliceResponse(body=response.payload(), status_code=response.status, headers=headers)


@app.middleware("http")
def unrouted(event: ChaliceRequest, get_response: Callable[[ChaliceRequest], ChaliceResponse]) -> ChaliceResponse:
    """Requests no route below serves (the catch-all resource, or a method the route lacks) get the API's 404 or
    405, not Chalice's 405 with an empty Allow header. Every invocation ends by telling the post-invoke extension
    that its records are queued (any path, Chalice's own errors included: else it would wait for the deadline)."""
    try:
        if event.method in app.routes.get(event.path, {}):  # event.path is the API Gateway resource
            return get_response(event)
        path = event.path
        if path == CATCH_ALL:  # API Gateway passes the rest of the path as the "proxy" path parameter
            path = "/" + ((event.uri_params or {}).get("proxy") or "")
        routes = {route: list(methods) for route, methods in app.routes.items()}
        return _respond(api().unrouted(_request(), path, event.method, routes))
    finally:
        post_invoke.invocation_done()


def local_server(config: Any, host: str, port: int) -> Any:
    """`readmit serve`'s HTTP server: Chalice's local server, which answers a path no route matches with API
    Gateway's 403, given the CatchAll resource template.yaml declares, so unknown paths reach ``unrouted`` as on
    AWS. Used only locally (chalice.local is not imported on Lambda)."""
    from functools import partial

    from chalice import local

    class CatchAllMatcher(local.RouteMatcher):
        def match_route(self, url: str) -> local.MatchResult:
            try:
                return super().match_route(url)
            except ValueError:
                parsed = urlparse(url)
                query = parse_qs(parsed.query, keep_blank_values=True)
                return local.MatchResult(CATCH_ALL, {"proxy": parsed.path.strip("/")}, query)

    class Handler(local.ChaliceRequestHandler):
        def __init__(self, request: Any, client_address: Any, server: Any, app_object: Chalice, config: Any) -> None:
            self.local_gateway = local.LocalGateway(app_object, config)
            matcher = CatchAllMatcher([r for r in app_object.routes if r != CATCH_ALL])
            self.local_gateway.event_converter = local.LambdaEventConverter(matcher, app_object.api.binary_types)
            local.BaseHTTPRequestHandler.__init__(self, request, client_address, server)

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            """The access line without the path, which may carry an identifier (http.server logs it all)."""
            self.log_message('"%s" %s', self.command, str(code))

    server = local.create_local_server(app, config, host, port)
    server.server.RequestHandlerClass = partial(Handler, app_object=app, config=config)
    return server


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


# ---- shadow runs before promotion (issue #15) ------------------------------------------------------------------
@app.route("/model/shadow", methods=["GET"])
def model_shadow() -> ChaliceResponse:
    return _respond(api().model_shadow(_request()))
