"""Typed HTTP clients for the studio: the gateway's public API and the two services' own.

Every failure becomes one :class:`ApiError` whose message a person can act on: the field a 422
names, the wait a 429 asks for, the URL of a service that is down. Pages show ``str(error)``
and never a stack trace.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

from services.ui.config import UISettings


class ApiError(Exception):
    """A failed call, described for the person at the screen."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type_: str | None = None,
        param: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type_
        self.param = param
        self.retry_after = retry_after


def describe(name: str, url: str, response: httpx.Response) -> ApiError:
    """The readable form of an error reply in the shared error shape (or of one that is not)."""
    status = response.status_code
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {"message": str(error)}
    message = str(error.get("message") or response.text[:300] or response.reason_phrase)
    param = error.get("param")
    retry_after = response.headers.get("Retry-After")
    if status == 413:
        text = f"The {name} refused the request as too large (413): {message}"
    elif status in (400, 422):
        text = f"check `{param}`: {message}" if param else message
        text = f"The {name} refused the request ({status}): {text}"
    elif status == 401:
        text = (
            f"The {name} refused the API key (set ARTICLEFORGE_UI_API_KEY to a key it "
            f"accepts): {message}"
        )
    elif status == 429:
        wait = f"retry in {retry_after} s" if retry_after else "retry later"
        text = f"The {name} is busy (429), {wait}: {message}"
    elif status == 503:
        wait = f" (retry in {retry_after} s)" if retry_after else ""
        text = f"The {name} at {url} is not ready{wait}: {message}"
    elif status >= 500:
        text = f"The {name} at {url} failed ({status}): {message}"
    else:
        text = f"{message} ({status})"
    return ApiError(
        text,
        status=status,
        type_=error.get("type"),
        param=param if isinstance(param, str) else None,
        retry_after=retry_after,
    )


