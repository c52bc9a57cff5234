"""An article assembled from section texts that cite, as the pipeline assembles one: what the
grounding tests and the studio's citation rendering test start from (the tiny model never
writes a marker, so a citing model's output is given here as text)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from services.gateway import assemble, grounding
from services.gateway.pipeline import Outline
from services.gateway.schemas import Article, ArticleRequest
from services.gateway.sources import Passage, load_sources


@dataclass
class Written:
    grounded: grounding.Grounding
    given: list[list[Passage]]  # each section's passages, as its prompt numbered them
    bodies: list[str]  # the texts with their markers settled
    article: Article


def written_with_citations(request: ArticleRequest, outline: Outline, texts: list[str]) -> Written:
    """``texts[k]`` is what section k's model wrote, markers numbered as its prompt gave them."""
    grounded = grounding.Grounding(asyncio.run(load_sources(request.sources)))
    given = [grounded.passages_for(outline.title, h) for h in outline.headings]
    bodies = [grounded.settle(k, text, given[k]) for k, text in enumerate(texts)]
    provenance = assemble.provenance(request, "tiny", None, None, 7, [], {}, [])
    article = assemble.assemble(
        "art_" + "0" * 24,
        request,
        outline,
        bodies,
        [],
        provenance,
        "2026-12-07T00:00:00Z",
        grounded,
    )
    return Written(grounded, given, bodies, article)
