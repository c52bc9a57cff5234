"""HTTP clients for the text and image services, with timeouts and retries (tenacity).

Connection errors, timeouts, 429 and 5xx are retried with exponential backoff; other 4xx are the
caller's fault and fail at once with the service's own message. A service that stays down ends
in ``ServiceUnavailable``, which fails the article with a clear error instead of hanging.

A service may have several replicas (comma-separated ARTICLEFORGE_TEXT_URL / _IMAGE_URL): see
``ServiceClient``. The OpenAI-API backends that use these clients are in ``openai_backends``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

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


# Replica state is per process (a worker's work horse runs one stage, whose calls run side by
# side: the sections of an article, its image prompts), keyed by URL, so that every client built
# for the same replica shares it.
_in_flight: dict[str, int] = {}
_last_pick: dict[str, int] = {}
_ready: dict[str, tuple[bool, float]] = {}  # URL -> (ready, when it was learned)
_picks = itertools.count(1)
_probes: dict[str, asyncio.Future[bool]] = {}  # URL -> the /readyz probe under way


def ready_probe_url(base_url: str) -> str:
    """The replica's /readyz, at the root of its host (an OpenAI base URL ends in /v1)."""
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}/readyz"


def _forget_probe(url: str, done: asyncio.Future[bool]) -> None:
    if _probes.get(url) is done:
        del _probes[url]


