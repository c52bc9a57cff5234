"""Domain errors and the one JSON error shape every service answers with.

Shape: ``{"error": {"type", "message", "param", "request_id"}}``. Routes and engines raise the
small classes below; ``services.common.http`` maps them to responses in one table.
"""

from __future__ import annotations

from typing import Any


class ArticleforgeError(Exception):
    """Base class: carries the HTTP status, an error type and the offending field."""

    status_code = 500
    type = "internal_error"

    def __init__(
        self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class InvalidRequest(ArticleforgeError):
    status_code = 400
    type = "invalid_request_error"


class Unprocessable(InvalidRequest):
    """Well-formed but not acceptable (a schedule in the past): a 422, as pydantic's are."""

    status_code = 422


class Unauthorized(ArticleforgeError):
    status_code = 401
    type = "authentication_error"


class NotFound(ArticleforgeError):
    status_code = 404
    type = "not_found_error"


class Conflict(ArticleforgeError):
    status_code = 409
    type = "conflict_error"


class TooLarge(ArticleforgeError):
    status_code = 413
    type = "request_too_large"


class Overloaded(ArticleforgeError):
    """The queue is full or a rate limit was hit; the client should retry later."""

    status_code = 429
    type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: int = 1, param: str | None = None) -> None:
        super().__init__(message, param=param, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class NotReady(ArticleforgeError):
    """The model is still loading, or a dependency is down."""

    status_code = 503
    type = "service_unavailable"


def error_body(
    type_: str, message: str, param: str | None, request_id: str | None
) -> dict[str, Any]:
    return {"error": {"type": type_, "message": message, "param": param, "request_id": request_id}}
