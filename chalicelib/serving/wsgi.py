"""`readmit serve`: the Chalice app (app.py) as a WSGI application under gunicorn, for on-premises deployments.

Each HTTP request becomes the API Gateway REST proxy event the Lambda receives and goes through the same Chalice
app, so routing, 404/405 (``app.unrouted`` via the catch-all resource), errors, content types and binary PNGs
behave as on AWS. Event format: https://docs.aws.amazon.com/apigateway/latest/developerguide/
set-up-lambda-proxy-integrations.html#api-gateway-simple-proxy-for-lambda-input-format (and the output format
on the same page). gunicorn's gthread worker keeps connections alive and sets TCP_NODELAY on its listener
(gunicorn/sock.py), so no response waits ~40 ms for a delayed ACK as Chalice's dev server's do.

PHI: the server never logs a request body, a request line, a path or a query string. The access log has the
method, the route *template* (``/model/plots/{name}``, or ``(unrouted)``), the status and the duration; a
request gunicorn cannot parse (e.g. the rest of a body after a short Content-Length on a keep-alive
connection) is answered with the API's JSON 400 and logged by exception type only.
"""

from __future__ import annotations

import base64
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.http import errors as http_errors
from gunicorn.workers.gthread import ThreadWorker
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

ROUTE_KEY = "readmit.route"  # the WSGI environ key where the adapter leaves the route template for the access log
UNROUTED = "(unrouted)"  # as chalicelib.serving.api.UNROUTED: the access log's label for paths no route has
CATCH_ALL = "/{proxy+}"  # as app.CATCH_ALL (template.yaml's CatchAll resource)
# API Gateway REST APIs reject payloads over 10 MB with 413 before the Lambda runs; the adapter does the same,
# so a client cannot make a worker buffer an unbounded body.
# https://docs.aws.amazon.com/apigateway/latest/developerguide/api-gateway-execution-service-limits-table.html
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
# Methods the access log names; any other token is logged as OTHER (a method is client text).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
log = logging.getLogger("readmit.server")


class ServerConfig(BaseModel):
    """`readmit serve`'s gunicorn settings; the defaults suit a 2-core host (one worker per core)."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Each worker is a process with its own champion (loaded at start, hot-swapped on its own schedule).
    workers: int = Field(default_factory=lambda: int(os.environ.get("WEB_CONCURRENCY", "2")), ge=1, le=64)
    # Threads overlap requests that wait (DynamoDB, Bedrock, the vector store); scoring itself holds the GIL.
    threads: int = Field(4, ge=1, le=64)
    backlog: int = Field(2048, ge=1)  # the kernel caps it at net.core.somaxconn
    keepalive: int = Field(5, ge=0)  # seconds an idle keep-alive connection stays open
    timeout: int = Field(60, ge=1)  # a worker silent this long is restarted
    graceful_timeout: int = Field(30, ge=1)
    limit_request_line: int = Field(4094, ge=64, le=8190)
    limit_request_fields: int = Field(100, ge=1)
    limit_request_field_size: int = Field(8190, ge=64)
    accesslog: str | None = "-"  # "-" is stderr; None turns the access log off


# ---- the adapter ------------------------------------------------------------------------------------------------
@dataclass
class _Context:
    """The few attributes of Lambda's context object a handler may read."""

    aws_request_id: str
    function_name: str = "readmit-api"
    memory_limit_in_mb: int = 0
    invoked_function_arn: str = ""
    log_group_name: str = ""
    log_stream_name: str = ""
    deadline: float = field(default_factory=lambda: time.monotonic() + 29)  # API Gateway's 29 s integration limit

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


class _Routes:
    """API Gateway's resource matching over the app's route templates: a literal segment beats a ``{name}``
    one, a trailing slash is ignored, and a path no template matches goes to the catch-all resource."""

    def __init__(self, templates: Iterable[str]) -> None:
        # Sorted like chalice.local.RouteMatcher, so "/model/card" is tried before "/model/{x}".
        self._templates = [(t, t.split("/")) for t in sorted(templates) if t != CATCH_ALL]

    def match(self, path: str) -> tuple[str, dict[str, str] | None]:
        if path != "/" and path.endswith("/"):
            path = path[:-1]
        parts = path.split("/")
        for template, want in self._templates:
            if len(want) != len(parts):
                continue
            captured: dict[str, str] = {}
            for got, part in zip(parts, want, strict=True):
                if part.startswith("{") and part.endswith("}"):
                    if not got:
                        break
                    captured[part[1:-1]] = got
                elif got != part:
                    break
            else:
                return template, captured or None
        return CATCH_ALL, {"proxy": path.strip("/")}


