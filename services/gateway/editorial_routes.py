"""The editorial loop's routes: outline review and regenerating one section or one image.

Thin, as the other route modules: validate, check the owner, delegate to ``editorial``, shape
the reply. Each route that queues work takes an ``Idempotency-Key`` (``_idempotent``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from services.common.errors import ArticleforgeError, Conflict, NotFound
from services.common.http import refuse_unknown_query, request_id_of
from services.common.limits import seed_or_random
from services.gateway import editorial, pipeline
from services.gateway.auth import KeyDep, RateLimitedKeyDep
from services.gateway.deps import SettingsDep, StoreDep
from services.gateway.editorial_schemas import (
    EditAccepted,
    ImageRegenerate,
    OutlineEdit,
    SectionRegenerate,
)
from services.gateway.routes import RESPONSES, ArticleId, load
from services.gateway.schemas import ArticleStatus
from services.gateway.store import ArticleStore

router = APIRouter(
    prefix="/v1",
    tags=["editorial"],
    responses=RESPONSES,
    dependencies=[Depends(refuse_unknown_query)],
)
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=255,
        description="Same key + same body replays the first answer; same key + another body "
        "is a 409.",
        examples=["edit-4711-3"],
    ),
]
Index = Annotated[
    int, Path(ge=0, le=11, description="0-based index in the article's `sections`.", examples=[2])
]
ImageIndex = Annotated[
    int,
    Path(
        ge=0,
        le=7,
        description="0-based image slot: 0 is the featured image, k illustrates section k-1.",
        examples=[1],
    ),
]
IDEMPOTENCY_TTL = 24 * 3600
REVIEW_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: RESPONSES[409]
    | {
        "description": "The article is not awaiting review (not created for review, approved "
        "already, expired, cancelled), or the Idempotency-Key came with another request."
    }
}
EDIT_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: RESPONSES[409]
    | {
        "description": "The article has not succeeded (it is still being written, awaiting "
        "review, failed or cancelled), is already making a revision, or its working record "
        "expired; or the Idempotency-Key came with another request."
    }
}


def _idempotent(
    store: ArticleStore,
    scope: str,
    key: str | None,
    request: Request,
    body: Any,
    work: Callable[[], tuple[int, dict[str, Any]]],
) -> JSONResponse:
    """Runs ``work`` once per key: a repeat with the same method, path and body replays its
    answer. Keys share the namespace of POST /v1/articles, so a key is never two requests."""
    if key is None:
        code, content = work()
        return JSONResponse(content, status_code=code)
    text = f"{request.method} {request.url.path}\n{json.dumps(body, sort_keys=True)}"
    fingerprint = hashlib.sha256(text.encode()).hexdigest()
    name = f"af:idem:{scope}:{key}"
    claim: dict[str, Any] = {"fingerprint": fingerprint, "article_id": None, "response": None}
    if not store.redis.set(name, json.dumps(claim), nx=True, ex=IDEMPOTENCY_TTL):
        earlier = json.loads(store.redis.get(name) or "{}")
        if earlier.get("fingerprint") != fingerprint:
            raise Conflict(
                "this Idempotency-Key was already used with a different request",
                param="Idempotency-Key",
            )
        if earlier.get("response") is None:
            raise Conflict(
                "a request with this Idempotency-Key is still being answered; retry",
                param="Idempotency-Key",
            )
        code, content = earlier["response"]
        return JSONResponse(content, status_code=code, headers={"Idempotent-Replayed": "true"})
    try:
        code, content = work()
    except (ArticleforgeError, RedisError):
        store.redis.delete(name)  # not done: the same key may try again
        raise
    claim["response"] = [code, content]
    store.redis.set(name, json.dumps(claim), xx=True, keepttl=True)
    return JSONResponse(content, status_code=code)


def _continue(
    store: ArticleStore,
    settings: SettingsDep,
    article_id: str,
    scope: str,
    outline: OutlineEdit | None,
) -> tuple[int, dict[str, Any]]:
    load(store, article_id, scope)  # 404 for unknown ids and other keys' articles
    edited = None if outline is None else pipeline.Outline(outline.title, outline.headings)
    sources = None if outline is None else outline.sources
    editorial.continue_after_review(store, settings, article_id, edited, sources)
    return 202, load(store, article_id, scope).model_dump(mode="json")


@router.put(
    "/articles/{article_id}/outline",
    status_code=202,
    response_model=ArticleStatus,
    responses=REVIEW_CONFLICT,
    summary="Replace the outline of an article awaiting review, and continue writing.",
    description='For an article created with `"review": "outline"` and now '
    "`awaiting_review`: the sections are written from this title and these headings. "
    "409 when the article is not awaiting review (approved already, expired, cancelled).",
)
def put_outline(
    article_id: ArticleId,
    body: OutlineEdit,
    request: Request,
    scope: KeyDep,
    settings: SettingsDep,
    store: StoreDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    return _idempotent(
        store,
        scope,
        idempotency_key,
        request,
        body.model_dump(mode="json"),
        lambda: _continue(store, settings, article_id, scope, body),
    )


@router.post(
    "/articles/{article_id}/approve",
    status_code=202,
    response_model=ArticleStatus,
    responses=REVIEW_CONFLICT,
    summary="Approve the outline of an article awaiting review, and continue writing.",
    description="409 when the article is not awaiting review.",
)
def approve(
    article_id: ArticleId,
    request: Request,
    scope: KeyDep,
    settings: SettingsDep,
    store: StoreDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    return _idempotent(
        store,
        scope,
        idempotency_key,
        request,
        None,
        lambda: _continue(store, settings, article_id, scope, None),
    )


def _edit(
    store: ArticleStore,
    settings: SettingsDep,
    request: Request,
    article_id: str,
    scope: str,
    kind: str,
    index: int,
    params: dict[str, Any],
) -> tuple[int, dict[str, Any]]:
    current = load(store, article_id, scope)
    if current.article is not None:
        if kind == "section" and index >= len(current.article.sections):
            count = len(current.article.sections)
            raise NotFound(
                f"article {article_id} has {count} sections (0..{count - 1}); no section {index}",
                param="k",
            )
        count = int(current.progress.images_total)
        if kind == "image" and index >= count:
            there = f"images 0..{count - 1}" if count else "no images"
            raise NotFound(f"article {article_id} has {there}; no image {index}", param="k")
    edit = editorial.begin_edit(
        store, settings, article_id, kind, index, params, request_id_of(request)
    )
    links = {
        "self": f"/v1/articles/{article_id}",
        "revision": f"/v1/articles/{article_id}?revision={edit.revision}",
    }
    accepted = EditAccepted(id=article_id, revision=edit.revision, edit=edit, links=links)
    return 202, accepted.model_dump(mode="json")


@router.post(
    "/articles/{article_id}/sections/{k}/regenerate",
    status_code=202,
    response_model=EditAccepted,
    responses=EDIT_CONFLICT,
    summary="Rewrite one section, in the context of the outline and its neighbours.",
    description="Runs as a job and makes a new revision (`revision` + 1) once done, announced "
    "by `article.updated`; the other sections, the images and earlier revisions stay as they "
    "are. 409 while the article is still being written or another regeneration runs.",
)
def regenerate_section(
    article_id: ArticleId,
    k: Index,
    request: Request,
    scope: RateLimitedKeyDep,
    settings: SettingsDep,
    store: StoreDep,
    body: Annotated[SectionRegenerate | None, Body()] = None,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    options = body or SectionRegenerate()
    given = options.model_dump(mode="json")
    params = {**given, "seed": seed_or_random(options.seed)}
    return _idempotent(
        store,
        scope,
        idempotency_key,
        request,
        given,
        lambda: _edit(store, settings, request, article_id, scope, "section", k, params),
    )


@router.post(
    "/articles/{article_id}/images/{k}/regenerate",
    status_code=202,
    response_model=EditAccepted,
    responses=EDIT_CONFLICT,
    summary="Redraw one image; the earlier one stays served.",
    description="Runs as a job and makes a new revision (`revision` + 1) once done, announced "
    "by `article.updated`. The new image gets a new id; the old PNG and the revisions that "
    "show it are kept. 409 while the article is still being written or another regeneration "
    "runs.",
)
def regenerate_image(
    article_id: ArticleId,
    k: ImageIndex,
    request: Request,
    scope: RateLimitedKeyDep,
    settings: SettingsDep,
    store: StoreDep,
    body: Annotated[ImageRegenerate | None, Body()] = None,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    options = body or ImageRegenerate()
    given = options.model_dump(mode="json")
    params = {**given, "seed": seed_or_random(options.seed)}
    return _idempotent(
        store,
        scope,
        idempotency_key,
        request,
        given,
        lambda: _edit(store, settings, request, article_id, scope, "image", k, params),
    )
