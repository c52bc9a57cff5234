"""The batch API: create (JSON, or CSV), follow, list, cancel, retry the failed items."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from services.common.errors import Conflict, InvalidRequest, NotFound
from services.common.http import refuse_unknown_query, request_id_of
from services.gateway import metrics
from services.gateway.auth import ANONYMOUS, KeyDep, RateLimitedKeyDep, may_read
from services.gateway.batches import csv_items, dispatch, record
from services.gateway.batches.schemas import (
    BatchList,
    BatchOptions,
    BatchRequest,
    BatchStatus,
)
from services.gateway.config import GatewaySettings
from services.gateway.deps import SettingsDep, StoreDep
from services.gateway.routes import RESPONSES, PageSize, TimeCursor
from services.gateway.store import ArticleStore

router = APIRouter(
    prefix="/v1",
    tags=["batches"],
    responses=RESPONSES,
    dependencies=[Depends(refuse_unknown_query)],
)
BatchId = Annotated[str, Path(description="Batch id.", examples=["bat_5c1e0f2a9b3d4c6e8f7a1b2c"])]
Limit = Annotated[int, Query(ge=0, le=500, description="Items per page (0: counts only).")]
Cursor = Annotated[
    int, Query(ge=0, description="`next_cursor` of the previous page: an item index.")
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=255,
        description="Same key + same body returns the same batch; same key + another body "
        "is a 409.",
    ),
]

BODY = {
    "required": True,
    "description": "JSON (`BatchRequest`); or a CSV file, as `text/csv` or as the `file` part "
    "of `multipart/form-data` with an optional `options` part (`BatchOptions` as JSON). The "
    'CSV\'s columns are listed in docs/api.md, "Batches".',
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/BatchRequest"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "The CSV."},
                    "options": {
                        "type": "string",
                        "description": "BatchOptions as JSON: name, defaults, schedule, "
                        "link_related, webhook, metadata.",
                        "example": '{"defaults": {"publish": {"target": "wordpress"}}}',
                    },
                },
            }
        },
        "text/csv": {
            "schema": {"type": "string"},
            "example": "topic,keywords,words\nHeat pumps in old houses,heat pump;insulation,800\n",
        },
    },
}


async def _parse(request: Request) -> tuple[BatchRequest, list[int] | None]:
    """The body as a batch request, and for a CSV each item's line."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        form = await request.form()
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("the form needs a `file` part holding the CSV", param="file")
        text = csv_items.decode(await upload.read())
        options_part = form.get("options")
        if isinstance(options_part, UploadFile):  # `curl -F options=@options.json`
            raw_options = (await options_part.read()).decode("utf-8", "replace")
        else:
            raw_options = options_part or "{}"
        return _from_csv(text, _validated(BatchOptions, raw_options, ("options",)))
    if media in ("text/csv", "application/csv"):
        return _from_csv(csv_items.decode(await request.body()), BatchOptions())
    if media not in ("application/json", ""):
        raise InvalidRequest(
            f"send the batch as application/json, text/csv or multipart/form-data; got `{media}`",
            param="body",
        )
    return _validated(BatchRequest, (await request.body()).decode("utf-8", "replace"), ()), None


def _validated(model: Any, text: str, prefix: tuple[str, ...]) -> Any:
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *prefix, *e["loc"])} for e in exc.errors()]
        ) from None


def _from_csv(text: str, options: BatchOptions) -> tuple[BatchRequest, list[int]]:
    items, lines = csv_items.rows(text)
    if not items:
        raise InvalidRequest("the CSV has a header but no rows", param="file")
    data = {**options.model_dump(mode="json", exclude_unset=True), "items": items}
    try:
        return BatchRequest.model_validate(data), lines
    except ValidationError as exc:
        errors = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            index = loc[1] if loc[:1] == ("items",) and len(loc) > 1 else None
            line = lines[index] if isinstance(index, int) else None
            where = f" (CSV line {line}" if isinstance(line, int) else ""
            column = csv_items.column_of(loc[2:])
            if where:
                where += f", column `{column}`)" if column else ")"
            errors.append({**error, "loc": ("body", *loc), "msg": error["msg"] + where})
        raise RequestValidationError(errors) from None


def _replay(store: ArticleStore, batch_id: str) -> JSONResponse:
    status = record.status_of(store, batch_id)
    if status is None:
        raise NotFound(f"no batch {batch_id!r}", param="id")
    return JSONResponse(
        status.model_dump(mode="json"),
        status_code=202,
        headers={"Location": status.links.self, "Idempotent-Replayed": "true"},
    )