def _headers(environ: Mapping[str, Any]) -> dict[str, list[str]]:
    """The request headers as API Gateway's multiValueHeaders (gunicorn has joined repeated ones with commas)."""
    out: dict[str, list[str]] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            out[key[5:].replace("_", "-").title()] = [str(value)]
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            out[key.replace("_", "-").title()] = [str(value)]
    return out


def _error(status: int, error: str, field_name: str, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """A response in the API's error format (chalicelib.serving.errors.ApiError.body) from outside the app."""
    body = to_json(
        {"error": error, "details": [{"field": field_name, "message": message}], "request_id": uuid.uuid4().hex}
    )
    return status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))], body


class ChaliceWSGI:
    """A WSGI application over a Chalice app's Lambda entry point (``app(event, context)``)."""

    def __init__(self, chalice_app: Any, stage: str = "local") -> None:
        self.app = chalice_app
        self.stage = stage
        self.routes = _Routes(chalice_app.routes)
        _thread_local_requests(chalice_app)

    def event(self, environ: Mapping[str, Any], body: bytes | None) -> dict[str, Any]:
        """The API Gateway REST proxy event of one request."""
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO") or "/"
        resource, path_params = self.routes.match(path)
        multi_headers = _headers(environ)
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        request_id = uuid.uuid4().hex
        return {
            "resource": resource,
            "path": path,
            "httpMethod": method,
            "headers": {k: v[-1] if v else "" for k, v in multi_headers.items()},
            "multiValueHeaders": multi_headers,
            "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
            "multiValueQueryStringParameters": query or None,
            "pathParameters": path_params,
            "stageVariables": None,
            "requestContext": {
                "resourcePath": resource,
                "httpMethod": method,
                "path": path,
                "stage": self.stage,
                "requestId": request_id,
                "identity": {"sourceIp": environ.get("REMOTE_ADDR", "")},
            },
            # Always base64, as API Gateway sends a binary media type: the app sees the exact bytes sent, even
            # when they are not UTF-8 (the Lambda gets text there; the API decodes both the same way).
            "body": base64.b64encode(body).decode("ascii") if body is not None else None,
            "isBase64Encoded": body is not None,
        }

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        started = time.perf_counter()
        status, headers, body = self._respond(environ)
        environ["readmit.duration"] = time.perf_counter() - started
        start_response(f"{status} {_reason(status)}", headers)
        return [body] if environ.get("REQUEST_METHOD") != "HEAD" else [b""]

    def _respond(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        environ[ROUTE_KEY] = UNROUTED
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _error(400, "bad request", "Content-Length", "must be a non-negative integer")
        if length > MAX_PAYLOAD_BYTES:
            return _error(413, "payload too large", "body", f"at most {MAX_PAYLOAD_BYTES} bytes")
        try:
            # gunicorn's input stops at Content-Length (or the last chunk); one byte more detects an oversize
            # chunked body.
            data = environ["wsgi.input"].read(MAX_PAYLOAD_BYTES + 1)
            if len(data) > MAX_PAYLOAD_BYTES:
                return _error(413, "payload too large", "body", f"at most {MAX_PAYLOAD_BYTES} bytes")
            event = self.event(environ, data or None)
            if event["resource"] != CATCH_ALL:
                environ[ROUTE_KEY] = event["resource"]
            result = self.app(event, _Context(event["requestContext"]["requestId"]))
            return _wsgi_response(result)
        except Exception as exc:  # the app answers its own errors; this is the adapter failing
            log.error("request failed in the server adapter: %s", type(exc).__name__)
            return _error(500, "internal error", "request", "the server failed to process the request")


def _wsgi_response(result: Mapping[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    status = int(result["statusCode"])
    raw = result.get("body")
    if raw is None:
        body = b""
    elif result.get("isBase64Encoded"):
        body = base64.b64decode(raw)
    else:
        body = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
    headers: list[tuple[str, str]] = []
    for name, value in (result.get("headers") or {}).items():
        if name.lower() != "content-length":
            headers.append((name, str(value)))
    for name, values in (result.get("multiValueHeaders") or {}).items():
        if name.lower() != "content-length":
            headers.extend((name, str(v)) for v in values)
    if not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("Content-Type", "application/json"))  # API Gateway's default for a proxy response
    headers.append(("Content-Length", str(len(body))))
    return status, headers, body


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _thread_local_requests(chalice_app: Any) -> None:
    """Chalice keeps ``current_request`` on the app object (one request at a time on Lambda); with worker threads
    each needs its own, as chalice.local.LocalChalice does for `chalice local`."""
    base = type(chalice_app)
    if getattr(base, "_readmit_thread_local", False):
        return
    local = threading.local()

    def get(_self: Any) -> Any:
        return getattr(local, "request", None)

    def set_(_self: Any, value: Any) -> None:
        local.request = value

    chalice_app.__class__ = type(
        base.__name__, (base,), {"current_request": property(get, set_), "_readmit_thread_local": True}
    )


# ---- gunicorn ---------------------------------------------------------------------------------------------------
_CLIENT_ERRORS: dict[type[BaseException], int] = {  # first match wins
    http_errors.InvalidResponseHeader: 500,  # the application's fault, as gunicorn's own handler says
    http_errors.InvalidResponseHeaderName: 500,
    http_errors.ConfigurationProblem: 500,
    http_errors.LimitRequestLine: 414,
    http_errors.LimitRequestHeaders: 431,
    http_errors.UnsupportedTransferCoding: 501,
    http_errors.ExpectationFailed: 417,
    http_errors.ForbiddenProxyRequest: 403,
    http_errors.ParseException: 400,  # every other request gunicorn cannot parse
}


class ReadmitWorker(ThreadWorker):
    """gunicorn's gthread worker, except that a request it cannot parse is answered in the API's JSON error format
    and logged by exception type only: gunicorn's own handler logs and echoes the offending request line, which
    may be the rest of a patient's JSON body (a short Content-Length on a keep-alive connection)."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        status = next((code for kind, code in _CLIENT_ERRORS.items() if isinstance(exc, kind)), 500)
        if status == 500:
            self.log.error("request failed in the server: %s", type(exc).__name__)
            _, headers, body = _error(500, "internal error", "request", "the server failed to process the request")
        else:
            self.log.warning("malformed request rejected: %s (%d)", type(exc).__name__, status)
            error = "bad request" if status == 400 else _reason(status).lower()
            _, headers, body = _error(status, error, "request", "the HTTP request could not be parsed")
        head = f"HTTP/1.1 {status} {_reason(status)}\r\nConnection: close\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        try:
            client.sendall(head.encode("latin-1") + body)
        except OSError:
            self.log.debug("could not send the error response")


class AccessLog(glogging.Logger):
    """The access line without the path or query (either may carry an identifier): method, route template,
    status, duration."""

    def access(self, resp: Any, req: Any, environ: Mapping[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        method = environ.get("REQUEST_METHOD", "")
        status = str(getattr(resp, "status", "") or "").split(" ", 1)[0] or "-"
        duration = environ.get("readmit.duration")
        ms = duration * 1000 if duration is not None else request_time.total_seconds() * 1000
        self.access_log.info(
            '"%s %s" %s %.1fms',
            method if method in KNOWN_METHODS else "OTHER",
            environ.get(ROUTE_KEY, UNROUTED),
            status,
            ms,
        )


class ReadmitServer(BaseApplication):
    """gunicorn's custom-application entry (https://docs.gunicorn.org/en/stable/custom.html): settings from
    ServerConfig, the app built in each worker after the fork (so each loads its own champion)."""

    def __init__(self, config: ServerConfig, load: Callable[[], Any]) -> None:
        self.config = config
        self._load = load
        super().__init__()

    def load_config(self) -> None:
        c = self.config
        settings = {
            "bind": [f"[{c.host}]:{c.port}" if ":" in c.host else f"{c.host}:{c.port}"],
            "workers": c.workers,
            "worker_class": ReadmitWorker,
            "threads": c.threads,
            "backlog": c.backlog,
            "keepalive": c.keepalive,
            "timeout": c.timeout,
            "graceful_timeout": c.graceful_timeout,
            "limit_request_line": c.limit_request_line,
            "limit_request_fields": c.limit_request_fields,
            "limit_request_field_size": c.limit_request_field_size,
            "accesslog": c.accesslog,
            "errorlog": "-",
            "loglevel": "info",  # debug would log gunicorn's parser details
            "logger_class": AccessLog,
            "proc_name": "readmit-api",
            "preload_app": False,  # each worker loads the model after the fork: no threads or handles cross it
            "control_socket_disable": True,  # no admin socket in $HOME
            "max_requests": 0,  # a restart reloads the champion: no periodic recycling
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self._load()


def application(stage: str = "local") -> ChaliceWSGI:
    """The WSGI app over app.py's Chalice app, with the champion loaded before the first request."""
    project = str(Path(__file__).resolve().parents[2])  # app.py sits beside chalicelib (here and in the image)
    if project not in sys.path:
        sys.path.insert(0, project)
    import app as chalice_module

    chalice_module.api()  # load the champion now, not on the first request (and not racing threads for it)
    return ChaliceWSGI(chalice_module.app, stage)


def serve(config: ServerConfig, stage: str = "local") -> None:
    """Run gunicorn in the foreground until SIGINT/SIGTERM."""
    ReadmitServer(config, lambda: application(stage)).run()
