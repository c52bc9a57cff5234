"""The public article API: create, follow, cancel, list, and serve images."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse

from services.common.errors import Conflict, NotFound, Overloaded, error_body
from services.common.http import ERROR_RESPONSES, request_id_of
from services.gateway import jobs, metrics
from services.gateway.auth import KeyDep, RateLimitedKeyDep, authorize_image, may_read
from services.gateway.deps import SettingsDep, StoreDep
from services.gateway.pipeline import estimate_tokens
from services.gateway.schemas import (
    TERMINAL,
    Accepted,
    ArticleList,
    ArticleRequest,
    ArticleStatus,
)
from services.gateway.store import ARTICLE_ID, IMAGE_ID, ArticleStore
from services.gateway.views import status_view
from services.gateway.webhooks import check_url

logger = logging.getLogger(__name__)

router = APIRouter(
    prefix="/v1",
    tags=["articles"],
    responses={
        **ERROR_RESPONSES,
        401: ERROR_RESPONSES[400] | {"description": "Missing or invalid API key."},
    },
)
ArticleId = Annotated[
    str, Path(description="Article id.", examples=["art_3f2a9c1d0e4b5a6978a1b2c3"])
]


def _accepted(article_id: str, status: str, replayed: bool = False) -> JSONResponse:
    links = {"self": f"/v1/articles/{article_id}", "events": f"/v1/articles/{article_id}/events"}
    body = Accepted.model_validate({"id": article_id, "status": status, "links": links})
    headers = {"Location": links["self"]}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body.model_dump(), status_code=202, headers=headers)


@router.post(
    "/articles",
    status_code=202,
    response_model=Accepted,
    summary="Queue an article; follow it at `links.self` or `links.events`.",
)
def create_article(
    body: ArticleRequest,
    request: Request,
    scope: RateLimitedKeyDep,
    settings: SettingsDep,
    store: StoreDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=255,
            description="Same key + same body returns the same article; "
            "same key + another body is a 409.",
        ),
    ] = None,
) -> JSONResponse:
    if body.webhook is not None:
        check_url(str(body.webhook.url), settings.webhook_allow_private)
    article_id = "art_" + secrets.token_hex(12)
    if idempotency_key is not None:
        fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
        earlier = store.claim_idempotency(scope, idempotency_key, fingerprint, article_id)
        if earlier is not None:
            if earlier["fingerprint"] != fingerprint:
                raise Conflict(
                    "this Idempotency-Key was already used with a different body",
                    param="Idempotency-Key",
                )
            return _accepted(
                earlier["article_id"],
                store.status(earlier["article_id"]) or "queued",
                replayed=True,
            )
    if store.active_count() >= settings.max_active_articles:
        metrics.REJECTED.labels("queue_full").inc()
        raise Overloaded(
            f"{settings.max_active_articles} articles are already queued or in progress "
            "(ARTICLEFORGE_MAX_ACTIVE_ARTICLES); retry later",
            retry_after=10,
        )
    store.create(
        article_id,
        {
            "request": body.model_dump(mode="json"),
            "request_id": request_id_of(request),
            "key": scope,
            "text_seed": body.text.seed if body.text.seed is not None else secrets.randbelow(2**31),
            "image_seed": body.images.seed
            if body.images.seed is not None
            else secrets.randbelow(2**31),
            "images_total": body.images.count,
            "expected_tokens": estimate_tokens(body),
        },
    )
    jobs.enqueue_article(store, settings, article_id, body, request_id_of(request))
    metrics.ARTICLES_CREATED.inc()
    return _accepted(article_id, "queued")


def _owned(store: ArticleStore, article_id: str, scope: str) -> dict[str, str] | None:
    """The record, if it exists and this key may see it (ids of other keys look absent)."""
    if not ARTICLE_ID.match(article_id):
        return None
    fields = store.fields(article_id)
    if fields and not may_read(json.loads(fields.get("key", "null")), scope):
        return None
    return fields


def _from_disk(store: ArticleStore, article_id: str, scope: str) -> ArticleStatus | None:
    found = store.load_article_with_owner(article_id)
    if found is None or not may_read(found[1], scope):
        return None
    return found[0]


def _load(
    store: ArticleStore, article_id: str, scope: str, disk_first: bool = False
) -> ArticleStatus:
    """Redis first (it is the truth while an article runs), then the disk copy.

    ``disk_first`` is for while the background ping finds Redis down: a finished article is
    then served without waiting for a Redis timeout first.
    """
    if not ARTICLE_ID.match(article_id):
        raise NotFound(f"no article {article_id!r}", param="id")
    if disk_first and (on_disk := _from_disk(store, article_id, scope)) is not None:
        return on_disk
    try:
        fields = _owned(store, article_id, scope)
    except RedisError:
        # Redis is down or frozen: a finished article is still served from disk; anything
        # else is the 503 of the RedisError handler.
        on_disk = _from_disk(store, article_id, scope)
        if on_disk is None:
            raise
        return on_disk
    if fields:
        return status_view(article_id, fields)
    if fields is not None:  # not in Redis (expired, or Redis lost it): the disk copy
        on_disk = _from_disk(store, article_id, scope)
        if on_disk is not None:
            return on_disk
    raise NotFound(f"no article {article_id!r}", param="id")


@router.get(
    "/articles/{article_id}",
    response_model=ArticleStatus,
    summary="Status, progress, and the article once it succeeded.",
)
def get_article(
    article_id: ArticleId, request: Request, scope: KeyDep, store: StoreDep
) -> ArticleStatus:
    return _load(store, article_id, scope, _redis_down(request))


def _redis_down(request: Request) -> bool:
    return request.app.state.redis_problem is not None


@router.delete(
    "/articles/{article_id}",
    response_model=ArticleStatus,
    summary="Cancel: queued jobs are dropped and running ones stopped.",
)
def cancel_article(article_id: ArticleId, scope: KeyDep, store: StoreDep) -> ArticleStatus:
    current = _load(store, article_id, scope)
    if current.status in TERMINAL:
        raise Conflict(
            f"article {article_id} already {current.status}; nothing to cancel", param="id"
        )
    store.transition(article_id, "cancelled")
    jobs.stop_jobs(store.redis, store.get(article_id, "jobs") or [])
    return _load(store, article_id, scope)


@router.get("/articles", response_model=ArticleList, summary="Articles, newest first.")
def list_articles(
    scope: KeyDep,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[
        float | None,
        Query(allow_inf_nan=False, description="`next_cursor` of the previous page."),
    ] = None,
) -> ArticleList:
    ids, next_cursor = store.page(limit, cursor)
    data = []
    for article_id in ids:
        fields = _owned(store, article_id, scope)
        if fields:
            data.append(status_view(article_id, fields, include_article=False))
    return ArticleList(data=data, next_cursor=None if next_cursor is None else str(next_cursor))


@router.get(
    "/articles/{article_id}/events",
    summary="Progress as Server-Sent Events.",
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`progress` events, then one event named after the final status "
            "(`succeeded`, `failed` or `cancelled`) carrying the full status.",
        }
    },
)
async def article_events(
    article_id: ArticleId, request: Request, scope: KeyDep, store: StoreDep, settings: SettingsDep
) -> Any:
    # 404 before streaming; while Redis is down, a finished article ends at once from disk.
    first = await anyio.to_thread.run_sync(_load, store, article_id, scope, _redis_down(request))
    if _redis_down(request) and first.status in TERMINAL:
        final = {"event": first.status, "data": first.model_dump_json()}
        return EventSourceResponse(iter([final]))
    # Each poll blocks in Redis; keep it well inside the socket timeout, or a quiet article
    # would look like a frozen Redis.
    block_ms = int(min(1.0, settings.redis_socket_timeout_seconds / 2) * 1000)
    return EventSourceResponse(_events(store, article_id, scope, block_ms, request_id_of(request)))


async def _events(
    store: ArticleStore, article_id: str, scope: str, block_ms: int, request_id: str
) -> AsyncIterator[dict[str, str]]:
    after = "0-0"
    while True:
        try:
            events = await anyio.to_thread.run_sync(store.read_events, article_id, after, block_ms)
            ended = False
            for event_id, data in events:
                after = event_id
                ended = ended or json.loads(data)["status"] in TERMINAL
                yield {"event": "progress", "id": event_id, "data": data}
            if events and not ended:
                continue  # still running: no need to read the whole record
            # A terminal event, or a quiet poll (also: a record only on disk has no events).
            status = await anyio.to_thread.run_sync(_load, store, article_id, scope)
        except RedisError as exc:
            # A finished article still ends its stream from disk. Otherwise (the stream has
            # started, so no status code) one `error` event in the error shape, then the end.
            on_disk = await anyio.to_thread.run_sync(_from_disk, store, article_id, scope)
            if on_disk is not None:
                yield {"event": on_disk.status, "data": on_disk.model_dump_json()}
                return
            logger.error("article %s: events stream stopped, Redis failed: %s", article_id, exc)
            message = f"the article store (Redis) failed: {exc}; reconnect later"
            body = error_body("service_unavailable", message, None, request_id)
            yield {"event": "error", "data": json.dumps(body)}
            return
        if status.status in TERMINAL:
            yield {"event": status.status, "data": status.model_dump_json()}
            return


@router.get(
    "/images/{image_id}",
    summary="An article image (PNG, with its parameters chunk).",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "The PNG."}},
)
def get_image(
    image_id: Annotated[
        str, Path(description="Image id.", examples=["img_9b1e2c3d4e5f6a7b8c9d0e1f"])
    ],
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    expires: Annotated[
        int,
        Query(ge=0, description="Of a signed URL: Unix time it expires; 0 = never.", examples=[0]),
    ] = 0,
    signature: Annotated[
        str | None,
        Query(
            max_length=128,
            description="Of a signed URL (as in the article's image `url`): lets the image be "
            "fetched without a key.",
            examples=["m1Xc0yP3kQ2r6vS8tU9wV0xY1zA2bC3dE4fG5hI6jK7"],
        ),
    ] = None,
) -> FileResponse:
    authorize_image(request, settings, image_id, expires, signature)
    if not IMAGE_ID.match(image_id):
        raise NotFound(f"no image {image_id!r}", param="image_id")
    path = store.image_path(image_id)
    if not path.exists():
        raise NotFound(f"no image {image_id!r}", param="image_id")
    return FileResponse(
        path,
        media_type="image/png",
        headers={"Cache-Control": "public, max-age=31536000, immutable"},
    )
