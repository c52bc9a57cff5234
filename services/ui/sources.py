"""What an article was written from and what it cites: each source's state (from `sources` of
the status), each section's citations with their passages, and the references list.

Titles and passages come from other people's documents, so they are shown as inert text:
every ASCII punctuation mark is escaped, and no link, image, heading or Streamlit directive
in them is rendered. The references list is the gateway's own Markdown (its titles escaped
there), taken from the end of the article's `markdown`.
"""

from __future__ import annotations

import re
from typing import Any

import streamlit as st

PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
OK = ":green[:material/check_circle:]"
FAILED = ":red[:material/error:]"


def inert(text: str) -> str:
    """Untrusted text as Markdown that shows exactly it, on one line."""
    return PUNCTUATION.sub(r"\\\1", " ".join(text.split()))


def _where(source: dict[str, Any]) -> str:
    if source.get("url"):
        return str(source["url"])
    if source.get("filename"):
        return str(source["filename"])
    return "pasted text"


def source_line(source: dict[str, Any]) -> str:
    """One source: title, URL or filename, and its characters of text or why it is unusable."""
    title = inert(str(source.get("title") or source.get("id", "?")))
    head = f"**{title}** · {inert(_where(source))}"
    error = source.get("error")
    if error:
        return f"{FAILED} {head} · {inert(str(error.get('type', 'error')))}: " + inert(
            str(error.get("message", ""))
        )
    chars = int(source.get("chars") or 0)
    cut = " (cut at the limit)" if source.get("truncated") else ""
    return f"{OK} {head} · {chars:,} characters{cut}"


def summary(sources: list[dict[str, Any]]) -> str:
    usable = sum(1 for s in sources if not s.get("error"))
    return f"Sources: {usable} of {len(sources)} usable"


def render_sources(sources: list[dict[str, Any]]) -> None:
    """The sources as loaded; nothing before the `sources` stage has run (or without any)."""
    if not sources:
        return
    st.markdown(f"**{summary(sources)}**")
    for source in sources:
        st.markdown(source_line(source))


def render_citations(article: dict[str, Any], index: int) -> None:
    """Section `index`'s citations: marker, source and the passage it was given."""
    if not article.get("sources"):
        return
    by_id = {s["id"]: s for s in article["sources"]}
    cited = sorted(
        (c for c in article.get("citations", []) if c.get("section") == index),
        key=lambda c: int(c["marker"]),
    )
    with st.expander("Sources cited in this section", icon=":material/format_quote:"):
        if not cited:
            st.caption("This section cites none of the passages it was given.")
        for citation in cited:
            source = by_id.get(citation["source_id"], {"id": citation["source_id"]})
            title = inert(str(source.get("title") or source["id"]))
            st.markdown(f"**\\[{int(citation['marker'])}\\]** {title} · {inert(_where(source))}")
            st.markdown(f"> {inert(str(citation['passage']))}")


def references(article: dict[str, Any]) -> tuple[str, str] | None:
    """The heading and list the gateway appends to `markdown` when the article cites anything
    (the last `## ` block: a section heading cannot come after it)."""
    if not article.get("citations"):
        return None
    _, found, block = str(article.get("markdown", "")).rpartition("\n## ")
    if not found:
        return None
    heading, _, items = block.partition("\n")
    return heading.strip(), items.strip()


def render_references(article: dict[str, Any]) -> None:
    found = references(article)
    if found:
        heading, items = found
        st.header(heading, divider="gray", anchor="references")
        st.markdown(items)