class ServiceClient:
    """Calls one service, which may have several replicas (``base_urls``).

    With one URL a call goes there, with ``attempts`` tries and exponential backoff. With
    several, each try goes to the ready replica with the fewest calls in flight in this
    process (ties to the one picked longest ago, then at random); a replica whose /readyz
    fails is skipped for ``ready_cache`` seconds, and so is one whose call just failed, while
    the call moves on at once to another replica. Only when every replica has failed does the
    try count as one attempt and the backoff wait.
    """

    def __init__(
        self,
        name: str,
        base_urls: str | list[str],
        timeout: float,
        attempts: int,
        backoff: float,
        *,
        api_key: str | None = None,
        ready_timeout: float = 2.0,
        ready_cache: float = 2.0,
    ) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError(f"the {name} service has no URL")
        self.name = name
        self.base_urls = [url.rstrip("/") for url in urls]
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.ready_timeout = ready_timeout
        self.ready_cache = ready_cache
        self.last_url: str | None = None  # the replica that answered the last call

    @property
    def base_url(self) -> str:
        return self.base_urls[0]

    def _where(self) -> str:
        if len(self.base_urls) == 1:
            return f"the {self.name} service at {self.base_url}"
        return f"the {self.name} service (replicas {', '.join(self.base_urls)})"

    async def _is_ready(self, url: str, fresh: bool) -> bool:
        known = _ready.get(url)
        if known is not None and not fresh and time.monotonic() - known[1] < self.ready_cache:
            return known[0]
        # Calls that start together (the sections) share one probe per replica.
        pending = _probes.get(url)
        if pending is None or pending.get_loop() is not asyncio.get_running_loop():
            pending = _probes[url] = asyncio.ensure_future(self._probe(url, known))
            pending.add_done_callback(lambda done: _forget_probe(url, done))
        return await asyncio.shield(pending)

    async def _probe(self, url: str, known: tuple[bool, float] | None) -> bool:
        try:
            async with httpx.AsyncClient(timeout=self.ready_timeout) as client:
                response = await client.get(ready_probe_url(url), headers=self.headers)
            # A server without a /readyz (vLLM, OpenAI) answers 404: it is up, so it counts.
            ready = response.status_code < 500
        except httpx.HTTPError:
            ready = False
        if not ready and (known is None or known[0]):
            logger.warning("%s service: replica %s is not ready; skipping it", self.name, url)
        elif ready and known is not None and not known[0]:
            logger.info("%s service: replica %s is ready again", self.name, url)
        _ready[url] = (ready, time.monotonic())
        return ready

    async def _pick(self, tried: set[str], fresh: bool) -> str | None:
        """The replica for the next try, or None when every untried one is down."""
        untried = [url for url in self.base_urls if url not in tried]
        if len(self.base_urls) == 1:
            return untried[0] if untried else None  # one URL: no probing, as before replicas
        ready = await asyncio.gather(*(self._is_ready(url, fresh) for url in untried))
        candidates = [url for url, ok in zip(untried, ready, strict=True) if ok]
        if not candidates:
            return None
        # Ties go to the replica picked longest ago, and at random among those never picked
        # here: RQ runs each job in a fresh work horse, so that a job's first call (the only
        # one of an image job) does not always land on the first replica.
        url = min(
            candidates,
            key=lambda u: (_in_flight.get(u, 0), _last_pick.get(u, 0), random.random()),
        )
        _last_pick[url] = next(_picks)
        return url

    async def _one_round(self, call: Callable[[httpx.AsyncClient], Any], fresh: bool) -> Any:
        """Tries each ready replica at most once, best first; raises the last failure."""
        tried: set[str] = set()
        failure: BaseException | None = None
        while (url := await self._pick(tried, fresh)) is not None:
            tried.add(url)
            fresh = False  # the first pick asked every replica; the rest use those answers
            _in_flight[url] = _in_flight.get(url, 0) + 1
            try:
                async with httpx.AsyncClient(
                    base_url=url, timeout=self.timeout, headers=self.headers
                ) as client:
                    result = await call(client)
                self.last_url = url
                return result
            except (_Retryable, httpx.TransportError) as exc:
                failure = exc
                if len(self.base_urls) > 1:
                    _ready[url] = (False, time.monotonic())
                    logger.warning(
                        "%s service: replica %s failed (%s: %s); trying another replica",
                        self.name,
                        url,
                        type(exc).__name__,
                        exc,
                    )
            finally:
                _in_flight[url] -= 1
        if failure is None:
            raise _Retryable("no replica is ready (each /readyz failed)")
        raise failure

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
                    # After a backoff, ask every replica again rather than trust the cache.
                    return await self._one_round(call, fresh=attempt.retry_state.attempt_number > 1)
        except (_Retryable, httpx.TransportError) as exc:
            raise ServiceUnavailable(
                f"{self._where()} did not answer after {self.attempts} attempts: "
                f"{type(exc).__name__}: {exc}"
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

    async def post_json(self, path: str, body: dict[str, Any]) -> Any:
        async def call(client: httpx.AsyncClient) -> Any:
            response = await client.post(path, json=body)
            self._check(response)
            return response.json()

        return await self._with_retries(call)

    async def stream_events(
        self, path: str, body: dict[str, Any], on_event: Callable[[str, dict[str, Any]], None]
    ) -> dict[str, Any]:
        """POSTs with `stream: true`; feeds each SSE event to ``on_event``; returns `result`.
        Each try begins with an `attempt` event (no data)."""

        async def call(client: httpx.AsyncClient) -> dict[str, Any]:
            on_event("attempt", {})  # a retried call starts over: what came before is void
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

    async def stream_data(
        self, path: str, body: dict[str, Any], start: Callable[[], Callable[[dict[str, Any]], None]]
    ) -> None:
        """POSTs ``body`` and feeds each SSE `data:` JSON to a sink until `data: [DONE]` (the
        OpenAI stream). ``start()`` makes the sink, once per try, so a retried call starts over."""

        async def call(client: httpx.AsyncClient) -> None:
            sink = start()
            async with aconnect_sse(client, "POST", path, json=body) as source:
                if source.response.status_code >= 400:
                    await source.response.aread()
                    self._check(source.response)
                async for event in source.aiter_sse():
                    if event.data.strip() == "[DONE]":
                        return
                    if not event.data:
                        continue
                    data = json.loads(event.data)
                    if event.event == "error" or "error" in data:
                        error = data.get("error")
                        message = error.get("message") if isinstance(error, dict) else error
                        raise ServiceRejected(f"the {self.name} service failed: {message}")
                    sink(data)
            raise _Retryable(f"the {self.name} stream ended without [DONE]")

        await self._with_retries(call)


class HttpText:
    """TextBackend over HTTP: /v1/generate, streamed so tokens show up in progress."""

    def __init__(self, client: ServiceClient) -> None:
        self.client = client
        self.answered_by: str | None = None  # served model (or adapter) of the last reply

    async def generate(
        self,
        body: dict[str, Any],
        on_delta: Callable[[str], None] | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        so_far = ""

        def on_event(kind: str, data: dict[str, Any]) -> None:
            nonlocal so_far
            if kind == "attempt":
                so_far = ""
            elif kind == "token":
                delta = data.get("text", "")
                if on_delta is not None:
                    on_delta(delta)
                if on_text is not None:
                    so_far += delta
                    on_text(so_far)

        result = await self.client.stream_events("/v1/generate", body, on_event)
        self.answered_by = result.get("model")
        return result

    async def models(self) -> dict[str, Any]:
        data: dict[str, Any] = await self.client.get_json("/v1/models")
        return data


class HttpImage:
    """ImageBackend over HTTP: /v1/images with `stream: true`, reporting each step and its
    preview (when the step has one)."""

    step_progress = True

    def __init__(self, client: ServiceClient) -> None:
        self.client = client

    async def generate(self, body: dict[str, Any], on_step: OnStep | None = None) -> dict[str, Any]:
        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "progress" and on_step is not None:
                on_step(int(data["step"]), int(data["steps"]), data.get("preview_b64"))

        return await self.client.stream_events("/v1/images", body, on_event)
