"""GET /v1/articles/{id}/export.md and export.html: a finished article as files to publish."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from services.common.errors import Conflict
from services.common.http import refuse_unknown_query
from services.gateway import export
from services.gateway.auth import KeyDep
from services.gateway.deps import StoreDep
from services.gateway.revisions import at_revision
from services.gateway.routes import RESPONSES, ArticleId, load, redis_down
from services.gateway.schemas import Article
from services.gateway.store import ArticleStore

router = APIRouter(
    prefix="/v1",
    tags=["articles"],
    responses=RESPONSES,
    dependencies=[Depends(refuse_unknown_query)],
)
Revision = Annotated[
    int | None,
    Query(ge=1, description="An older revision; the latest when absent.", examples=[1]),
]


def _article(
    store: ArticleStore, request: Request, article_id: str, scope: str, revision: int | None
) -> Article:
    status = load(store, article_id, scope, redis_down(request))
    if status.article is None:
        raise Conflict(
            f"article {article_id} is {status.status}; it can be exported once it has succeeded",
            param="id",
        )
    if revision is not None:
        status = at_revision(store, status, revision)
    assert status.article is not None
    return status.article


@router.get(
    "/articles/{article_id}/export.md",
    summary="The article as Markdown with YAML front matter (Hugo, Jekyll, Astro).",
    response_class=Response,
    responses={
        200: {
            "content": {
                "text/markdown": {
                    "example": "---\ntitle: The Future of Solar Power\nslug: the-future-of-"
                    "solar-power\ndate: 2026-11-26 06:30:00+00:00\ntags:\n- solar\n"
                    "description: Panels are cheaper than ever...\nimage: https://...\n---\n\n"
                    "![...](https://...)\n\n## Why now\n\n..."
                }
            },
            "description": "Front matter: title, slug, date, tags, description, image (the "
            "featured image's URL), image_alt, lang, revision, and lastmod once revised.",
        },
        409: RESPONSES[409] | {"description": "The article has not succeeded (yet)."},
    },
)
def export_markdown(
    article_id: ArticleId,
    request: Request,
    scope: KeyDep,
    store: StoreDep,
    revision: Revision = None,
) -> Response:
    article = _article(store, request, article_id, scope, revision)
    return Response(
        export.markdown_document(article),
        media_type="text/markdown; charset=utf-8",
        headers={"Content-Disposition": f'inline; filename="{article.slug or article.id}.md"'},
    )


@router.get(
    "/articles/{article_id}/export.html",
    summary="The article as a standalone HTML page, with its SEO and social tags.",
    response_class=Response,
    responses={
        200: {
            "content": {
                "text/html": {
                    "example": '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">'
                    "\n<title>The Future of Solar Power</title>\n...</head>\n<body>\n<article>"
                    "\n<h1>The Future of Solar Power</h1>...</article>\n</body>\n</html>\n"
                }
            },
            "description": "`<title>` (seo_title), meta description, Open Graph and Twitter "
            "tags, the JSON-LD object, and the article's sanitized HTML.",
        },
        409: RESPONSES[409] | {"description": "The article has not succeeded (yet)."},
    },
)
def export_html(
    article_id: ArticleId,
    request: Request,
    scope: KeyDep,
    store: StoreDep,
    revision: Revision = None,
) -> Response:
    article = _article(store, request, article_id, scope, revision)
    return Response(export.html_page(article), media_type="text/html; charset=utf-8")
