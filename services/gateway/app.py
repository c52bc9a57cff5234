"""The gateway: the public REST API for CMS integrations."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from services.common.errors import error_body
from services.common.http import install_common, request_id_of
from services.common.logging import redact_url, redact_values
from services.gateway import (
    editorial_routes,
    event_routes,
    export_routes,
    image_routes,
    metrics,
    openapi,
    routes,
    signing,
)
from services.gateway.batches import routes as batch_routes
from services.gateway.batches.schemas import BatchOptions, BatchRequest
from services.gateway.config import GatewaySettings
from services.gateway.job_base import ARTICLES_QUEUE, IMAGES_QUEUE
from services.gateway.publish import routes as publish_routes
from services.gateway.storage import StorageError
from services.gateway.store import ArticleStore

logger = logging.getLogger(__name__)

DESCRIPTION = """
Turns a topic into a finished, illustrated article for your CMS.

1. `POST /v1/articles` queues it and answers `202` with its id and links.
2. Follow it with `GET /v1/articles/{id}` (status + progress) or `GET /v1/articles/{id}/events`
   (Server-Sent Events), or give a `webhook.url` and wait for a signed `article.succeeded`.
3. The finished Article JSON carries Markdown and sanitized HTML, images (served by
   `GET /v1/images/{id}`; the URLs in the article are signed, so a page can embed them without
   a key), SEO fields and provenance.

Auth: `Authorization: Bearer <key>` when `ARTICLEFORGE_API_KEYS` is set. Errors always have the
shape `{"error": {"type", "message", "param", "request_id"}}`.
"""


def connect_redis(settings: GatewaySettings) -> Redis:
    """The gateway's Redis client: every call bounded, so a dead or frozen Redis is a quick 503.

    redis-py's default retries each command 10 times with backoff, timeouts included, which
    turns one frozen Redis into a minute-long request. Here a command gets one retry, and only
    for connection errors: it replaces a pooled connection that died while Redis restarted.
    """
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout_seconds,
        socket_connect_timeout=settings.redis_connect_timeout_seconds,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    where = redact_url(settings.redis_url)

    def check_redis() -> str | None:
        try:
            app.state.store.redis.ping()
        except RedisError as exc:
            return f"Redis at {where} is unreachable: {exc}"
        return None

    async def watch_redis() -> None:
        """Pings Redis off the event loop, so /readyz answers at once even if Redis is frozen."""
        while True:
            await anyio.sleep(settings.redis_health_interval_seconds)
            problem = await anyio.to_thread.run_sync(check_redis)
            if bool(problem) != bool(app.state.redis_problem):
                if problem:
                    logger.warning("gateway: %s", problem)
                else:
                    logger.info("gateway: Redis at %s answers again", where)
            app.state.redis_problem = problem

    async def watch_storage() -> None:
        """Asks the store (HEAD bucket) off the event loop, as ``watch_redis`` pings Redis."""
        while True:
            await anyio.sleep(settings.storage_health_interval_seconds)
            problem = await anyio.to_thread.run_sync(app.state.store.blobs.check)
            if bool(problem) != bool(app.state.storage_problem):
                if problem:
                    logger.warning("gateway: %s", problem)
                else:
                    logger.info("gateway: the storage answers again")
            app.state.storage_problem = problem

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.keys():
            logger.warning(
                "gateway: ARTICLEFORGE_API_KEYS is empty, so auth is OFF; "
                "set keys before exposing this port"
            )
        # Created now, not in the middle of a delivery or an image request.
        try:
            webhook_secret = settings.resolved_webhook_secret()
            app.state.signing_key = signing.signing_key(settings)
        except StorageError as exc:  # the one sentence, not botocore's chain of tracebacks
            logger.error("gateway: cannot start: %s", exc.message)
            raise RuntimeError(exc.message) from None
        redact_values(
            [
                *settings.keys(),
                webhook_secret,
                app.state.signing_key.decode(),
                *settings.publish_secrets(),
            ]
        )
        app.state.redis_problem = await anyio.to_thread.run_sync(check_redis)
        if app.state.redis_problem:
            logger.warning("gateway: %s", app.state.redis_problem)
        app.state.storage_problem = await anyio.to_thread.run_sync(app.state.store.blobs.check)
        if app.state.storage_problem:
            logger.warning("gateway: %s", app.state.storage_problem)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(watch_redis)
            tasks.start_soon(watch_storage)
            yield
            tasks.cancel_scope.cancel()
        app.state.store.redis.close()

    app = FastAPI(
        title="articleforge gateway", version="0.1.0", description=DESCRIPTION, lifespan=lifespan
    )
    app.state.settings = settings
    app.state.store = ArticleStore(
        connect_redis(settings), settings.storage(), settings.result_ttl_seconds
    )
    app.state.redis_problem = None
    app.state.storage_problem = None

    def is_ready(app: FastAPI) -> str | None:
        # Kept fresh by watch_redis and watch_storage.
        problems = [app.state.redis_problem, app.state.storage_problem]
        return "; ".join(p for p in problems if p) or None

    def refresh_metrics(app: FastAPI) -> None:
        try:
            metrics.refresh(app.state.store, (ARTICLES_QUEUE, IMAGES_QUEUE))
        except RedisError as exc:  # /metrics still answers; the gauges keep their last values
            logger.warning("gateway: metrics not refreshed, Redis failed: %s", exc)

    install_common(app, is_ready=is_ready, before_metrics=refresh_metrics)

    async def redis_down(request: Request, exc: Exception) -> JSONResponse:
        logger.error("request %s: Redis error: %s", request_id_of(request), exc)
        body = error_body(
            "service_unavailable",
            f"the article store (Redis) failed: {exc}",
            None,
            request_id_of(request),
        )
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    app.add_exception_handler(RedisError, redis_down)
    for router in (
        routes.router,
        event_routes.router,
        image_routes.router,
        editorial_routes.router,
        export_routes.router,
        publish_routes.router,
        batch_routes.router,
    ):
        openapi.document_errors(router, routes.RESPONSES)
        app.include_router(router)
    openapi.add_schemas(app, [BatchRequest, BatchOptions])
    return app
