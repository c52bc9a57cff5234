"""GET /v1/articles/{id}/events: progress as Server-Sent Events, read from the Redis stream."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, Request
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse

from services.common.errors import error_body
from services.common.http import refuse_unknown_query, request_id_of
from services.gateway.auth import KeyDep
from services.gateway.deps import SettingsDep, StoreDep
from services.gateway.routes import RESPONSES, ArticleId, from_disk, load, redis_down
from services.gateway.schemas import TERMINAL
from services.gateway.store import ArticleStore

logger = logging.getLogger(__name__)
router = APIRouter(
    prefix="/v1",
    tags=["articles"],
    responses=RESPONSES,
    dependencies=[Depends(refuse_unknown_query)],
)


@router.get(
    "/articles/{article_id}/events",
    summary="Progress as Server-Sent Events.",
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`progress` events, then one event named after the final status "
            "(`succeeded`, `failed` or `cancelled`) carrying the full status. Every event has "
            "an `id:`; a reconnect with `Last-Event-ID` continues after that event.",
        }
    },
)
async def article_events(
    article_id: ArticleId,
    request: Request,
    scope: KeyDep,
    store: StoreDep,
    settings: SettingsDep,
    last_event_id: Annotated[
        str | None,
        Header(
            pattern=r"^\d{1,20}-\d{1,20}$",
            description="The `id:` of the last event received: the stream continues after it "
            "(browsers' EventSource sends it on reconnecting).",
            examples=["1764140000123-0"],
        ),
    ] = None,
) -> Any:
    # 404 before streaming; while Redis is down, a finished article ends at once from disk.
    first = await anyio.to_thread.run_sync(load, store, article_id, scope, redis_down(request))
    if redis_down(request) and first.status in TERMINAL:
        final = {"event": first.status, "data": first.model_dump_json()}
        return EventSourceResponse(iter([final]))
    # Each poll blocks in Redis; keep it well inside the socket timeout, or a quiet article
    # would look like a frozen Redis.
    block_ms = int(min(1.0, settings.redis_socket_timeout_seconds / 2) * 1000)
    events = _events(store, article_id, scope, block_ms, request_id_of(request), last_event_id)
    return EventSourceResponse(events)


async def _events(
    store: ArticleStore,
    article_id: str,
    scope: str,
    block_ms: int,
    request_id: str,
    last_event_id: str | None,
) -> AsyncIterator[dict[str, str]]:
    after = last_event_id or "0-0"
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
            status = await anyio.to_thread.run_sync(load, store, article_id, scope)
        except RedisError as exc:
            # A finished article still ends its stream from disk. Otherwise (the stream has
            # started, so no status code) one `error` event in the error shape, then the end.
            on_disk = await anyio.to_thread.run_sync(from_disk, store, article_id, scope)
            if on_disk is not None:
                yield {"event": on_disk.status, "data": on_disk.model_dump_json()}
                return
            logger.error("article %s: events stream stopped, Redis failed: %s", article_id, exc)
            message = f"the article store (Redis) failed: {exc}; reconnect later"
            body = error_body("service_unavailable", message, None, request_id)
            yield {"event": "error", "data": json.dumps(body)}
            return
        if status.status in TERMINAL:
            # It carries the id of the event it follows: a reconnect after it gets it again
            # (and so learns the end), never the progress before it.
            final = {"event": status.status, "data": status.model_dump_json()}
            yield final if after == "0-0" else {**final, "id": after}
            return
