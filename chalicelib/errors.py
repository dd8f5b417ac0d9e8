"""API errors carry their status code; domain code raises them and one place turns them into responses."""

from __future__ import annotations

from dataclasses import dataclass, field


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


class MalformedJson(ApiError):
    """The body is not JSON."""

    def __init__(self, message: str) -> None:
        super().__init__("malformed JSON", [Detail("body", message)], 400)


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
