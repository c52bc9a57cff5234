"""A finished article: rendered with its images, each section's citations, a rewrite for each
section, a redraw for each image (the regenerate routes; the new revision replaces the old in
place), the references and sources, downloads, and publishing (publishing.py)."""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from services.gateway.editorial_schemas import ImageRegenerate, SectionRegenerate
from services.ui.common import (
    gateway,
    image_label,
    section_label,
    settings,
    show_png,
    shows_errors,
)
from services.ui.limits import bounds
from services.ui.progress import image_png
from services.ui.publishing import render_publishing
from services.ui.sources import render_citations, render_references, source_line, summary

IMAGE_WIDTH = 512
PENDING = "pending_edit"  # session key: the regeneration asked for, until its revision shows


def _png(image: dict[str, Any]) -> bytes:
    config = settings()
    return image_png(config.gateway(), config.ui_api_key, image["id"])


def _ask(article_id: str, kind: str, index: int, body: dict[str, Any], what: str) -> None:
    answer = gateway().regenerate(article_id, kind, index, body)
    st.session_state[PENDING] = {"revision": answer["revision"], "what": what}
    st.rerun()


def redraw_controls(article_id: str, slot: int, image: dict[str, Any], busy: bool) -> None:
    with st.expander("Redraw this image"):
        prompt = st.text_area(
            "Prompt",
            value=image["prompt"],
            max_chars=bounds(ImageRegenerate, "prompt").max_length,
            key=f"redraw-prompt-{slot}",
        )
        seed_b = bounds(ImageRegenerate, "seed")
        seed = st.number_input(
            "Seed (empty: a new one)",
            min_value=seed_b.int_low(),
            max_value=seed_b.int_high(),
            value=None,
            step=1,
            key=f"redraw-seed-{slot}",
        )
        if st.button("Redraw", key=f"redraw-{slot}", disabled=busy):
            body: dict[str, Any] = {}
            if prompt.strip() and prompt.strip() != image["prompt"]:
                body["prompt"] = prompt.strip()
            if seed is not None:
                body["seed"] = int(seed)
            _ask(article_id, "images", slot, body, f"{image_label(slot)} redrawn")


def rewrite_controls(article_id: str, index: int, busy: bool) -> None:
    with st.expander("Rewrite this section"):
        instructions = st.text_input(
            "Instructions (optional)",
            max_chars=bounds(SectionRegenerate, "instructions").max_length,
            placeholder="shorter, with an example",
            key=f"rewrite-instructions-{index}",
        )
        if st.button("Rewrite", key=f"rewrite-{index}", disabled=busy):
            body = {"instructions": instructions.strip()} if instructions.strip() else {}
            _ask(article_id, "sections", index, body, f"{section_label(index)} rewritten")


def show_image(article_id: str, slot: int, image: dict[str, Any] | None, busy: bool) -> None:
    if image is None:
        return
    show_png(_png(image), caption=image.get("caption") or image.get("alt"), width=IMAGE_WIDTH)
    redraw_controls(article_id, slot, image, busy)


@shows_errors
def watch_edit(article_id: str, revision: int) -> None:
    """While a regeneration runs: its state, until the article shows a newer revision."""
    status = gateway().article(article_id)
    edit = status.get("edit") or {}
    if status.get("revision") != revision or edit.get("status") not in ("queued", "running"):
        st.rerun()
    index = int(edit.get("index") or 0)
    what = image_label(index) if edit.get("kind") == "image" else section_label(index)
    st.info(
        f"Making revision {edit.get('revision')}: {what} is {edit.get('status')}…",
        icon=":material/hourglass_top:",
    )


def downloads(article_id: str, article: dict[str, Any]) -> None:
    revision = int(article.get("revision", 1))
    cache = st.session_state.setdefault("exports", {})
    key = (article_id, revision)
    if key not in cache:
        client = gateway()
        cache[key] = {
            name: client.export(article_id, name, revision) for name in ("export.md", "export.html")
        }
    files = cache[key]
    slug = article.get("slug") or article_id
    left, middle, right = st.columns(3)
    left.download_button(
        "Download JSON",
        json.dumps(article, indent=2, ensure_ascii=False),
        file_name=f"{slug}.json",
        mime="application/json",
        key="download-json",
    )
    middle.download_button(
        "Download Markdown",
        files["export.md"],
        file_name=f"{slug}.md",
        mime="text/markdown",
        key="download-md",
    )
    right.download_button(
        "Download HTML",
        files["export.html"],
        file_name=f"{slug}.html",
        mime="text/html",
        key="download-html",
    )


def render_result(article_id: str, status: dict[str, Any]) -> None:
    article = status["article"]
    revision = int(status.get("revision") or article.get("revision", 1))
    edit = status.get("edit") or {}
    busy = edit.get("status") in ("queued", "running")

    pending = st.session_state.get(PENDING)
    if pending and revision >= pending["revision"]:
        st.success(f"{pending['what'].capitalize()}: revision {revision}.")
        del st.session_state[PENDING]
    elif edit.get("status") == "failed" and pending:
        message = (edit.get("error") or {}).get("message", "no reason given")
        st.error(f"The regeneration failed, the article is unchanged: {message}")
        del st.session_state[PENDING]
    if busy:
        st.fragment(run_every=settings().ui_poll_seconds)(watch_edit)(article_id, revision)

    st.title(article["title"])
    tags = ", ".join(article.get("tags", []))
    st.caption(
        f"Revision {revision} · {article['word_count']} words · "
        f"{article['reading_time_minutes']} min read · {article['language']}"
        + (f" · tags: {tags}" if tags else "")
    )
    show_image(article_id, 0, article.get("featured_image"), busy)
    if article.get("excerpt"):
        st.markdown(f"*{article['excerpt']}*")
    for index, section in enumerate(article["sections"]):
        st.header(section["heading"], divider="gray")
        show_image(article_id, index + 1, section.get("image"), busy)
        st.markdown(section["markdown"])
        render_citations(article, index)
        rewrite_controls(article_id, index, busy)
    render_references(article)
    sources = status.get("sources") or article.get("sources") or []
    if sources:
        with st.expander(summary(sources), icon=":material/library_books:"):
            for source in sources:
                st.markdown(source_line(source))
    st.divider()
    downloads(article_id, article)
    render_publishing(article_id, status)
