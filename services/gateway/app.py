"""The gateway: the public REST API for CMS integrations."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from redis import Redis
from redis.exceptions import RedisError

from services.common.errors import error_body
from services.common.http import install_common, request_id_of
from services.gateway import jobs, metrics, routes
from services.gateway.config import GatewaySettings
from services.gateway.store import ArticleStore

logger = logging.getLogger(__name__)

DESCRIPTION = """
Turns a topic into a finished, illustrated article for your CMS.

1. `POST /v1/articles` queues it and answers `202` with its id and links.
2. Follow it with `GET /v1/articles/{id}` (status + progress) or `GET /v1/articles/{id}/events`
   (Server-Sent Events), or give a `webhook.url` and wait for a signed `article.succeeded`.
3. The finished Article JSON carries Markdown and sanitized HTML, images (served by
   `GET /v1/images/{id}`), SEO fields and provenance.

Auth: `Authorization: Bearer <key>` when `ARTICLEFORGE_API_KEYS` is set. Errors always have the
shape `{"error": {"type", "message", "param", "request_id"}}`.
"""


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.keys():
            logger.warning(
                "gateway: ARTICLEFORGE_API_KEYS is empty, so auth is OFF; "
                "set keys before exposing this port"
            )
        settings.resolved_webhook_secret()  # create it now, not in the middle of a delivery
        yield
        app.state.store.redis.close()

    app = FastAPI(
        title="articleforge gateway", version="0.1.0", description=DESCRIPTION, lifespan=lifespan
    )
    app.state.settings = settings
    app.state.store = ArticleStore(
        Redis.from_url(settings.redis_url), settings.data_dir, settings.result_ttl_seconds
    )

    def is_ready(app: FastAPI) -> str | None:
        try:
            app.state.store.redis.ping()
        except RedisError as exc:
            return f"Redis at {settings.redis_url} is unreachable: {exc}"
        return None

    def refresh_metrics(app: FastAPI) -> None:
        try:
            metrics.refresh(app.state.store, (jobs.ARTICLES_QUEUE, jobs.IMAGES_QUEUE))
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
    app.include_router(routes.router)
    return app
