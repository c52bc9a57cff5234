"""POST /v1/articles/{id}/publish: publish (or publish again) a finished article."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from services.common.errors import Conflict
from services.common.http import refuse_unknown_query, request_id_of
from services.gateway.auth import KeyDep
from services.gateway.deps import SettingsDep, StoreDep
from services.gateway.publish.job import check_publish, enqueue_publish
from services.gateway.publish.schemas import PublishInfo, PublishOptions
from services.gateway.routes import RESPONSES, ArticleId, load

router = APIRouter(
    prefix="/v1",
    tags=["publishing"],
    responses=RESPONSES,
    dependencies=[Depends(refuse_unknown_query)],
)
PUBLISH_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: RESPONSES[400]
    | {"description": "`target` is not a publishing target configured on this gateway."},
    409: RESPONSES[409]
    | {"description": "The article has not succeeded (yet): there is nothing to publish."},
}


@router.post(
    "/articles/{article_id}/publish",
    status_code=202,
    response_model=PublishInfo,
    responses=PUBLISH_RESPONSES,
    summary="Publish a finished article into WordPress or Ghost (again: the same post).",
    description="Queues the publish job and answers at once; the article's status shows "
    "`publish.{target}` going `queued` -> `publishing` -> `published` (or `failed`), and the "
    "`article.published` / `article.publish_failed` webhooks announce the end. Publishing is "
    "idempotent: the first publish creates the post and uploads the images, every later one "
    "(a retry, a new revision, another `status`) updates that post and reuses the media. While "
    "a publish is queued or running, another request returns its state and queues nothing.",
)
def publish_article(
    article_id: ArticleId,
    body: PublishOptions,
    request: Request,
    scope: KeyDep,
    settings: SettingsDep,
    store: StoreDep,
) -> PublishInfo:
    current = load(store, article_id, scope)  # 404 for unknown ids and other keys' articles
    check_publish(settings, body)
    if current.status != "succeeded" or current.article is None:
        raise Conflict(
            f"article {article_id} is {current.status}; only a succeeded article can be published",
            param="id",
        )
    return enqueue_publish(store, settings, article_id, body, request_id_of(request))
