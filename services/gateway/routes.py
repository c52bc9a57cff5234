"""The public article API: create, follow, cancel, list (events and images: their own files)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from services.common.errors import Conflict, NotFound, Overloaded
from services.common.http import ERROR_RESPONSES, refuse_unknown_query, request_id_of
from services.gateway import jobs, metrics
from services.gateway.auth import KeyDep, RateLimitedKeyDep, may_read
from services.gateway.deps import SettingsDep, StoreDep
from services.gateway.publish.job import check_publish
from services.gateway.revisions import at_revision
from services.gateway.schemas import (
    TERMINAL,
    Accepted,
    ArticleList,
    ArticleRequest,
    ArticleStatus,
    ErrorInfo,
    Status,
)
from services.gateway.sources import Source
from services.gateway.store import ARTICLE_ID, ArticleStore
from services.gateway.views import status_view
from services.gateway.webhooks import check_url

logger = logging.getLogger(__name__)

RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    401: ERROR_RESPONSES[400] | {"description": "Missing or invalid API key."},
    409: ERROR_RESPONSES[400]
    | {"description": "Idempotency conflict: the Idempotency-Key came with another body."},
}
router = APIRouter(
    prefix="/v1",
    tags=["articles"],
    responses=RESPONSES,
    dependencies=[Depends(refuse_unknown_query)],
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
    if body.publish is not None:
        check_publish(settings, body.publish, "publish.")
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
    written = False
    try:
        if store.active_count() >= settings.max_active_articles:
            metrics.REJECTED.labels("queue_full").inc()
            raise Overloaded(
                f"{settings.max_active_articles} articles are already queued or in progress "
                "(ARTICLEFORGE_MAX_ACTIVE_ARTICLES); retry later",
                retry_after=10,
            )
        written = True  # from here on, a failure may leave a record behind
        store.create(article_id, jobs.record_fields(body, request_id_of(request), scope))
        jobs.enqueue_article(store, settings, article_id, body, request_id_of(request))
    except (Overloaded, RedisError) as exc:
        _undo(store, article_id, scope, idempotency_key, written and isinstance(exc, RedisError))
        raise
    metrics.ARTICLES_CREATED.inc()
    return _accepted(article_id, "queued")


def _undo(
    store: ArticleStore, article_id: str, scope: str, key: str | None, half_made: bool
) -> None:
    """After a 429 or 503 nothing may stay half-made: a retry with the same Idempotency-Key must
    not replay an article that was never queued, and a record whose jobs were not all queued
    would sit `queued` for ever. Best effort: Redis may still be failing."""
    with contextlib.suppress(RedisError):
        if half_made:
            error = ErrorInfo(
                type="service_unavailable",
                message="the article could not be queued: the article store (Redis) failed",
                stage="queued",
            )
            store.transition(article_id, "failed", error=error.model_dump_json())
        if key is not None:
            store.release_idempotency(scope, key, article_id)


def _owned(store: ArticleStore, article_id: str, scope: str) -> dict[str, str] | None:
    """The record, if it exists and this key may see it (ids of other keys look absent)."""
    if not ARTICLE_ID.match(article_id):
        return None
    fields = store.fields(article_id)
    if fields and not may_read(json.loads(fields.get("key", "null")), scope):
        return None
    return fields


def from_disk(store: ArticleStore, article_id: str, scope: str) -> ArticleStatus | None:
    found = store.load_article_with_owner(article_id)
    if found is None or not may_read(found[1], scope):
        return None
    return found[0]


def load(
    store: ArticleStore, article_id: str, scope: str, disk_first: bool = False
) -> ArticleStatus:
    """Redis first (it is the truth while an article runs), then the disk copy.

    ``disk_first`` is for while the background ping finds Redis down: a finished article is
    then served without waiting for a Redis timeout first.
    """
    if not ARTICLE_ID.match(article_id):
        raise NotFound(f"no article {article_id!r}", param="id")
    if disk_first and (on_disk := from_disk(store, article_id, scope)) is not None:
        return on_disk
    try:
        fields = _owned(store, article_id, scope)
    except RedisError:
        # Redis is down or frozen: a finished article is still served from disk; anything
        # else is the 503 of the RedisError handler.
        on_disk = from_disk(store, article_id, scope)
        if on_disk is None:
            raise
        return on_disk
    if fields:
        return status_view(article_id, fields)
    if fields is not None:  # not in Redis (expired, or Redis lost it): the disk copy
        on_disk = from_disk(store, article_id, scope)
        if on_disk is not None:
            return on_disk
    raise NotFound(f"no article {article_id!r}", param="id")


@router.get(
    "/articles/{article_id}",
    response_model=ArticleStatus,
    summary="Status, progress, and the article once it succeeded.",
)
def get_article(
    article_id: ArticleId,
    request: Request,
    scope: KeyDep,
    store: StoreDep,
    revision: Annotated[
        int | None,
        Query(
            ge=1,
            description="Return this revision of the article (the latest when absent); "
            "`revision` says which is the latest.",
            examples=[1],
        ),
    ] = None,
) -> ArticleStatus:
    status = load(store, article_id, scope, redis_down(request))
    if revision is None:
        return status
    return at_revision(store, status, revision)


class SourceTexts(BaseModel):
    data: list[Source] = Field(description="Each source as loaded, its extracted text included.")


@router.get(
    "/articles/{article_id}/sources",
    response_model=SourceTexts,
    summary="The article's sources with their extracted text.",
)
def get_sources(
    article_id: ArticleId, request: Request, scope: KeyDep, store: StoreDep
) -> SourceTexts:
    load(store, article_id, scope, redis_down(request))  # it exists and is this key's
    kept = store.load_sources(article_id) or []
    return SourceTexts(data=[Source.model_validate(s) for s in kept])


def redis_down(request: Request) -> bool:
    return request.app.state.redis_problem is not None


@router.delete(
    "/articles/{article_id}",
    response_model=ArticleStatus,
    summary="Cancel: queued jobs are dropped and running ones stopped.",
    responses={
        409: RESPONSES[409]
        | {"description": "The article already ended (succeeded, failed or cancelled)."}
    },
)
def cancel_article(
    article_id: ArticleId, scope: KeyDep, store: StoreDep, settings: SettingsDep
) -> ArticleStatus:
    current = load(store, article_id, scope)
    if current.status in TERMINAL:
        raise Conflict(
            f"article {article_id} already {current.status}; nothing to cancel", param="id"
        )
    jobs.cancel(store, settings, article_id)  # False: it ended meanwhile, and said so
    return load(store, article_id, scope)


# A list's page: its size, and where it starts (the creation time of the last row shown).
PageSize = Annotated[int, Query(ge=1, le=100, description="Page size.")]
TimeCursor = Annotated[
    float | None, Query(allow_inf_nan=False, description="`next_cursor` of the previous page.")
]


@router.get("/articles", response_model=ArticleList, summary="Articles, newest first.")
def list_articles(
    scope: KeyDep,
    store: StoreDep,
    limit: PageSize = 20,
    cursor: TimeCursor = None,
    status: Annotated[
        Status | None,
        Query(description="Only articles with this status.", examples=["cancelled"]),
    ] = None,
) -> ArticleList:
    # Reads the index in batches until the page is full, so that articles of other keys or
    # of another status never make a page short while older matches exist.
    data: list[ArticleStatus] = []
    batch, scanned, last = max(limit, 50), cursor, cursor
    while True:
        rows = store.rows(batch, scanned)
        for article_id, score in rows:
            fields = _owned(store, article_id, scope)
            if not fields or (status is not None and fields.get("status") != status):
                continue
            if len(data) == limit:  # one more match exists: the page ends at the last one taken
                return ArticleList(data=data, next_cursor=str(last))
            data.append(status_view(article_id, fields, include_article=False))
            last = score
        if len(rows) < batch:
            return ArticleList(data=data, next_cursor=None)
        scanned = rows[-1][1]
