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
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import nh3
from markdown_it import MarkdownIt
from slugify import slugify

from services.gateway import languages, pipeline, seo
from services.gateway.grounding import Grounding
from services.gateway.pipeline import Outline
from services.gateway.schemas import (
    Article,
    ArticleRequest,
    CitationInfo,
    ImageRef,
    Provenance,
    Section,
    SourceInfo,
)
from services.gateway.sources import (
    link_markers_html,
    references_html,
    references_markdown,
)

_MARKDOWN = MarkdownIt("commonmark", {"html": False})
# Characters outside XML 1.0's `Char` production (C0 controls but tab, LF and CR; lone
# surrogates; U+FFFE, U+FFFF), plus those HTML calls parse errors: DEL, the C1 controls and the
# noncharacters.
_NOT_XML = re.compile(
    "[^\t\n\r\x20-\x7e\xa0-\ud7ff\ue000-\ufdcf\ufdf0-\ufffd\U00010000-\U0010ffff]"
    "|[\U0001fffe-\U0001ffff\U0002fffe-\U0002ffff\U0003fffe-\U0003ffff\U0004fffe-\U0004ffff"
    "\U0005fffe-\U0005ffff\U0006fffe-\U0006ffff\U0007fffe-\U0007ffff\U0008fffe-\U0008ffff"
    "\U0009fffe-\U0009ffff\U000afffe-\U000affff\U000bfffe-\U000bffff\U000cfffe-\U000cffff"
    "\U000dfffe-\U000dffff\U000efffe-\U000effff\U000ffffe-\U000fffff\U0010fffe-\U0010ffff]"
)
_VOID = frozenset("area base br col embed hr img input link meta source track wbr".split())


def xml_safe(text: str) -> str:
    """Model (and request) text with every character XML 1.0 and HTML refuse removed."""
    return _NOT_XML.sub("", text)


class _Xhtml(HTMLParser):
    """Re-serializes sanitized HTML so that it is also well-formed XML: void elements closed
    (`<img ... />`), every attribute quoted and escaped, text escaped, no invalid character.
    A feed, an XHTML template or an XML parser reads it as it is; browsers read it unchanged."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []

    def _open(self, tag: str, attrs: list[tuple[str, str | None]], close: bool) -> None:
        quoted = "".join(
            f' {name}="{html.escape(xml_safe(value or ""), quote=True)}"' for name, value in attrs
        )
        self.out.append(f"<{tag}{quoted}{' /' if close else ''}>")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open(tag, attrs, tag in _VOID)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open(tag, attrs, True)

    def handle_endtag(self, tag: str) -> None:
        if tag not in _VOID:
            self.out.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        self.out.append(html.escape(xml_safe(data), quote=False))


def xhtml(sanitized: str) -> str:
    parser = _Xhtml()
    parser.feed(sanitized)
    parser.close()
    return "".join(parser.out)


def render(markdown: str) -> str:
    return xhtml(nh3.clean(_MARKDOWN.render(markdown)))


def md_escape(text: str) -> str:
    """Untrusted text made inert as Markdown (see the module docstring)."""
    return html.escape(text, quote=False).replace("[", "\\[").replace("]", "\\]")


def _md_line(text: str) -> str:
    """For a heading or alt text: one line, so it cannot start a block of its own."""
    return md_escape(" ".join(text.split()))


def figure(image: ImageRef, src: str | None = None, attrs: Mapping[str, str] | None = None) -> str:
    """An image's `<figure>` with its caption; ``src`` and ``attrs`` put a copy elsewhere (a
    CMS's media URL and class) in place of the gateway's URL."""
    extra = "".join(f' {k}="{html.escape(v)}"' for k, v in (attrs or {}).items())
    return (
        f'<figure><img src="{html.escape(src or image.url)}" alt="{html.escape(image.alt)}" '
        f'width="{image.width}" height="{image.height}"{extra}>'
        f"<figcaption>{html.escape(image.caption)}</figcaption></figure>"
    )


def sections_html(sections: list[Section], image: Callable[[ImageRef], str] = figure) -> str:
    """The sections as HTML: each heading, its image (as ``image`` draws it) and its body
    (already sanitized), without the title or the featured image."""
    parts = []
    for section in sections:
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        if section.image:
            parts.append(image(section.image))
        parts.append(section.html)
    return "\n".join(parts)


def _plain(markdown: str) -> str:
    text = re.sub(r"[#*_`>\[\]()!]", "", markdown)
    return re.sub(r"\s+", " ", text).strip()


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0].rstrip(",;:")
    return cut + "…"


def _tags(request: ArticleRequest) -> list[str]:
    """The keywords, then words of the topic: its language's stopwords left out, or, in a
    language without a list, every word shorter than four letters."""
    words = languages.fallbacks(request.language)
    stopwords = words.stopwords if words else frozenset()
    shortest = 3 if words else 4
    tags: list[str] = []
    topic_words = re.findall(r"[^\W\d_][\w-]*", xml_safe(request.topic))
    candidates = request.keywords + [w for w in topic_words if len(w) >= shortest]
    for word in candidates:
        tag = xml_safe(word).strip().lower()
        if tag and tag not in stopwords and tag not in tags:
            tags.append(tag)
    return tags[:10]


EXCERPT_SENTENCES = 2


def _caption(body: str, skip: int) -> str | None:
    """A section image's caption: a sentence of its section past the first ``skip`` (the
    section's own first line sits right beside the image, and the first section's opening
    is the excerpt too), so that no sentence is printed twice on the page; None when the
    section has no other sentence of a few words."""
    sentences = [x for x in re.split(r"(?<=[.!?])\s+", _plain(body)) if len(x.split()) >= 4]
    return _cut(sentences[skip], 160) if len(sentences) > skip else None


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cited_numbering(citations: list[CitationInfo]) -> dict[str, int]:
    """source id -> its marker, for the sources the article still cites (a rewrite may drop
    one; the others keep their numbers)."""
    return {c.source_id: c.marker for c in citations}


def references(article: Article) -> tuple[str, str]:
    """The article's references list as Markdown and as XHTML ("" when it cites nothing)."""
    numbering = cited_numbering(article.citations)
    return (
        references_markdown(article.sources, numbering),
        references_html(article.sources, numbering),
    )