def _create(
    store: ArticleStore,
    settings: GatewaySettings,
    scope: str,
    body: BatchRequest,
    lines: list[int] | None,
    request_id: str,
    idempotency_key: str | None,
) -> JSONResponse:
    # The request as sent: `check` gives the items their calendar slots, which hang on the
    # clock (a day's slots still ahead), so a replay a minute later must not see another body.
    fingerprint = dispatch.fingerprint(body)
    body = dispatch.check(settings, body, lines)
    batch_id = dispatch.new_batch_id()
    if idempotency_key is not None:
        earlier = store.claim_idempotency(
            dispatch.idempotency_scope(scope), idempotency_key, fingerprint, batch_id
        )
        if earlier is not None:
            if earlier["fingerprint"] != fingerprint:
                raise Conflict(
                    "this Idempotency-Key was already used with a different batch",
                    param="Idempotency-Key",
                )
            return _replay(store, earlier["article_id"])  # the claim's id field: the batch's
    try:
        dispatch.create(store, settings, scope, body, request_id, batch_id)
    except Exception:
        dispatch.release_claim(store, scope, idempotency_key, batch_id)
        raise
    metrics.BATCHES_CREATED.inc()
    status = record.status_of(store, batch_id)
    assert status is not None
    return JSONResponse(
        status.model_dump(mode="json"), status_code=202, headers={"Location": status.links.self}
    )


@router.post(
    "/batches",
    status_code=202,
    response_model=BatchStatus,
    openapi_extra={"requestBody": BODY},
    summary="Queue many articles at once (JSON or CSV), optionally on a publishing calendar.",
    description="Each item becomes an ordinary article (its id in `items`), linked back to the "
    "batch. Items start as the key's batch slots free (ARTICLEFORGE_BATCH_SLOTS_PER_KEY), so a "
    "large batch never starves other keys. The batch counts as one request for the rate "
    "limit. Validation is all-or-nothing: one bad item refuses the whole batch, naming it "
    "(`items.3.sections`, with its CSV line).",
)
async def create_batch(
    request: Request,
    scope: RateLimitedKeyDep,
    settings: SettingsDep,
    store: StoreDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    body, lines = await _parse(request)
    return await run_in_threadpool(
        _create, store, settings, scope, body, lines, request_id_of(request), idempotency_key
    )


def _owned(store: ArticleStore, batch_id: str, scope: str) -> str:
    """The batch's owner, if it exists and this key may see it (one read; other keys' batches
    look absent): a 404 otherwise."""
    owner = record.owner(store, batch_id) if record.BATCH_ID.match(batch_id) else None
    if owner is None or not may_read(owner, scope):
        raise NotFound(f"no batch {batch_id!r}", param="id")
    return owner


def _load(
    store: ArticleStore, batch_id: str, scope: str, limit: int = 50, cursor: int = 0
) -> BatchStatus:
    _owned(store, batch_id, scope)
    status = record.status_of(store, batch_id, limit, cursor)
    if status is None:
        raise NotFound(f"no batch {batch_id!r}", param="id")
    return status


@router.get(
    "/batches/{batch_id}",
    response_model=BatchStatus,
    summary="A batch: its counts and one page of its items.",
)
def get_batch(
    batch_id: BatchId, scope: KeyDep, store: StoreDep, limit: Limit = 50, cursor: Cursor = 0
) -> BatchStatus:
    return _load(store, batch_id, scope, limit, cursor)


@router.get("/batches", response_model=BatchList, summary="Batches, newest first.")
def list_batches(
    scope: KeyDep,
    store: StoreDep,
    limit: PageSize = 20,
    cursor: TimeCursor = None,
) -> BatchList:
    high = f"({cursor}" if cursor is not None else "+inf"
    # The key's own index (with auth off, every batch's): no other key's batch is read.
    index = record.INDEX if scope == ANONYMOUS else record.index_key(scope)
    data: list[BatchStatus] = []
    last = 0.0
    while True:
        rows = store.redis.zrevrangebyscore(index, high, "-inf", start=0, num=100, withscores=True)
        for raw, score in rows:
            batch_id = raw.decode()
            if not may_read(record.owner(store, batch_id), scope):
                continue
            status = record.status_of(store, batch_id, limit=0)
            if status is None:  # expired: its index entries go too
                store.redis.zrem(record.INDEX, batch_id)
                store.redis.zrem(record.index_key(scope), batch_id)
                continue
            if len(data) == limit:
                return BatchList(data=data, next_cursor=str(last))
            data.append(status)
            last = score
        if len(rows) < 100:
            return BatchList(data=data, next_cursor=None)
        high = f"({rows[-1][1]}"


@router.delete(
    "/batches/{batch_id}",
    response_model=BatchStatus,
    summary="Cancel every item not yet finished; finished ones stay as they are.",
    responses={409: RESPONSES[409] | {"description": "The batch has already ended."}},
)
def cancel_batch(
    batch_id: BatchId, scope: KeyDep, store: StoreDep, settings: SettingsDep
) -> BatchStatus:
    _owned(store, batch_id, scope)
    dispatch.cancel(store, settings, batch_id)
    return _load(store, batch_id, scope)


@router.post(
    "/batches/{batch_id}/retry",
    status_code=202,
    response_model=BatchStatus,
    summary="Run the failed items again: failed articles anew, failed publishes again.",
    responses={
        409: RESPONSES[409]
        | {"description": "The batch was cancelled, or none of its items failed."}
    },
)
def retry_batch(
    batch_id: BatchId, request: Request, scope: KeyDep, store: StoreDep, settings: SettingsDep
) -> BatchStatus:
    owner = _owned(store, batch_id, scope)
    dispatch.retry(store, settings, owner, batch_id, request_id_of(request))
    return _load(store, batch_id, scope)
