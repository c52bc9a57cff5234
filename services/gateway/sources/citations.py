"""Citations that cannot lie: a section's markers checked against the passages it was given.

A section's prompt numbers its passages [1]..[n]. In the text that comes back, a bracket is
*citation-like* when its content is only digits, whitespace, commas, semicolons, dots, dashes and
carets (``[3]``, ``[1, 2]``, ``[1-3]``, ``[1.5]``, ``[]``), or a single letter (``[a]``). Such a
bracket is left alone when it is Markdown rather than prose: inside code (inline or fenced), the
text of a link or image (``[1](url)``), a reference definition (``[1]: url``), the label of a
reference link (``[text][1]``), a task-list box (``- [x]``), an escaped ``\\[``, or an editorial
bracket that a word follows directly (``[t]he``). Any other bracket, ``[sic]`` included, is prose.

A citation-like bracket is *valid* when it lists whole numbers (``[2]``, ``[1,2]``, ``[ 2 ]``,
``[^2]``). A number from 1 to n is kept and becomes the article-wide number of its passage's
source; anything else (``[0]``, ``[9]`` of 4, a malformed bracket) is removed with the space
before it, and counted. Adjacent brackets form one group, written back as ``[1][3]``: ascending,
each number once.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from services.gateway.sources.extract import clean_title
from services.gateway.sources.models import SourceInfo
from services.gateway.sources.passages import Passage

_BRACKET = re.compile(r"\[([^\[\]\n]*)\]")
_CITATION_LIKE = re.compile(r"[\s\d,;.\-–—^]*|\s*[A-Za-z]\s*")
_VALID = re.compile(r"\s*\^?\d+\s*(?:[,;]\s*\^?\d+\s*)*")
_NUMBER = re.compile(r"\d+")
_PROTECTED = re.compile(
    r"^ {0,3}(?P<fence>`{3,}|~{3,})[^\n]*\n[\s\S]*?(?:^ {0,3}(?P=fence)[ \t]*$|\Z)"  # fenced code
    r"|(?P<ticks>`+)[\s\S]+?(?<!`)(?P=ticks)(?!`)"  # inline code
    r"|!?\[[^\[\]\n]*\]\([^()\n]*(?:\([^()\n]*\)[^()\n]*)*\)"  # inline link or image
    r"|^ {0,3}\[[^\[\]\n]+\]:[^\n]*"  # reference definition
    r"|<[A-Za-z][A-Za-z0-9+.-]*:[^\s<>]*>",  # autolink
    re.MULTILINE,
)
_LIST_ITEM_START = re.compile(r"[ \t]*(?:[-*+]|\d+[.)])[ \t]+")


class Citation(BaseModel):
    marker: int = Field(description="The article-wide number, as in [3].", examples=[3])
    source_id: str = Field(description="The cited source.", examples=["src_2"])
    passage: str = Field(
        description="The passage the section was given under this marker.",
        examples=["The Rance tidal power station opened in 1966."],
    )
    start: int = Field(description="Offset of the passage in its source's text.", examples=[0])
    end: int = Field(description="End offset (exclusive) of the passage.", examples=[46])


@dataclass
class CitedText:
    text: str
    citations: list[Citation] = field(default_factory=list)
    removed: int = 0  # invented or malformed markers taken out
    cited: bool = False  # at least one marker kept


@dataclass
class _Bracket:
    start: int
    end: int
    content: str


def apply_citations(text: str, given: Sequence[Passage], numbering: dict[str, int]) -> CitedText:
    """Checks and renumbers one section's markers. ``numbering`` (source id -> article marker)
    is shared by all sections of an article: a source cited for the first time gets the next
    number, so markers count up in order of first citation across the article."""
    groups = _groups(text)
    out: list[str] = []
    citations: dict[tuple[int, str, int], Citation] = {}
    removed = 0
    position = 0
    for group in groups:
        markers: list[int] = []
        for bracket in group:
            if not _VALID.fullmatch(bracket.content):
                removed += 1
                continue
            for number in map(int, _NUMBER.findall(bracket.content)):
                if not 1 <= number <= len(given):
                    removed += 1
                    continue
                passage = given[number - 1]
                marker = numbering.setdefault(passage.source_id, len(numbering) + 1)
                if marker not in markers:
                    markers.append(marker)
                key = (marker, passage.source_id, passage.start)
                if key not in citations:
                    citations[key] = Citation(
                        marker=marker,
                        source_id=passage.source_id,
                        passage=passage.text,
                        start=passage.start,
                        end=passage.end,
                    )
        start, end = group[0].start, group[-1].end
        if markers:
            out.append(text[position:start])
            out.append("".join(f"[{marker}]" for marker in sorted(markers)))
        else:  # the whole group goes, and the space that led up to it
            before = start
            while before > position and text[before - 1] in " \t":
                before -= 1
            out.append(text[position:before])
            if before == 0 or text[before - 1] == "\n":  # at a line start: the space after
                while end < len(text) and text[end] in " \t":
                    end += 1
        position = end
    out.append(text[position:])
    kept = list(citations.values())
    return CitedText("".join(out), kept, removed, bool(kept))


def _groups(text: str) -> list[list[_Bracket]]:
    """The citation-like brackets of ``text`` outside Markdown syntax, adjacent ones together."""
    protected = [(m.start(), m.end()) for m in _PROTECTED.finditer(text)]
    groups: list[list[_Bracket]] = []
    previous_end = -1  # end of the previous bracket of any kind
    previous_citation = False
    for match in _BRACKET.finditer(text):
        start, end, content = match.start(), match.end(), match.group(1)
        after = text[end : end + 1]
        label = start == previous_end and not previous_citation  # [text][label]
        previous_end = end
        previous_citation = False
        if (
            label
            or not _CITATION_LIKE.fullmatch(content)
            or any(a < end and start < b for a, b in protected)
            or (start > 0 and text[start - 1] in "\\!")
            or after == "("
            or (content.strip().isalpha() and (after.isalnum() or after == "_"))  # [t]he
            or _task_box(text, start, content)
        ):
            continue
        previous_citation = True
        bracket = _Bracket(start, end, content)
        if groups and not text[groups[-1][-1].end : start].strip(" \t"):
            groups[-1].append(bracket)
        else:
            groups.append([bracket])
    return groups


def _task_box(text: str, start: int, content: str) -> bool:
    if content not in (" ", "x", "X"):
        return False
    line_start = text.rfind("\n", 0, start) + 1
    return bool(_LIST_ITEM_START.fullmatch(text[line_start:start]))


def _cited(
    sources: Sequence[SourceInfo], numbering: Mapping[str, int]
) -> list[tuple[int, SourceInfo]]:
    by_id = {source.id: source for source in sources}
    return sorted(
        (marker, by_id[source_id]) for source_id, marker in numbering.items() if source_id in by_id
    )


def _md(text: str) -> str:
    """Text that Markdown shows as it is: no element, link or emphasis can come of it."""
    text = html.escape(text, quote=False)
    return re.sub(r"([\\`*_\[\]])", r"\\\1", text)


def _sentence(title: str) -> str:
    return title if title.endswith((".", "!", "?", "…")) else f"{title}."


def references_markdown(
    sources: Sequence[SourceInfo], numbering: Mapping[str, int], heading: str = "References"
) -> str:
    """``## References`` and a numbered list in marker order; "" when nothing is cited."""
    lines = []
    for marker, source in _cited(sources, numbering):
        entry = _sentence(_md(clean_title(source.title) or source.id))
        if source.url:
            entry += f" <{source.url}>"
        elif source.filename:
            entry += f" {_md(source.filename)}"
        lines.append(f"{marker}. {entry}")
    if not lines:
        return ""
    return f"## {_md(heading)}\n\n" + "\n".join(lines) + "\n"


