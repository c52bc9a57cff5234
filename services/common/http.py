"""What every FastAPI service shares: request ids, the error table, health routes, /metrics."""

from __future__ import annotations

import asyncio
import difflib
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, get_args

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.config import DEFAULT_MAX_BODY_BYTES
from services.common.errors import ArticleforgeError, TooLarge, error_body
from services.common.logging import request_id_var

logger = logging.getLogger(__name__)
T = TypeVar("T")

REQUEST_ID_HEADER = "X-Request-Id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ErrorDetail(BaseModel):
    type: str = Field(
        description="Machine-readable error class.", examples=["invalid_request_error"]
    )
    message: str = Field(
        description="What went wrong, naming the limit that was broken.",
        examples=["max_new_tokens: Input should be less than or equal to 4096; got 5000"],
    )
    param: str | None = Field(
        default=None, description="The request field at fault, if any.", examples=["max_new_tokens"]
    )
    request_id: str | None = Field(
        default=None, description="Echo of the X-Request-Id header.", examples=["3f2a9c"]
    )


class ErrorResponse(BaseModel):
    """The one error shape of every articleforge service."""

    error: ErrorDetail = Field(description="The error.")


# Pass as `responses=` on routes so that the OpenAPI page documents the error shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Bad input (the message names the limit).",
        404: "Not found: an unknown model, article or image.",
        413: "The request body is larger than ARTICLEFORGE_MAX_BODY_BYTES.",
        422: "A field broke its bounds.",
        429: "Queue full or rate-limited; see Retry-After.",
        503: "Not ready, or a dependency is down.",
    }.items()
}


class RequestIdMiddleware:
    """Takes X-Request-Id from the client (or makes one) and echoes it on every response.

    Plain ASGI rather than BaseHTTPMiddleware, so streaming responses pass through untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # A bug: answer 500 in the error shape (with the id) instead of a bare text page.
            logger.exception("request %s: unhandled error", request_id)
            if started:
                raise
            body = error_body("internal_error", "internal server error", None, request_id)
            await JSONResponse(body, status_code=500)(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class BodySizeLimitMiddleware:
    """Answers 413 (in the error shape) to a request body larger than ``max_bytes``.

    A declared Content-Length over the limit is refused before the app runs, so no byte of the
    body is read. A chunked body (or one that outgrows its Content-Length) is counted as it
    arrives and refused once it passes the limit, so it is never held whole. Plain ASGI, like
    RequestIdMiddleware, and inside it, so the 413 carries the request id.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, send, f"the request body is {declared} bytes")
            return

        received = 0
        refused = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not response_started:
                        await self._refuse(scope, send, f"the request body passed {received} bytes")
                    # The app sees a client that left: it stops reading and its answer is dropped.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if refused:
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)

    async def _refuse(self, scope: Scope, send: Send, what: str) -> None:
        error = TooLarge(
            f"{what}; the limit is {self.max_bytes} bytes (ARTICLEFORGE_MAX_BODY_BYTES)"
        )
        request_id = scope.get("state", {}).get("request_id") or request_id_var.get()
        body = error_body(error.type, error.message, None, request_id)
        # Connection: close, so the server does not wait for (or read) the rest of the body.
        response = JSONResponse(
            body, status_code=error.status_code, headers={"Connection": "close"}
        )
        await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length; count the body instead
    return None


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", None) or request_id_var.get())


