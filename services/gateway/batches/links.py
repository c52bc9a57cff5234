"""Internal links between a batch's articles (`link_related`), drawn into the CMS posts.

An article *mentions* another item of its batch when that item's topic appears in one of its
sections as a phrase of whole words (case aside). At publish time the first mention of each
such topic in each section's paragraphs (outside headings, figures, code and existing links)
becomes a link to the other article's post, with the URL the CMS gave that post. A topic whose
article is not published yet stays plain text; when that article is published, every post of
the batch that mentions it is published again with the link (``to_relink``), and each publish
notes the links it drew (``PublishRecord.links``), so a post is updated only when a link changes.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping

from services.gateway.batches import record
from services.gateway.batches.schemas import BatchOptions
from services.gateway.publish.common import PublishRecord
from services.gateway.schemas import Article
from services.gateway.store import ArticleStore

TAG = re.compile(r"(<[^>]*>)")
# Inside these no link is drawn: a link in a heading, a caption or code reads badly, and one
# inside another link is invalid HTML.
SKIPPED = {"a", "h1", "h2", "h3", "h4", "h5", "h6", "figure", "figcaption", "code", "pre"}


def _pattern(topic: str) -> re.Pattern[str]:
    words = html.escape(topic.strip(), quote=False)
    return re.compile(r"(?<!\w)" + re.escape(words).replace(r"\ ", r"\s+") + r"(?!\w)", re.I)


def mentions(article: Article, topic: str) -> bool:
    pattern = _pattern(topic)
    return any(pattern.search(_text_only(section.html)) for section in article.sections)


def _text_only(fragment: str) -> str:
    return " ".join(part for part in TAG.split(fragment) if not part.startswith("<"))


def link_fragment(fragment: str, links: Mapping[str, str]) -> str:
    """``fragment`` (sanitized HTML) with the first mention of each topic linked."""
    pending = {topic: _pattern(topic) for topic in links}
    inside: list[str] = []  # the skipped elements open at this point
    out = []
    for part in TAG.split(fragment):
        if part.startswith("<"):
            name = re.match(r"</?\s*([a-zA-Z0-9]+)", part)
            tag = name.group(1).lower() if name else ""
            if tag in SKIPPED and not part.endswith("/>"):
                if not part.startswith("</"):
                    inside.append(tag)
                elif tag in inside:
                    inside.remove(tag)
            out.append(part)
        elif inside or not pending:
            out.append(part)
        else:
            out.append(_link_text(part, pending, links))
    return "".join(out)


def _link_text(text: str, pending: dict[str, re.Pattern[str]], links: Mapping[str, str]) -> str:
    """Links, in ``text``, the earliest mention of any pending topic, then the next, ...; each
    topic linked is no longer pending."""
    out = []
    while pending:
        hits = [(found, topic) for topic, p in pending.items() if (found := p.search(text))]
        if not hits:
            break
        found, topic = min(hits, key=lambda hit: hit[0].start())
        href = html.escape(links[topic], quote=True)
        out.append(f'{text[: found.start()]}<a href="{href}">{found.group(0)}</a>')
        text = text[found.end() :]
        del pending[topic]
    out.append(text)
    return "".join(out)


def linked(article: Article, links: Mapping[str, str]) -> Article:
    """The article with its sections' mentions of ``links``'s topics linked (a copy)."""
    if not links:
        return article
    sections = [
        section.model_copy(update={"html": link_fragment(section.html, links)})
        for section in article.sections
    ]
    return article.model_copy(update={"sections": sections})


def siblings(store: ArticleStore, article_id: str) -> dict[str, str] | None:
    """For a batch item with `link_related`: the batch's other articles, id -> topic; None
    when links are not asked for."""
    batch = record.of_article(store, article_id)
    if batch is None:
        return None
    raw = store.redis.hget(record.key(batch["id"]), "options")
    if raw is None or not BatchOptions.model_validate_json(raw).link_related:
        return None
    ids = record.item_ids(store, batch["id"])
    names = record.topics(store, batch["id"])
    return {a: t for a, t in zip(ids, names, strict=False) if a != article_id}


def post_urls(store: ArticleStore, ids: list[str], target: str) -> dict[str, str | None]:
    """Each article's post URL in ``target`` (None while it has none)."""
    pipe = store.redis.pipeline(transaction=False)
    for other in ids:
        pipe.hget(store.key(other), f"publish:{target}")
    urls: dict[str, str | None] = {}
    for other, raw in zip(ids, pipe.execute(), strict=True):
        urls[other] = json.loads(raw).get("url") if raw else None
    return urls


def plan(
    store: ArticleStore, article: Article, target: str
) -> tuple[Article, dict[str, str | None]]:
    """The article to publish (its mentions linked where the other post exists) and the links
    to note: mentioned article id -> the URL drawn (None: not published yet)."""
    others = siblings(store, article.id)
    if not others:
        return article, {}
    mentioned = [other for other, topic in others.items() if mentions(article, topic)]
    urls = post_urls(store, mentioned, target)
    drawn = {others[other]: url for other, url in urls.items() if url}
    return linked(article, drawn), urls


def stale(store: ArticleStore, published: PublishRecord, target: str) -> bool:
    """True when a post this publish linked (or could not link yet) has another URL now."""
    if not published.links:
        return False
    now = post_urls(store, list(published.links), target)
    return any(now[other] != url for other, url in published.links.items())


def to_relink(
    store: ArticleStore, article_id: str, others: Mapping[str, str], target: str, url: str | None
) -> list[str]:
    """Of the batch's other articles (``siblings``), the published ones that mention
    ``article_id`` with a URL other than ``url`` (or none yet): they are published again."""
    if not others or url is None:
        return []
    pipe = store.redis.pipeline(transaction=False)
    for other in others:
        pipe.hget(store.key(other), f"publish:{target}")
    found = []
    for other, raw in zip(others, pipe.execute(), strict=True):
        if raw is None:
            continue
        kept = PublishRecord.model_validate_json(raw)
        if kept.post_id is not None and article_id in kept.links and kept.links[article_id] != url:
            found.append(other)
    return found
