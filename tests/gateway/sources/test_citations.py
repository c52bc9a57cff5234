"""Citations: kept markers renumbered article-wide, invented and malformed ones removed and
counted, Markdown syntax left alone; the references list and the footnote links."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from services.gateway import assemble
from services.gateway.sources import (
    Citation,
    Passage,
    Source,
    apply_citations,
    link_markers_html,
    references_html,
    references_markdown,
)

A = Passage("src_2", 0, "The barrage opened in 1966.", 0, 27)
B = Passage("src_1", 3, "It makes 240 MW at peak.", 400, 424)
C = Passage("src_2", 1, "The estuary silted up.", 28, 50)
D = Passage("src_3", 0, "The turbines run both ways.", 0, 27)
GIVEN = [A, B, C, D]  # the prompt numbered them [1] [2] [3] [4]

SECTION = """\
The Rance barrage opened in 1966 [2]. It makes 240 MW [1][3], more than its rivals [1, 3].
Its turbines run both ways [ 4 ] [4,4]; the silt came later [2, 9].
Some say it was the first [9]. Others disagree [0], or say [a] and [1-3] and [] and [1.5].
[7] A line that starts with an invented marker.
See [the operator](https://example.com/rance[1]) and ![a diagram](figure[2].png),
[sic], `list[3]` and \\[4\\].
- [x] a task box stays
A reference link [text][1] stays, and so does [t]he editorial bracket."""

EXPECTED = """\
The Rance barrage opened in 1966 [1]. It makes 240 MW [2], more than its rivals [2].
Its turbines run both ways [3]; the silt came later [1].
Some say it was the first. Others disagree, or say and and and.
A line that starts with an invented marker.
See [the operator](https://example.com/rance[1]) and ![a diagram](figure[2].png),
[sic], `list[3]` and \\[4\\].
- [x] a task box stays
A reference link [text][1] stays, and so does [t]he editorial bracket."""


def citation(marker: int, passage: Passage) -> Citation:
    return Citation(
        marker=marker,
        source_id=passage.source_id,
        passage=passage.text,
        start=passage.start,
        end=passage.end,
    )


def test_valid_markers_are_kept_invented_and_malformed_ones_removed_exactly() -> None:
    numbering: dict[str, int] = {}
    result = apply_citations(SECTION, GIVEN, numbering)
    assert result.text == EXPECTED
    # [9] in [2, 9], then [9] [0] [a] [1-3] [] [1.5], then [7] at the line start.
    assert result.removed == 8
    assert result.cited is True
    # Numbers follow first citation: [2] is src_1, then [1] and [3] are both src_2.
    assert numbering == {"src_1": 1, "src_2": 2, "src_3": 3}
    assert result.citations == [citation(1, B), citation(2, A), citation(2, C), citation(3, D)]


def test_numbering_runs_across_the_sections_of_an_article() -> None:
    numbering: dict[str, int] = {}
    apply_citations(SECTION, GIVEN, numbering)
    later = [Passage("src_3", 2, "A later study agrees.", 90, 111), Passage("src_4", 0, "E.", 0, 2)]
    second = apply_citations("Later work [2] confirms it [1]. Nothing else [3].", later, numbering)
    assert second.text == "Later work [4] confirms it [3]. Nothing else."
    assert (second.removed, second.cited) == (1, True)
    assert numbering == {"src_1": 1, "src_2": 2, "src_3": 3, "src_4": 4}
    assert [(c.marker, c.source_id, c.start) for c in second.citations] == [
        (4, "src_4", 0),
        (3, "src_3", 90),
    ]
    third = apply_citations("Only an invented one [5].", later, numbering)
    assert (third.text, third.removed, third.cited, third.citations) == (
        "Only an invented one.",
        1,
        False,
        [],
    )
    plain = apply_citations("No markers at all.", later, numbering)
    assert (plain.text, plain.removed, plain.cited) == ("No markers at all.", 0, False)
    assert len(numbering) == 4


def test_markers_in_code_blocks_are_left_alone() -> None:
    text = "Before [1].\n\n```python\nitems[2] = values[0]\n```\n\nAfter [9]."
    result = apply_citations(text, GIVEN, {})
    assert result.text == "Before [1].\n\n```python\nitems[2] = values[0]\n```\n\nAfter."
    assert result.removed == 1


SOURCES = [
    Source(id="src_1", type="url", title="Rance barrage", url="https://example.com/rance"),
    Source(id="src_2", type="file", title="Annual report 2024", filename="report.pdf"),
    Source(id="src_3", type="text", title="Press release"),
    Source(
        id="src_4",
        type="url",
        title="Tides *explained* & [more] <b>",
        url="https://example.com/tides?a=1&b=2",
    ),
    Source(id="src_5", type="text", title="Never cited"),
]
NUMBERING = {"src_3": 3, "src_1": 1, "src_4": 4, "src_2": 2}


def test_references_markdown_lists_cited_sources_in_marker_order() -> None:
    assert references_markdown(SOURCES, NUMBERING) == (
        "## References\n\n"
        "1. Rance barrage. <https://example.com/rance>\n"
        "2. Annual report 2024. report.pdf\n"
        "3. Press release.\n"
        "4. Tides \\*explained\\* &amp; \\[more\\] &lt;b&gt;. <https://example.com/tides?a=1&b=2>\n"
    )
    assert references_markdown(SOURCES, {}) == ""
    assert references_markdown(SOURCES, {"src_1": 1}, heading="Quellen").startswith("## Quellen")


def test_references_html_is_escaped_well_formed_xhtml_with_anchors() -> None:
    html = references_html(SOURCES, NUMBERING)
    assert html == (
        '<section class="references"><h2>References</h2><ol>'
        '<li id="ref-1">Rance barrage. '
        '<a href="https://example.com/rance">https://example.com/rance</a></li>'
        '<li id="ref-2">Annual report 2024. report.pdf</li>'
        '<li id="ref-3">Press release.</li>'
        '<li id="ref-4">Tides *explained* &amp; [more] &lt;b&gt;. '
        '<a href="https://example.com/tides?a=1&amp;b=2">https://example.com/tides?a=1&amp;b=2</a>'
        "</li></ol></section>"
    )
    section = ET.fromstring(html)
    assert [li.get("id") for li in section.iter("li")] == ["ref-1", "ref-2", "ref-3", "ref-4"]
    assert references_html(SOURCES, {}) == ""


def test_markers_in_rendered_html_become_footnote_links() -> None:
    html = (
        '<p>Fact [1] and <code>[2]</code>, <a href="#x">[3]</a>, '
        '<img alt="[4]" src="a[5].png" /> and [12].</p><pre><code>[1]</code></pre><p>[0] stays</p>'
    )
    assert link_markers_html(html) == (
        '<p>Fact <sup class="citation"><a href="#ref-1">[1]</a></sup> and <code>[2]</code>, '
        '<a href="#x">[3]</a>, <img alt="[4]" src="a[5].png" /> and '
        '<sup class="citation"><a href="#ref-12">[12]</a></sup>.</p>'
        "<pre><code>[1]</code></pre><p>[0] stays</p>"
    )


def test_a_cited_section_renders_to_linked_well_formed_html() -> None:
    """The path the article takes: check the markers, escape and render the Markdown as the
    assembler does, link the markers, append the references."""
    numbering: dict[str, int] = {}
    cited = apply_citations("Opened in 1966 [2], silted later [3] [9].", GIVEN, numbering)
    body = link_markers_html(assemble.render(assemble.md_escape(cited.text)))
    page = f"<div>{body}{references_html(SOURCES, numbering)}</div>"
    root = ET.fromstring(page)
    links = [a.get("href", "") for a in root.iter("a")]
    anchors = {li.get("id") for li in root.iter("li")}
    assert [link for link in links if link.startswith("#")] == ["#ref-1", "#ref-2"]
    assert {"ref-1", "ref-2"} <= anchors