def _citations(grounded: Grounding | None) -> list[CitationInfo]:
    if grounded is None:
        return []
    return [CitationInfo(section=k, **c.model_dump()) for k, c in grounded.cited_citations()]


def assemble(
    article_id: str,
    request: ArticleRequest,
    outline: Outline,
    bodies: list[str],
    images: list[ImageRef],
    provenance: Provenance,
    created_at: str,
    grounded: Grounding | None = None,
) -> Article:
    """Image 0 is featured; image k (k >= 1) illustrates section k-1.

    Model text is cleaned to characters valid in XML 1.0 before any Markdown or HTML is built.
    The featured image's caption is the title; a section image's caption is its section's
    first sentence (the alt text, set from the prompt, describes the picture). With sources
    (``grounded``) the citation markers link to a references list at the end."""
    outline = Outline(  # a title and a heading are one line each
        title=" ".join(xml_safe(outline.title).split()),
        headings=[" ".join(xml_safe(h).split()) for h in outline.headings],
        fallback=outline.fallback,
    )
    bodies = [xml_safe(b) for b in bodies]
    skips = [EXCERPT_SENTENCES if k == 0 else 1 for k in range(len(bodies))]
    captions = [outline.title, *(_caption(b, n) for b, n in zip(bodies, skips, strict=True))]
    images = [
        image.model_copy(
            update={
                "alt": " ".join(xml_safe(image.alt).split()),
                # past the captions the text gives: the alt text, which describes the picture
                "caption": (captions[k] if k < len(captions) else outline.title)
                or " ".join(xml_safe(image.alt).split()),
                "prompt": xml_safe(image.prompt),
            }
        )
        for k, image in enumerate(images)
    ]
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
        html_parts.append(figure(featured))
    html_parts.append(sections_html(sections))
    for section in sections:
        md_parts.append(f"## {_md_line(section.heading)}")
        if section.image:
            md_parts.append(f"![{_md_line(section.image.alt)}]({section.image.url})")
        md_parts.append(section.markdown)

    citations = _citations(grounded)
    sources = [
        SourceInfo.model_validate(s.model_dump(exclude={"text"}))
        for s in (grounded.sources if grounded else [])
    ]
    html_text = xhtml(nh3.clean("\n".join(html_parts)))
    if citations:  # links and ids added after sanitizing (nh3 keeps no `id`), all escaped
        numbering = cited_numbering(citations)
        md_parts.append(references_markdown(sources, numbering).strip())
        html_text = link_markers_html(html_text) + "\n" + references_html(sources, numbering)
        sections = [s.model_copy(update={"html": link_markers_html(s.html)}) for s in sections]
    if grounded is not None:
        provenance = provenance.model_copy(
            update={
                "invented_citations_removed": grounded.removed,
                "uncited_sections": sorted(grounded.uncited),
            }
        )
    body_text = _plain(" ".join(bodies))
    words = len(body_text.split())
    first = _plain(bodies[0]) if bodies else outline.title
    sentences = re.split(r"(?<=[.!?])\s+", first)
    article = Article(
        id=article_id,
        title=outline.title,
        slug=slugify(outline.title, max_length=80, word_boundary=True) or article_id,
        excerpt=_cut(" ".join(sentences[:EXCERPT_SENTENCES]), 300),
        meta_description=_cut(first, 160),
        tags=_tags(request),
        sections=sections,
        featured_image=featured,
        images=images,
        markdown="\n\n".join(md_parts) + "\n",
        html=html_text,
        word_count=words,
        reading_time_minutes=max(1, math.ceil(words / 200)),
        language=request.language,
        provenance=provenance,
        created_at=created_at,
        metadata=request.metadata,
        sources=sources,
        citations=citations,
    )
    return seo.fill(article)


def image_ref(
    image_id: str,
    url: str,
    prompt: str,
    seed: int,
    width: int,
    height: int,
    caption: str,
    style: str | None = None,
    language: str = "en",
) -> ImageRef:
    """``caption`` is provisional: ``assemble`` sets the final one from the article."""
    return ImageRef(
        id=image_id,
        url=url,
        alt=_cut(" ".join(xml_safe(pipeline.alt_text(prompt, style, language)).split()), 125),
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
        mode="json", exclude={"webhook", "metadata", "image_prompts", "publish"}
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