def _error_response(
    request: Request,
    status: int,
    type_: str,
    message: str,
    param: str | None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = error_body(type_, message, param, request_id_of(request))
    return JSONResponse(body, status_code=status, headers=headers)


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def _query_names(dependant: Dependant) -> set[str]:
    """Query parameters a route declares, its dependencies' included."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def _known_names(request: Request, loc: tuple[Any, ...]) -> list[str]:
    """The names allowed beside ``loc[-1]``: the route's query parameters, or the fields of the
    body model (nested ones walked down ``loc``)."""
    route = request.scope.get("route")
    if route is None or not hasattr(route, "dependant"):
        return []
    if loc[:1] == ("query",):
        return sorted(_query_names(route.dependant))
    body = getattr(route, "body_field", None)
    model: Any = getattr(getattr(body, "field_info", None), "annotation", None)
    for name in loc[1:-1]:
        fields = getattr(model, "model_fields", {})
        if name not in fields:
            return []
        annotation = fields[name].annotation
        model = next(
            (a for a in (annotation, *get_args(annotation)) if hasattr(a, "model_fields")), None
        )
    return list(getattr(model, "model_fields", {}))


def refuse_unknown_query(request: Request) -> None:
    """A route dependency: a query parameter the route does not declare is a 422 naming it
    (a misspelt filter such as `?stauts=failed` would otherwise silently list everything)."""
    route = request.scope.get("route")
    if route is None or not hasattr(route, "dependant"):
        return
    known = _query_names(route.dependant)
    for name in request.query_params:
        if name not in known:
            raise RequestValidationError(
                [
                    {
                        "type": "extra_forbidden",
                        "loc": ("query", name),
                        "msg": "Extra inputs are not permitted",
                        "input": request.query_params[name],
                    }
                ]
            )


def _not_json(request: Request, first: dict[str, Any]) -> str | None:
    """The sentence for a body that is not a JSON object (bad JSON, or no JSON content type),
    where pydantic's would speak of dictionaries and decode errors."""
    loc, kind = tuple(first.get("loc", ())), first.get("type")
    if loc[:1] != ("body",):
        return None
    if kind == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "")
        return f"the body is not valid JSON ({reason})" if reason else "the body is not valid JSON"
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if len(loc) == 1 and kind in ("model_attributes_type", "dict_type") and "json" not in media:
        got = f"`{media}`" if media else "none"
        return (
            "send the body as JSON with the header `Content-Type: application/json` "
            f"(the request's Content-Type: {got})"
        )
    return None


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # A misspelt field fails twice, as unknown and as missing: the unknown one says more.
    first = min(exc.errors(), key=lambda e: e.get("type") != "extra_forbidden")
    param = _loc_to_param(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if (sentence := _not_json(request, first)) is not None:
        return _error_response(request, 422, "invalid_request_error", sentence, "body")
    if first.get("type") == "extra_forbidden":
        # An unknown field or query parameter: name it and, for a typo, the one it resembles.
        loc = tuple(first.get("loc", ()))
        message = f"unknown {'query parameter' if loc[:1] == ('query',) else 'field'}"
        close = difflib.get_close_matches(str(loc[-1]), _known_names(request, loc), n=1)
        if close:
            message += f"; did you mean `{close[0]}`?"
    elif "input" in first and first.get("type") != "missing" and "got " not in message:
        shown = repr(first["input"])
        if len(shown) > 80:
            shown = shown[:77] + "..."
        message = f"{message}; got {shown}"
    if param:
        message = f"{param}: {message}"
    return _error_response(request, 422, "invalid_request_error", message, param)


async def _domain_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ArticleforgeError)
    return _error_response(request, exc.status_code, exc.type, exc.message, exc.param, exc.headers)


async def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    types = {404: "not_found_error", 405: "method_not_allowed", 401: "authentication_error"}
    return _error_response(
        request,
        exc.status_code,
        types.get(exc.status_code, "http_error"),
        str(exc.detail),
        None,
        dict(exc.headers or {}),
    )


def install_common(
    app: FastAPI,
    *,
    is_ready: Callable[[FastAPI], str | None],
    before_metrics: Callable[[FastAPI], None] | None = None,
    max_body_bytes: int | None = None,
) -> None:
    """Adds the request-id and body-size middleware, the error table, /healthz, /readyz and
    /metrics.

    ``is_ready(app)`` returns None when ready, else the reason it is not (shown in the 503).
    ``before_metrics(app)`` refreshes gauges read from elsewhere; it runs in a worker thread.
    ``max_body_bytes`` defaults to ``app.state.settings.max_body_bytes`` (the service's
    ARTICLEFORGE_MAX_BODY_BYTES).
    """
    if max_body_bytes is None:
        settings = getattr(app.state, "settings", None)
        max_body_bytes = getattr(settings, "max_body_bytes", DEFAULT_MAX_BODY_BYTES)
    # The last one added runs first: request ids are set before the body limit answers.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(ArticleforgeError, _domain_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)

    health = APIRouter(tags=["health"])

    @health.get("/healthz", summary="Liveness: the process answers.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @health.get(
        "/readyz",
        summary="Readiness: the model is loaded and warmed up.",
        responses={503: {"model": ErrorResponse, "description": "Still loading, or failed."}},
    )
    async def readyz(request: Request) -> Any:
        reason = is_ready(request.app)
        if reason is not None:
            return _error_response(
                request, 503, "service_unavailable", reason, None, {"Retry-After": "5"}
            )
        return {"status": "ready"}

    @health.get("/metrics", summary="Prometheus metrics.", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        if before_metrics is not None:
            await run_in_threadpool(before_metrics, request.app)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(health)


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(
    request: Request, work: Awaitable[T], on_disconnect: Callable[[], None]
) -> T | None:
    """Awaits ``work``; if the client goes away first, calls ``on_disconnect`` and returns None.

    Starlette does not cancel a plain (non-streaming) handler when its client leaves, so a
    request that nobody will read would otherwise keep its slot until it finishes.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    on_disconnect()
    logger.info("request %s: client disconnected, work cancelled", request_id_of(request))
    return None


def sse_error(exc: Exception, request: Request, fallback: str) -> dict[str, str]:
    """An SSE `error` event in the error shape, for failures after the stream has started."""
    if isinstance(exc, ArticleforgeError):
        body = error_body(exc.type, exc.message, exc.param, request_id_of(request))
    else:
        logger.error("request %s: stream failed: %s", request_id_of(request), exc)
        body = error_body("internal_error", fallback, None, request_id_of(request))
    return {"event": "error", "data": json.dumps(body)}
