"""HTTP clients for the text and image services, with timeouts and retries (tenacity).

Connection errors, timeouts, 429 and 5xx are retried with exponential backoff; other 4xx are the
caller's fault and fail at once with the service's own message. A service that stays down ends
in ``ServiceUnavailable``, which fails the article with a clear error instead of hanging.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
from httpx_sse import aconnect_sse
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from services.common.errors import ArticleforgeError
from services.gateway.pipeline import OnStep

logger = logging.getLogger(__name__)


class ServiceUnavailable(ArticleforgeError):
    status_code = 503
    type = "service_unavailable"


class ServiceRejected(ArticleforgeError):
    status_code = 502
    type = "service_error"


class _Retryable(Exception):
    """A response worth retrying (429, 5xx)."""


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, _Retryable | httpx.TransportError)


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:300]


class ServiceClient:
    def __init__(
        self, name: str, base_url: str, timeout: float, attempts: int, backoff: float
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff

    async def _with_retries(self, call: Callable[[httpx.AsyncClient], Any]) -> Any:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff, max=30),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    async with httpx.AsyncClient(
                        base_url=self.base_url, timeout=self.timeout
                    ) as client:
                        return await call(client)
        except (_Retryable, httpx.TransportError) as exc:
            raise ServiceUnavailable(
                f"the {self.name} service at {self.base_url} did not answer after "
                f"{self.attempts} attempts: {type(exc).__name__}: {exc}"
            ) from exc

    def _check(self, response: httpx.Response) -> None:
        if response.status_code == 429 or response.status_code >= 500:
            logger.warning(
                "%s service: %s %s", self.name, response.status_code, _error_message(response)
            )
            raise _Retryable(f"{response.status_code}: {_error_message(response)}")
        if response.status_code >= 400:
            raise ServiceRejected(
                f"the {self.name} service refused the request ({response.status_code}): "
                f"{_error_message(response)}"
            )

    async def get_json(self, path: str) -> Any:
        async def call(client: httpx.AsyncClient) -> Any:
            response = await client.get(path)
            self._check(response)
            return response.json()

        return await self._with_retries(call)

    async def stream_events(
        self, path: str, body: dict[str, Any], on_event: Callable[[str, dict[str, Any]], None]
    ) -> dict[str, Any]:
        """POSTs with `stream: true`; feeds each SSE event to ``on_event``; returns `result`."""

        async def call(client: httpx.AsyncClient) -> dict[str, Any]:
            async with aconnect_sse(client, "POST", path, json={**body, "stream": True}) as source:
                if source.response.status_code >= 400:
                    await source.response.aread()  # an error reply is JSON, not SSE
                    self._check(source.response)
                async for event in source.aiter_sse():
                    if not event.data:
                        continue
                    data = json.loads(event.data)
                    if event.event == "result":
                        return dict(data)
                    if event.event == "error":
                        message = data.get("error", {}).get("message", "unknown error")
                        raise ServiceRejected(f"the {self.name} service failed: {message}")
                    on_event(event.event, data)
            raise _Retryable(f"the {self.name} stream ended without a result")

        result: dict[str, Any] = await self._with_retries(call)
        return result


class HttpText:
    """TextBackend over HTTP: /v1/generate, streamed so tokens show up in progress."""

    def __init__(self, client: ServiceClient) -> None:
        self.client = client
        self.answered_by: str | None = None  # served model (or adapter) of the last reply

    async def generate(
        self, body: dict[str, Any], on_delta: Callable[[str], None] | None = None
    ) -> dict[str, Any]:
        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "token" and on_delta is not None:
                on_delta(data.get("text", ""))

        result = await self.client.stream_events("/v1/generate", body, on_event)
        self.answered_by = result.get("model")
        return result

    async def models(self) -> dict[str, Any]:
        data: dict[str, Any] = await self.client.get_json("/v1/models")
        return data


class HttpImage:
    """ImageBackend over HTTP: /v1/images with `stream: true`, reporting each step and its
    preview (when the step has one)."""

    def __init__(self, client: ServiceClient) -> None:
        self.client = client

    async def generate(self, body: dict[str, Any], on_step: OnStep | None = None) -> dict[str, Any]:
        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "progress" and on_step is not None:
                on_step(int(data["step"]), int(data["steps"]), data.get("preview_b64"))

        return await self.client.stream_events("/v1/images", body, on_event)
