"""Every revision of an article, kept: in the Redis hash (``revision:{n}``) and in the storage
(``revisions/{id}/{n}.json`` in DATA_DIR or the bucket). ``editorial`` writes them; reads,
webhooks and exports read them back."""

from __future__ import annotations

import json

from redis.exceptions import RedisError

from services.common.errors import NotFound
from services.gateway.schemas import Article, ArticleStatus
from services.gateway.store import ArticleStore, article_key


def revision_key(article_id: str, revision: int) -> str:
    article_key(article_id)  # checks the id
    return f"revisions/{article_id}/{revision}.json"


def has_revision(store: ArticleStore, article_id: str, revision: int) -> bool:
    """True when the storage holds that revision's copy."""
    return store.blobs.exists(revision_key(article_id, revision))


def read_revision(store: ArticleStore, article_id: str, revision: int) -> Article | None:
    """Redis first, then the stored copy (Redis down, or the record expired)."""
    try:
        raw = store.redis.hget(store.key(article_id), f"revision:{revision}")
    except RedisError:
        raw = None
    if raw is not None:
        return Article.model_validate(json.loads(raw))
    kept = store.blobs.get(revision_key(article_id, revision))
    return None if kept is None else Article.model_validate_json(kept)


def at_revision(store: ArticleStore, status: ArticleStatus, revision: int) -> ArticleStatus:
    """``status`` with its article as of ``revision`` (404 naming the revisions there are)."""
    latest = status.article.revision if status.article else 0
    if status.article is not None and revision == latest:
        return status
    article = read_revision(store, status.id, revision) if 1 <= revision < latest else None
    if article is None:
        there = f"revisions 1..{latest}" if latest else "no revision yet"
        raise NotFound(f"article {status.id} has {there}; no revision {revision}", param="revision")
    return status.model_copy(update={"article": article})


def save_revision(store: ArticleStore, article: Article) -> None:
    key = revision_key(article.id, article.revision)
    store.blobs.put(key, article.model_dump_json(indent=2).encode())
