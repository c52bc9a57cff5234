"""Assembles the Article JSON: Markdown, sanitized HTML, excerpt, tags, provenance.

Model text is untrusted. Markdown is rendered with raw HTML disabled (so `<script>` comes out as
text), and the result goes through nh3 (ammonia) as a second line of defence. The Markdown itself
is escaped too, since many renderers pass raw HTML through: model and user text gets `&`, `<`
and `>` as entities and `[`, `]` backslash-escaped, so it can make neither an element nor a link
or image (no `javascript:` URL, no tracking pixel); it still reads the same once rendered.
"""

from __future__ import annotations

import html
import math
import re
from datetime import UTC, datetime
from typing import Any

import nh3
from markdown_it import MarkdownIt
from slugify import slugify

from services.gateway.pipeline import Outline
from services.gateway.schemas import Article, ArticleRequest, ImageRef, Provenance, Section

_MARKDOWN = MarkdownIt("commonmark", {"html": False})
_STOPWORDS = frozenset(
    "a an and are as at be by for from how in into is it of on or the to what why with your "
    "you about".split()
)


def render(markdown: str) -> str:
    return nh3.clean(_MARKDOWN.render(markdown))


def md_escape(text: str) -> str:
    """Untrusted text made inert as Markdown (see the module docstring)."""
    return html.escape(text, quote=False).replace("[", "\\[").replace("]", "\\]")


def _md_line(text: str) -> str:
    """For a heading or alt text: one line, so it cannot start a block of its own."""
    return md_escape(" ".join(text.split()))


def _figure(image: ImageRef) -> str:
    return (
        f'<figure><img src="{html.escape(image.url)}" alt="{html.escape(image.alt)}" '
        f'width="{image.width}" height="{image.height}">'
        f"<figcaption>{html.escape(image.caption)}</figcaption></figure>"
    )


def _plain(markdown: str) -> str:
    text = re.sub(r"[#*_`>\[\]()!]", "", markdown)
    return re.sub(r"\s+", " ", text).strip()


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0].rstrip(",;:")
    return cut + "…"


def _tags(request: ArticleRequest) -> list[str]:
    tags: list[str] = []
    for word in request.keywords + re.findall(r"[A-Za-z][A-Za-z-]{2,}", request.topic):
        tag = word.strip().lower()
        if tag and tag not in _STOPWORDS and tag not in tags:
            tags.append(tag)
    return tags[:10]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def assemble(
    article_id: str,
    request: ArticleRequest,
    outline: Outline,
    bodies: list[str],
    images: list[ImageRef],
    provenance: Provenance,
    created_at: str,
) -> Article:
    """Image 0 is featured; image k (k >= 1) illustrates section k-1."""
    sections = [
        Section(
            heading=heading,
            markdown=md_escape(body),
            html=render(md_escape(body)),
            image=images[k + 1] if k + 1 < len(images) else None,
        )
        for k, (heading, body) in enumerate(zip(outline.headings, bodies, strict=True))
    ]
    featured = images[0] if images else None

    md_parts = [f"# {_md_line(outline.title)}"]
    html_parts = [f"<h1>{html.escape(outline.title)}</h1>"]
    if featured:
        md_parts.append(f"![{_md_line(featured.alt)}]({featured.url})")
        html_parts.append(_figure(featured))
    for section in sections:
        md_parts.append(f"## {_md_line(section.heading)}")
        html_parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        if section.image:
            md_parts.append(f"![{_md_line(section.image.alt)}]({section.image.url})")
            html_parts.append(_figure(section.image))
        md_parts.append(section.markdown)
        html_parts.append(section.html)

    body_text = _plain(" ".join(bodies))
    words = len(body_text.split())
    first = _plain(bodies[0]) if bodies else outline.title
    sentences = re.split(r"(?<=[.!?])\s+", first)
    return Article(
        id=article_id,
        title=outline.title,
        slug=slugify(outline.title, max_length=80, word_boundary=True) or article_id,
        excerpt=_cut(" ".join(sentences[:2]), 300),
        meta_description=_cut(first, 160),
        tags=_tags(request),
        sections=sections,
        featured_image=featured,
        images=images,
        markdown="\n\n".join(md_parts) + "\n",
        html=nh3.clean("\n".join(html_parts)),
        word_count=words,
        reading_time_minutes=max(1, math.ceil(words / 200)),
        language=request.language,
        provenance=provenance,
        created_at=created_at,
        metadata=request.metadata,
    )


def image_ref(
    image_id: str,
    url: str,
    prompt: str,
    seed: int,
    width: int,
    height: int,
    caption: str,
) -> ImageRef:
    return ImageRef(
        id=image_id,
        url=url,
        alt=_cut(caption, 120),
        caption=caption,
        width=width,
        height=height,
        prompt=prompt,
        seed=seed,
    )


def provenance(
    request: ArticleRequest,
    text_model: str | None,
    adapter: str | None,
    image_model: str | None,
    text_seed: int,
    image_seeds: list[int],
    timings: dict[str, float],
    fallbacks: list[str],
) -> Provenance:
    parameters: dict[str, Any] = request.model_dump(
        mode="json", exclude={"webhook", "metadata", "image_prompts"}
    )
    return Provenance(
        text_model=text_model or "unknown",
        adapter=adapter,
        image_model=image_model,
        parameters=parameters,
        seeds={"text": text_seed, "images": image_seeds},
        timings=timings,
        fallbacks=fallbacks,
    )
