"""Passages and retrieval: sources cut into pieces a prompt can carry, ranked by BM25.

BM25 comes from bm25s: maintained, numpy only, and it scores with Lucene's IDF,
``log(1 + (N - n + 0.5) / (n + 0.5))``, which stays positive. rank-bm25 (unreleased since 2022)
uses the Okapi IDF, which is zero for a term in half the passages and negative above that, so
with the handful of passages an article has, a word that matters can count for nothing or
against a passage.

Tokens are NFKC-normalized, case-folded runs of Unicode word characters, less a short English
stopword list; BM25's IDF discounts the common words of other languages by itself. Text in
scripts written without spaces (Chinese, Japanese) becomes overlapping character pairs, as
Lucene's CJK analyzer does, since a whole run of such text would otherwise be one token.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.gateway.sources.models import Source

if TYPE_CHECKING:
    import bm25s

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
# A sentence ends at . ! ? … (and their CJK forms, which need no space after them), with any
# closing quotes or brackets that follow.
_SENTENCE_END = re.compile(r"(?:[.!?…]+[\"'”’)\]]*(?=\s)|[。！？]+[」』”’）]*)")
_WORD = re.compile(r"\w+")
_NO_SPACE_SCRIPT = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself
    yourselves""".split()
)


@dataclass(frozen=True)
class Passage:
    source_id: str
    index: int  # position within its source
    text: str  # == the source's text[start:end]
    start: int
    end: int


def split_passages(source: Source, target_chars: int = 700) -> list[Passage]:
    """The source's text in pieces of at most about ``target_chars``: whole paragraphs where
    they fit (short ones share a passage), long paragraphs cut at sentence ends, a sentence
    longer than that at a space. A passage never starts or ends inside a word, and always
    satisfies ``source.text[p.start:p.end] == p.text``."""
    if source.error is not None or not source.text.strip():
        return []
    text = source.text
    passages: list[Passage] = []
    start = end = -1
    for unit_start, unit_end in _units(text, target_chars):
        if start < 0:
            start, end = unit_start, unit_end
            continue
        grown = unit_end - start
        # A short passage (a heading, a one-line paragraph) joins what follows even a little
        # past the target, rather than standing alone.
        if grown <= target_chars or (
            end - start < target_chars // 4 and grown <= target_chars * 3 // 2
        ):
            end = unit_end
            continue
        passages.append(_passage(source, len(passages), start, end))
        start, end = unit_start, unit_end
    if start < 0:
        return passages
    last = passages[-1] if passages else None
    if last and end - start < target_chars // 4 and end - last.start <= target_chars * 3 // 2:
        passages[-1] = _passage(source, last.index, last.start, end)  # a short tail joins
    else:
        passages.append(_passage(source, len(passages), start, end))
    return passages


def _passage(source: Source, index: int, start: int, end: int) -> Passage:
    return Passage(source.id, index, source.text[start:end], start, end)


def _units(text: str, target: int) -> Iterator[tuple[int, int]]:
    """Spans of paragraphs, or of sentences and word runs where a paragraph is too long."""
    position = 0
    for match in [*_PARAGRAPH_BREAK.finditer(text), None]:
        stop = match.start() if match else len(text)
        span = _strip(text, position, stop)
        if span:
            if span[1] - span[0] <= target:
                yield span
            else:
                yield from _sentences(text, *span, target)
        position = match.end() if match else stop


def _sentences(text: str, start: int, end: int, target: int) -> Iterator[tuple[int, int]]:
    position = start
    ends = [m.end() for m in _SENTENCE_END.finditer(text, start, end)]
    for stop in [*ends, end]:
        span = _strip(text, position, stop)
        if span:
            if span[1] - span[0] <= target:
                yield span
            else:
                yield from _words(text, *span, target)
        position = stop


def _words(text: str, start: int, end: int, target: int) -> Iterator[tuple[int, int]]:
    while end - start > target:
        cut = max(
            text.rfind(" ", start, start + target + 1), text.rfind("\n", start, start + target + 1)
        )
        if cut <= start:  # no space at all (a URL, or a script without spaces): cut at the target
            cut = start + target
        span = _strip(text, start, cut)
        if span:
            yield span
        start = cut
        while start < end and text[start].isspace():
            start += 1
    span = _strip(text, start, end)
    if span:
        yield span


def _strip(text: str, start: int, end: int) -> tuple[int, int] | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def summary(source: Source, chars: int = 300) -> str:
    """The first sentences of the source, at most ``chars`` characters, on one line (Markdown
    headings left out), for the outline prompt; "" for an unusable source."""
    if source.error is not None:
        return ""
    lines = (
        line.lstrip("> \t")
        for line in source.text[: chars * 20].splitlines()
        if not line.lstrip().startswith("#")  # headings: the title is in the prompt already
    )
    flat = " ".join(" ".join(lines).split())
    if len(flat) <= chars:
        return flat
    ends = [m.end() for m in _SENTENCE_END.finditer(flat) if m.end() <= chars]
    if ends:
        return flat[: ends[-1]].strip()
    cut = flat.rfind(" ", 0, chars)  # one long first sentence: up to a word break, then "…"
    return flat[: cut if cut > 0 else chars - 1].rstrip() + "…"


def tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    for word in _WORD.findall(unicodedata.normalize("NFKC", text).casefold()):
        if _NO_SPACE_SCRIPT.search(word):
            tokens.extend(_bigrams(word))
        elif word not in _STOPWORDS:
            tokens.append(word)
    return tokens


def _bigrams(word: str) -> list[str]:
    if len(word) == 1:
        return [word]
    return [word[k : k + 2] for k in range(len(word) - 1)]


class PassageIndex:
    """BM25 over the passages of an article's usable sources."""

    def __init__(self, passages: Sequence[Passage]) -> None:
        import bm25s

        self.passages = list(passages)
        self._bm25: bm25s.BM25 | None = None
        if self.passages:
            self._bm25 = bm25s.BM25()
            self._bm25.index([tokenize(p.text) for p in self.passages], show_progress=False)

    def search(self, query: str, k: int = 4) -> list[Passage]:
        """The ``k`` best passages for ``query``, best first (ties keep source order); only
        passages that share a term with the query, so [] when none does."""
        terms = tokenize(query)
        if self._bm25 is None or not terms or k <= 0:
            return []
        scores = self._bm25.get_scores(terms)
        ranked = sorted(range(len(self.passages)), key=lambda i: (-float(scores[i]), i))
        return [self.passages[i] for i in ranked[:k] if scores[i] > 0]
