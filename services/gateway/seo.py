"""SEO fields beside ``meta_description``: a short title, Open Graph and Twitter card values, and
a schema.org ``Article`` JSON-LD object. All of them come from the article itself, so they
change with each revision and never claim what the article does not hold (no author, no
publisher: the CMS knows those, we do not).
"""

from __future__ import annotations

from typing import Any

from services.gateway.schemas import Article

SEO_TITLE_CHARS = 60  # what search results show before they cut
HEADLINE_CHARS = 110  # Google's limit for a schema.org Article headline


def cut(text: str, limit: int) -> str:
    """At most ``limit`` characters, cut at a word boundary with an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    if " " in head:
        head = head.rsplit(" ", 1)[0]
    return head.rstrip(",;:-–— ") + "…"


def fill(article: Article) -> Article:
    """The article with its SEO fields derived from its title, description and images."""
    seo_title = cut(article.title, SEO_TITLE_CHARS)
    description = article.meta_description
    image = article.featured_image.url if article.featured_image else None
    open_graph = {
        "og:type": "article",
        "og:title": seo_title,
        "og:description": description,
        "og:locale": article.language.replace("-", "_"),
    }
    twitter = {
        "twitter:card": "summary_large_image" if image else "summary",
        "twitter:title": seo_title,
        "twitter:description": description,
    }
    json_ld: dict[str, Any] = {
        "@context": "https://schema.org",
        "@type": "Article",
        "headline": cut(article.title, HEADLINE_CHARS),
        "description": description,
        "datePublished": article.created_at,
        "dateModified": article.updated_at or article.created_at,
        "inLanguage": article.language,
        "wordCount": article.word_count,
    }
    if image:
        open_graph["og:image"] = image
        twitter["twitter:image"] = image
        json_ld["image"] = [ref.url for ref in article.images] or [image]
        if article.featured_image and article.featured_image.alt:
            open_graph["og:image:alt"] = article.featured_image.alt
            twitter["twitter:image:alt"] = article.featured_image.alt
    if article.tags:
        json_ld["keywords"] = ", ".join(article.tags)
    if article.sections:
        json_ld["articleSection"] = [section.heading for section in article.sections]
    return article.model_copy(
        update={
            "seo_title": seo_title,
            "open_graph": open_graph,
            "twitter": twitter,
            "json_ld": json_ld,
        }
    )
