"""API errors carry their status code; domain code raises them and one place turns them into responses."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

TEXT_CAP = 64  # characters of a caller-chosen string that may reach a log line or an error's field name


def safe_text(text: str, cap: int = TEXT_CAP) -> str:
    """``text`` fit for a log line or an error body: control, format and surrogate characters (Unicode category
    C*: newlines, ANSI escapes, bidi overrides, lone surrogates that no UTF-8 encoder accepts) as ``\\uXXXX``, and
    at most ``cap`` characters, with how many were cut. A caller chooses these strings: unescaped they forge log
    lines, uncapped a 60 KB key makes a 60 KB line."""
    head = text[:cap]
    out = "".join(f"\\u{ord(c):04x}" if unicodedata.category(c)[0] == "C" else c for c in head)
    return out if len(text) <= cap else f"{out}…(+{len(text) - cap} chars)"


@dataclass
class Detail:
    field: str
    message: str


@dataclass
class ApiError(Exception):
    """Base: a response the caller can act on, never a stack trace."""

    error: str
    details: list[Detail] = field(default_factory=list)
    status: int = 400

    def body(self, request_id: str | None = None) -> dict:
        out: dict = {"error": self.error, "details": [{"field": d.field, "message": d.message} for d in self.details]}
        if request_id:
            out["request_id"] = request_id
        return out

    def headers(self) -> dict[str, str]:
        """Response headers the status requires (none for most)."""
        return {}


class MalformedJson(ApiError):
    """The body is not JSON."""

    def __init__(self, message: str) -> None:
        super().__init__("malformed JSON", [Detail("body", message)], 400)


class UnacceptableJson(ApiError):
    """Valid JSON the service will not process: nested too deep, a number too long to convert, or a string that
    is not Unicode text. A 400, like malformed JSON: the body as a whole is refused, not a field."""

    def __init__(self, message: str) -> None:
        super().__init__("unacceptable JSON", [Detail("body", message)], 400)


class UnsupportedMediaType(ApiError):
    """The body is not declared as application/json."""

    def __init__(self, got: str | None) -> None:
        super().__init__(
            "unsupported media type", [Detail("Content-Type", f"must be application/json, got {got or 'nothing'}")], 415
        )


class PayloadTooLarge(ApiError):
    """The body, or a batch, is bigger than the service accepts."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__("payload too large", [Detail(where, message)], 413)


class ValidationFailed(ApiError):
    """One or more fields are wrong; each detail names the field and why."""

    def __init__(self, details: list[Detail], error: str = "invalid encounter") -> None:
        super().__init__(error, details, 422)


class InvalidQuery(ApiError):
    """A query-string parameter has a value the route does not accept."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__("invalid query parameter", [Detail(name, message)], 400)


class NotReady(ApiError):
    """No model is loaded yet (no champion, or it failed to load)."""

    def __init__(self, message: str) -> None:
        super().__init__("model not ready", [Detail("model", message)], 503)


class NotFound(ApiError):
    """The named resource (a model-card file, a plot) does not exist for this model."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__("not found", [Detail(where, message)], 404)


class RouteNotFound(NotFound):
    """No route serves this path (the catch-all resource's answer; the path itself is not echoed or logged)."""

    def __init__(self) -> None:
        super().__init__("path", "no route serves this path; GET /openapi.json lists the routes")


class MethodNotAllowed(ApiError):
    """The path is a route, but not for this method; ``Allow`` lists the methods it has (RFC 9110, 15.5.6)."""

    def __init__(self, method: str, allowed: list[str]) -> None:
        self.allowed = sorted(allowed)
        message = f"{method} is not supported here; allowed: {', '.join(self.allowed)}"
        super().__init__("method not allowed", [Detail("method", message)], 405)

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}