def references_html(
    sources: Sequence[SourceInfo], numbering: Mapping[str, int], heading: str = "References"
) -> str:
    """The references as well-formed XHTML, each item with ``id="ref-N"`` for the markers'
    links; "" when nothing is cited."""
    items = []
    for position, (marker, source) in enumerate(_cited(sources, numbering), start=1):
        value = "" if marker == position else f' value="{marker}"'
        entry = html.escape(_sentence(clean_title(source.title) or source.id), quote=True)
        if source.url:
            url = html.escape(source.url, quote=True)
            entry += f' <a href="{url}">{url}</a>'
        elif source.filename:
            entry += " " + html.escape(clean_title(source.filename) or "", quote=True)
        items.append(f'<li id="ref-{marker}"{value}>{entry}</li>')
    if not items:
        return ""
    return (
        f'<section class="references"><h2>{html.escape(heading, quote=True)}</h2>'
        f"<ol>{''.join(items)}</ol></section>"
    )


# A comment, or a tag with its attributes (quoted values may hold ">").
_TAG = re.compile(r"<!--[\s\S]*?-->|</?[A-Za-z][^\s/>]*(?:[^>\"']|\"[^\"]*\"|'[^']*')*>")
_TAG_NAME = re.compile(r"</?([A-Za-z][^\s/>]*)")
_MARKER = re.compile(r"\[([1-9]\d{0,3})\]")
# Text inside these is left as it is: code shows markers literally, a link cannot hold a link.
_NO_LINKS = frozenset({"a", "code", "pre", "kbd", "samp", "script", "style", "sup", "textarea"})


def link_markers_html(html_text: str) -> str:
    """Rewrites each [n] in the text of rendered HTML to
    ``<sup class="citation"><a href="#ref-n">[n]</a></sup>``; tags, attributes and the text of
    code, pre and links stay as they are."""
    out: list[str] = []
    depth: dict[str, int] = {}
    position = 0
    for match in [*_TAG.finditer(html_text), None]:
        stop = match.start() if match else len(html_text)
        chunk = html_text[position:stop]
        if any(depth.values()):
            out.append(chunk)
        else:
            out.append(_MARKER.sub(_link, chunk))
        if match is None:
            break
        tag = match.group(0)
        out.append(tag)
        name = _TAG_NAME.match(tag)
        if name and name.group(1).lower() in _NO_LINKS and not tag.endswith("/>"):
            key = name.group(1).lower()
            depth[key] = max(0, depth.get(key, 0) + (-1 if tag.startswith("</") else 1))
        position = match.end()
    return "".join(out)


def _link(match: re.Match[str]) -> str:
    number = match.group(1)
    return f'<sup class="citation"><a href="#ref-{number}">[{number}]</a></sup>'
