"""Grounded articles in the pipeline: the sources in the prompts, the citations in the article.

* On the real tiny text engine: the outline prompt lists every usable source; each section
  prompt carries numbered passages of the sources and the instruction to cite them, after the
  article's shared preamble (so the prefix cache still shares it); with ``require_citations``
  a section that cites nothing is written once more with another seed and then listed as
  uncited (the tiny model writes byte soup, so it never cites).
* From section texts with markers (what a model that cites writes): kept markers become links
  to a references list at the end of the Markdown, the HTML, both exports and the CMS post
  body; invented and malformed markers are gone and counted in the provenance.
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.gateway import export, grounding
from services.gateway.pipeline import Outline, section_preamble, write_outline, write_sections
from services.gateway.publish.common import post_body
from services.gateway.schemas import ArticleRequest
from services.gateway.sources import TextSource, load_sources
from tests.gateway.test_pipeline import RecordingText
from tests.grounded_article import written_with_citations

BATTERIES = (
    "Home batteries store the surplus of a sunny afternoon for the evening. A typical lithium "
    "iron phosphate battery holds 10 kWh and lasts about 6,000 cycles."
)
COSTS = (
    "Rooftop panels cost about 2.50 dollars per watt installed in 2025, so a 6 kW system "
    "costs near 15,000 dollars before the federal tax credit of 30 percent."
)
PERMITS = (
    "Most towns ask for an electrical permit and a structural check of the roof before the "
    "utility signs an interconnection agreement for net metering."
)


def _sources() -> list[TextSource]:
    return [
        TextSource(type="text", title="Battery guide", text=BATTERIES),
        TextSource(type="text", title="Cost survey 2025", text=COSTS),
        TextSource(type="text", title="Permits handbook", text=PERMITS),
    ]


@pytest.fixture(scope="module")
def tiny_engine(cache_dir: Path) -> Iterator[Any]:
    from services.text.config import TextSettings
    from services.text.engine import TextEngine
    from services.text.loading import load_text_model

    settings = TextSettings(_env_file=None, text_model="tiny", text_device="cpu")
    engine = TextEngine(settings, load_text_model(settings))
    engine.start()
    yield engine
    engine.shutdown()


def test_the_prompts_carry_the_sources_and_the_instruction_to_cite(tiny_engine: Any) -> None:
    request = ArticleRequest(
        topic="Solar power for homeowners",
        sections=3,
        target_words=180,
        sources=_sources(),
        require_citations=True,
    )
    loaded = asyncio.run(load_sources(request.sources))
    assert [s.id for s in loaded] == ["src_1", "src_2", "src_3"] and all(s.usable for s in loaded)
    text = RecordingText(tiny_engine)
    grounded = grounding.Grounding(loaded, require=True)
    outline_prompt_seen = asyncio.run(write_outline(text, request, 7, loaded))
    assert outline_prompt_seen.headings
    for source in loaded:
        assert f'"{source.title}": ' in text.bodies[0]["prompt"]
    # Headings named after the sources, so that retrieval has words to match.
    outline = Outline(
        title="Solar power at home",
        headings=["Batteries", "Costs and the tax credit", "The electrical permit"],
    )
    bodies, fallbacks = asyncio.run(write_sections(text, request, outline, 7, grounded=grounded))
    prompts = [b["prompt"] for b in text.bodies[1:]]
    preamble = section_preamble(request, outline)
    first = prompts[:3]
    assert all(p.startswith(preamble) for p in first)  # the shared prefix comes first
    for prompt, words in zip(
        first, ("6,000 cycles", "tax credit", "structural check"), strict=True
    ):
        assert "Sources for this section: [1] (" in prompt and words in prompt
        assert "cite each one you use with its number in brackets, like [1]" in prompt
    # The tiny model cites nothing: each section was written once more, with another seed,
    # and all three are listed as uncited; none had a marker to keep or to remove.
    assert len(prompts) == 6 and prompts[3:] == first
    seeds = [b["seed"] for b in text.bodies[1:]]
    assert seeds[3:] == [s + 1000 for s in seeds[:3]]
    assert grounded.uncited == [0, 1, 2] and grounded.citations == {0: [], 1: [], 2: []}
    assert len(bodies) == 3 and all(bodies)
    assert set(fallbacks) <= {f"section:{k}" for k in range(3)}


def test_kept_markers_link_to_the_references_and_invented_ones_are_gone() -> None:
    request = ArticleRequest(topic="Solar power for homeowners", sections=2, sources=_sources())
    outline = Outline(title="Solar power at home", headings=["Costs", "Batteries"])
    # What a citing model writes: section 1 cites its passage 1 (the cost survey) and an
    # invented [7]; section 2 cites its passage 1 (the battery guide) twice and a malformed [x].
    texts = [
        "A 6 kW system costs near 15,000 dollars [1]. Prices fall every year [7].",
        "A battery lasts about 6,000 cycles [1][1]. Most owners add one later [x].",
    ]
    written = written_with_citations(request, outline, texts)
    grounded, bodies, article = written.grounded, written.bodies, written.article
    assert written.given[0][0].source_id == "src_2" and written.given[1][0].source_id == "src_1"
    assert bodies == [
        "A 6 kW system costs near 15,000 dollars [1]. Prices fall every year.",
        "A battery lasts about 6,000 cycles [2]. Most owners add one later.",
    ]
    assert grounded.removed == 2 and grounded.numbering == {"src_2": 1, "src_1": 2}
    assert article.provenance.invented_citations_removed == 2
    assert [(c.marker, c.source_id, c.section) for c in article.citations] == [
        (1, "src_2", 0),
        (2, "src_1", 1),
    ]
    assert (
        article.citations[0].passage == COSTS[article.citations[0].start : article.citations[0].end]
    )
    assert [s.id for s in article.sources] == ["src_1", "src_2", "src_3"]
    # Markdown: the markers as written, and the references in marker order at the end.
    assert article.markdown.rstrip().endswith(
        "## References\n\n1. Cost survey 2025.\n2. Battery guide."
    )
    assert "Permits handbook" not in article.markdown  # given to no section, cited by none
    # HTML (the article's, both exports', the CMS post body's): each kept marker is a link to
    # its reference's id, the references close the article, and the whole is well-formed.
    page = export.html_page(article)
    for html in (article.html, page, post_body(article, {})):
        assert '<a href="#ref-1">[1]</a>' in html and '<a href="#ref-2">[2]</a>' in html
        assert '<li id="ref-1">' in html and '<li id="ref-2">' in html
        assert "[7]" not in html and "[x]" not in html
    ET.fromstring(f"<root>{article.html}</root>")
    ET.fromstring(f"<root>{post_body(article, {})}</root>")
    assert "## References" in export.markdown_document(article)
    assert article.sections[0].html.count('href="#ref-1"') == 1
