"""Grounded writing: what an article's sources add to its prompts, and what is kept of the
citations its sections write (``services.gateway.sources`` does the loading, the passages, the
retrieval and the marker arithmetic; this module applies them to one article).

* The outline prompt lists the usable sources, each with its title and a short summary.
* Each section prompt carries the passages most relevant to the section's heading (BM25 over
  every usable source's passages, fused with embedding similarity where an embedding model is
  configured), numbered ``[1]``..``[k]`` for that section, and the instruction to cite them.
* After the section is written its markers are rewritten to article-wide numbers (the n-th
  source cited in the article is ``[n]``, in order of first citation, section by section),
  markers that point at nothing it was given are removed and counted, and each kept one
  becomes a ``Citation``. With ``require_citations`` a section that cites nothing is written
  once more (another seed) and, if it still cites nothing, listed in ``uncited``.

Numbering runs in section order after all sections are written, so it does not depend on
which section the text engine finished first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.gateway.sources import (
    Citation,
    Passage,
    PassageIndex,
    Source,
    apply_citations,
    split_passages,
    summary,
)
from services.gateway.sources.embeddings import HybridIndex, load_embedder

PASSAGES_PER_SECTION = 4
# At most this many characters of passages in one section prompt (about 700 Llama tokens),
# so that a prompt stays well inside a 2,048- or 4,096-token window with the section's room.
SECTION_PASSAGE_CHARS = 2400
SUMMARY_CHARS = 240


def usable(sources: Sequence[Source]) -> list[Source]:
    return [s for s in sources if s.error is None and s.text.strip()]


def outline_block(sources: Sequence[Source]) -> str:
    """What the outline prompt adds: the sources to plan from."""
    listed = "; ".join(f'"{s.title}": {summary(s, SUMMARY_CHARS)}' for s in usable(sources))
    return f" Plan it from these sources: {listed}." if listed else ""


def section_block(passages: Sequence[Passage], titles: dict[str, str]) -> str:
    """What a section prompt adds before it names the section: its numbered passages."""
    if not passages:
        return ""
    numbered = " ".join(
        f'[{k}] ({titles.get(p.source_id, p.source_id)}) "{p.text}"'
        for k, p in enumerate(passages, start=1)
    )
    return (
        f" Sources for this section: {numbered} Use only facts from these sources where you "
        "state facts, and cite each one you use with its number in brackets, like [1]; never "
        "cite a number that is not listed here."
    )


@dataclass
class Grounding:
    sources: list[Source]
    require: bool = False
    numbering: dict[str, int] = field(default_factory=dict)
    citations: dict[int, list[Citation]] = field(default_factory=dict)
    removed: int = 0
    uncited: list[int] = field(default_factory=list)
    # ARTICLEFORGE_SOURCES_EMBEDDING_MODEL: set, passages are ranked by BM25 and embedding
    # similarity fused (``HybridIndex``); None, by BM25 alone. The model is loaded (once per
    # process) only when passages are first asked for, so assembling an article never loads it.
    embedding_model: str | None = None
    cache_dir: Path | None = None
    _index: PassageIndex | HybridIndex | None = None

    @property
    def index(self) -> PassageIndex | HybridIndex:
        if self._index is None:
            passages = [p for s in usable(self.sources) for p in split_passages(s)]
            if self.embedding_model is not None:
                assert self.cache_dir is not None, "an embedding model is built in cache_dir"
                embedder = load_embedder(self.embedding_model, self.cache_dir)
                self._index = HybridIndex(passages, embedder)
            else:
                self._index = PassageIndex(passages)
        return self._index

    @property
    def titles(self) -> dict[str, str]:
        return {s.id: s.title for s in self.sources}

    def passages_for(self, title: str, heading: str) -> list[Passage]:
        """The passages a section is given: those nearest its heading (and the title)."""
        found = self.index.search(f"{heading} {heading} {title}", PASSAGES_PER_SECTION)
        if not found:
            # Nothing shares a word with the heading: the title alone, so the section still
            # has something to cite rather than nothing.
            found = self.index.search(title, PASSAGES_PER_SECTION)
        kept: list[Passage] = []
        room = SECTION_PASSAGE_CHARS
        for passage in found:  # best first, while they fit
            if len(passage.text) > room and kept:
                break
            kept.append(passage)
            room -= len(passage.text)
        return kept

    def prompt_for(self, title: str, heading: str) -> tuple[str, list[Passage]]:
        given = self.passages_for(title, heading)
        return section_block(given, self.titles), given

    @staticmethod
    def cites(text: str, given: Sequence[Passage]) -> bool:
        """Whether ``text`` keeps at least one marker (numbering left untouched)."""
        return bool(given) and apply_citations(text, given, {}).cited

    def settle(self, k: int, text: str, given: Sequence[Passage]) -> str:
        """Section ``k``'s final text with its markers rewritten to the article's numbers;
        call it in section order. With ``require``, a section that keeps no marker is listed
        in ``uncited``."""
        result = apply_citations(text, given, self.numbering)
        self.citations[k] = list(result.citations)
        self.removed += result.removed
        if self.require and not result.cited and k not in self.uncited:
            self.uncited.append(k)
        return result.text

    def record(self) -> dict[str, Any]:
        """What the store keeps of it (JSON), besides the sources themselves."""
        return {
            "numbering": self.numbering,
            "citations": {
                str(k): [c.model_dump() for c in cs] for k, cs in sorted(self.citations.items())
            },
            "removed": self.removed,
            "uncited": sorted(self.uncited),
        }

    def restore(self, record: dict[str, Any]) -> None:
        """Takes up a stored ``record`` (a section rewrite continues the article's numbering)."""
        self.numbering = {str(k): int(v) for k, v in record.get("numbering", {}).items()}
        self.citations = {
            int(k): [Citation.model_validate(c) for c in cs]
            for k, cs in record.get("citations", {}).items()
        }
        self.removed = int(record.get("removed", 0))
        self.uncited = [int(k) for k in record.get("uncited", [])]

    def rewrite(self, k: int, text: str, given: Sequence[Passage]) -> str:
        """Section ``k`` written again (an editorial rewrite): its old citations and its place
        in ``uncited`` give way to the new text's."""
        self.citations.pop(k, None)
        self.uncited = [u for u in self.uncited if u != k]
        return self.settle(k, text, given)

    def cited_citations(self) -> list[tuple[int, Citation]]:
        """(section, citation) of every kept citation, in section order."""
        return [(k, c) for k in sorted(self.citations) for c in self.citations[k]]
