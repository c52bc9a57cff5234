"""Exports of a finished article: Markdown with YAML front matter for static-site generators
(Hugo, Jekyll, Astro content collections), and a standalone HTML page with its SEO tags.

The front matter is written by PyYAML's ``safe_dump``, so titles with colons, quotes or `#`
come out quoted as YAML needs; ``date`` is a YAML timestamp, which all three read as a date.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from typing import Any

import yaml

from services.gateway.schemas import Article


def _timestamp(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC)


def front_matter(article: Article) -> dict[str, Any]:
    matter: dict[str, Any] = {
        "title": article.title,
        "slug": article.slug,
        "date": _timestamp(article.created_at),
        "tags": list(article.tags),
        "description": article.meta_description,
    }
    if article.updated_at:
        matter["lastmod"] = _timestamp(article.updated_at)  # Hugo's name; others ignore it
    if article.featured_image:
        matter["image"] = article.featured_image.url
        matter["image_alt"] = article.featured_image.alt
    matter["lang"] = article.language
    matter["revision"] = article.revision
    return matter


def markdown_document(article: Article) -> str:
    """Front matter, then the body. The `# title` line is left out: these generators print the
    front matter's title themselves."""
    head = yaml.safe_dump(front_matter(article), sort_keys=False, allow_unicode=True)
    body = article.markdown
    first, _, rest = body.partition("\n")
    if first.startswith("# "):
        body = rest.lstrip("\n")
    return f"---\n{head}---\n\n{body}"


def _meta(attribute: str, name: str, content: str) -> str:
    return f'<meta {attribute}="{html.escape(name)}" content="{html.escape(content)}">'


def html_page(article: Article) -> str:
    """A whole page around the article's (already sanitized) HTML, with its SEO tags."""
    title = article.seo_title or article.title
    head = [
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        _meta("name", "description", article.meta_description),
    ]
    if article.tags:
        head.append(_meta("name", "keywords", ", ".join(article.tags)))
    head += [_meta("property", k, v) for k, v in article.open_graph.items()]
    head += [_meta("name", k, v) for k, v in article.twitter.items()]
    if article.json_ld:
        # `<` as \u003c: no text in the data can close the script element.
        data = json.dumps(article.json_ld, ensure_ascii=False).replace("<", "\\u003c")
        head.append(f'<script type="application/ld+json">{data}</script>')
    head.append(
        "<style>body{max-width:42rem;margin:2rem auto;padding:0 1rem;font:1.1rem/1.6 "
        "system-ui,sans-serif}img{max-width:100%;height:auto}figure{margin:1.5rem 0}"
        "figcaption{font-size:.9rem;color:#555}</style>"
    )
    lines = "\n".join(head)
    return (
        f'<!doctype html>\n<html lang="{html.escape(article.language)}">\n<head>\n{lines}\n'
        f"</head>\n<body>\n<article>\n{article.html}\n</article>\n</body>\n</html>\n"
    )