def json_bytes(body: Any) -> bytes:
    """A JSON request body exactly as it is sent, so that its size can be checked first."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


JSON_HEADERS = {"Content-Type": "application/json"}


class ApiClient:
    """One HTTP API: its base URL, its optional Bearer key, its readable errors."""

    def __init__(
        self, name: str, base_url: str, *, api_key: str | None = None, timeout: float = 30.0
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _client(self, timeout: float | None) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=timeout or self.timeout
        )

    def _transport_error(self, exc: httpx.TransportError, timeout: float | None) -> ApiError:
        if isinstance(exc, httpx.TimeoutException):
            seconds = timeout or self.timeout
            return ApiError(f"The {self.name} at {self.base_url} did not answer within {seconds} s")
        return ApiError(f"The {self.name} at {self.base_url} is not reachable ({exc})")

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        try:
            with self._client(timeout) as client:
                if json_body is None:
                    response = client.request(method, path, params=params)
                else:
                    content = json_bytes(json_body)
                    response = client.request(
                        method, path, content=content, params=params, headers=JSON_HEADERS
                    )
        except httpx.TransportError as exc:
            raise self._transport_error(exc, timeout) from None
        if response.status_code >= 400:
            raise describe(self.name, self.base_url, response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        body = self.request(method, path, **kwargs).json()
        if not isinstance(body, dict):
            raise ApiError(f"The {self.name} answered {path} with something other than an object")
        return body

    def events(
        self, path: str, json_body: Any, *, timeout: float | None = None
    ) -> Iterator[tuple[str, str]]:
        """POST and read the Server-Sent Events reply as (event, data) pairs."""
        try:
            with (
                self._client(timeout) as client,
                connect_sse(client, "POST", path, json=json_body) as source,
            ):
                if source.response.status_code >= 400:
                    source.response.read()
                    raise describe(self.name, self.base_url, source.response)
                for event in source.iter_sse():
                    yield event.event, event.data
        except httpx.TransportError as exc:
            raise self._transport_error(exc, timeout) from None
        except SSEError as exc:
            raise ApiError(f"The {self.name} did not answer with an event stream ({exc})") from None


def stream_error(name: str, data: str) -> ApiError:
    """An `error` event (or an OpenAI chunk holding `error`) that ends a stream."""
    try:
        error = json.loads(data).get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    message = error.get("message") if isinstance(error, dict) else None
    return ApiError(f"The {name} stopped: {message or data[:300]}")


class GatewayClient(ApiClient):
    """The gateway's public API (docs/api.md)."""

    def __init__(self, settings: UISettings) -> None:
        super().__init__(
            "gateway",
            settings.ui_gateway_url,
            api_key=settings.ui_api_key,
            timeout=settings.ui_timeout_seconds,
        )

    def create_article(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.json("POST", "/v1/articles", json_body=body)

    def article(self, article_id: str, revision: int | None = None) -> dict[str, Any]:
        params = {"revision": revision} if revision is not None else None
        return self.json("GET", f"/v1/articles/{article_id}", params=params)

    def articles(
        self, *, status: str | None = None, cursor: str | None = None, limit: int = 20
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        return self.json("GET", "/v1/articles", params=params)

    def cancel(self, article_id: str) -> dict[str, Any]:
        return self.json("DELETE", f"/v1/articles/{article_id}")

    def edit_outline(self, article_id: str, title: str, headings: list[str]) -> dict[str, Any]:
        body = {"title": title, "headings": headings}
        return self.json("PUT", f"/v1/articles/{article_id}/outline", json_body=body)

    def approve(self, article_id: str) -> dict[str, Any]:
        return self.json("POST", f"/v1/articles/{article_id}/approve")

    def regenerate(
        self, article_id: str, kind: str, index: int, body: dict[str, Any]
    ) -> dict[str, Any]:
        """`kind` is `sections` or `images`; answers the 202 with the revision it makes."""
        path = f"/v1/articles/{article_id}/{kind}/{index}/regenerate"
        return self.json("POST", path, json_body=body)

    def publish(self, article_id: str, target: str, status: str) -> dict[str, Any]:
        """Queues publishing into `target` (`wordpress`, `ghost`) as a `draft` or `publish`
        post; a target the gateway has no settings for is its 400, naming the configured ones."""
        body = {"target": target, "status": status}
        return self.json("POST", f"/v1/articles/{article_id}/publish", json_body=body)

    def export(self, article_id: str, name: str, revision: int | None = None) -> bytes:
        """`export.md` or `export.html`."""
        params = {"revision": revision} if revision is not None else None
        return self.request("GET", f"/v1/articles/{article_id}/{name}", params=params).content

    def image(self, image_id: str) -> bytes:
        """The PNG, fetched with the key: the browser may neither reach the gateway nor hold
        a key, so the studio's server fetches and serves it."""
        return self.request("GET", f"/v1/images/{image_id}").content

    def create_batch(
        self,
        csv: bytes,
        filename: str,
        options: dict[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """POST /v1/batches as a form: the CSV as its `file` part, `BatchOptions` as JSON in
        its `options` part; answers the 202's batch status."""
        files = {"file": (filename, csv, "text/csv")}
        data = {"options": json.dumps(options, ensure_ascii=False)}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        try:
            with self._client(None) as client:
                response = client.post("/v1/batches", files=files, data=data, headers=headers)
        except httpx.TransportError as exc:
            raise self._transport_error(exc, None) from None
        if response.status_code >= 400:
            raise describe(self.name, self.base_url, response)
        return dict(response.json())

    def batch(self, batch_id: str, *, limit: int = 50, cursor: int = 0) -> dict[str, Any]:
        """The batch's counts and the page of its items from index `cursor` on."""
        params = {"limit": limit, "cursor": cursor}
        return self.json("GET", f"/v1/batches/{batch_id}", params=params)

    def batches(self, *, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
        """The key's batches, newest first, without their items."""
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        return self.json("GET", "/v1/batches", params=params)

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return self.json("DELETE", f"/v1/batches/{batch_id}")

    def retry_batch(self, batch_id: str) -> dict[str, Any]:
        """Runs the failed items again (a 409 when none failed, or the batch was cancelled)."""
        return self.json("POST", f"/v1/batches/{batch_id}/retry")


class TextClient(ApiClient):
    """The text service's OpenAI-compatible API."""

    def __init__(self, settings: UISettings) -> None:
        super().__init__(
            "text service", settings.ui_text_url, timeout=settings.ui_generation_timeout_seconds
        )

    def models(self) -> list[str]:
        return [str(card["id"]) for card in self.json("GET", "/v1/models").get("data", [])]

    def chat(self, body: dict[str, Any]) -> Iterator[str | dict[str, Any]]:
        """Streams `/v1/chat/completions`: text deltas, then the usage object if sent."""
        for event, data in self.events("/v1/chat/completions", {**body, "stream": True}):
            if data.strip() == "[DONE]":
                return
            chunk = json.loads(data) if data else {}
            if event == "error" or "error" in chunk:
                raise stream_error(self.name, data)
            for choice in chunk.get("choices", []):
                delta = choice.get("delta", {}).get("content")
                if delta:
                    yield str(delta)
            if chunk.get("usage"):
                yield dict(chunk["usage"])


class ImageClient(ApiClient):
    """The image service: `/v1/images` with `stream: true` (step progress and previews; the
    OpenAI-compatible `/v1/images/generations` neither streams nor takes steps or guidance)."""

    def __init__(self, settings: UISettings) -> None:
        super().__init__(
            "image service", settings.ui_image_url, timeout=settings.ui_generation_timeout_seconds
        )

    def draw(self, body: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        """(`progress`, {step, steps, preview_b64?}) per step, then (`result`, the reply)."""
        for event, data in self.events("/v1/images", {**body, "stream": True}):
            if event == "error":
                raise stream_error(self.name, data)
            if event in ("progress", "result"):
                yield event, json.loads(data)
