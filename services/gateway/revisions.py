"""Every revision of an article, kept: in the Redis hash (``revision:{n}``) and on disk
(``DATA_DIR/revisions/{id}/{n}.json``). ``editorial`` writes them; reads, webhooks and exports
read them back."""

from __future__ import annotations

import json
from pathlib import Path

from redis.exceptions import RedisError

from services.common.errors import NotFound
from services.gateway.schemas import Article, ArticleStatus
from services.gateway.store import ArticleStore, atomic_write


def revision_path(data_dir: Path, article_id: str, revision: int) -> Path:
    return data_dir / "revisions" / article_id / f"{revision}.json"


def read_revision(store: ArticleStore, article_id: str, revision: int) -> Article | None:
    """Redis first, then the disk copy (Redis down, or the record expired)."""
    try:
        raw = store.redis.hget(store.key(article_id), f"revision:{revision}")
    except RedisError:
        raw = None
    if raw is not None:
        return Article.model_validate(json.loads(raw))
    path = revision_path(store.data_dir, article_id, revision)
    if path.exists():
        return Article.model_validate_json(path.read_text())
    return None


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
    path = revision_path(store.data_dir, article.id, article.revision)
    atomic_write(path, article.model_dump_json(indent=2).encode())
