"""Live progress of an article: stage, tokens, its sources as loaded, and each image's steps
and latest preview.

The view reads `GET /v1/articles/{id}` every ARTICLEFORGE_UI_POLL_SECONDS inside a fragment,
so only this part of the page is redrawn; once the article leaves its working states the whole
page runs again and shows the review form, the result or the failure.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import streamlit as st

from services.ui.common import (
    decode_data_url,
    gateway,
    image_label,
    settings,
    show_png,
    shows_errors,
)
from services.ui.sources import render_sources

WORKING = frozenset({"queued", "writing", "illustrating", "assembling"})
STAGES = {
    "queued": "Waiting for a worker",
    "sources": "Reading the sources",
    "outline": "Writing the outline",
    "sections": "Writing the sections",
    "image_prompts": "Writing the image prompts",
    "images": "Drawing the images",
    "assemble": "Assembling the article",
    "webhook": "Announcing it",
    "done": "Done",
}
PREVIEW_WIDTH = 192


def image_id_of(url: str) -> str:
    """`img_…` from an image URL (`…/v1/images/img_…?signature=…`)."""
    return urlparse(url).path.rsplit("/", 1)[-1]


@st.cache_data(max_entries=512, show_spinner=False)
def image_png(gateway_url: str, api_key: str | None, image_id: str) -> bytes:
    """An image's PNG through the gateway (ids are never reused, so it caches for good)."""
    return gateway().image(image_id)


def render_images(images: list[dict[str, Any]]) -> None:
    if not images:
        return
    per_row = min(len(images), 4)
    columns = st.columns(per_row)
    for position, entry in enumerate(images):
        with columns[position % per_row]:
            index, state = int(entry.get("index", position)), entry.get("state", "queued")
            steps = entry.get("steps")
            if steps:
                counter = f"step {entry.get('step', 0)}/{steps}"
            elif entry.get("step_progress") is False and state != "queued":
                counter = "the image server reports no steps"  # ARTICLEFORGE_IMAGE_BACKEND=openai
            else:
                counter = "not started"
            label = image_label(index)
            st.markdown(f"**{label.capitalize()}** · {state} · {counter}")
            if entry.get("preview"):
                shown = entry.get("preview_step") or entry.get("step")
                show_png(
                    decode_data_url(entry["preview"]),
                    caption=f"{label}: preview at step {shown}",
                    width=PREVIEW_WIDTH,
                )
            elif state == "done" and entry.get("url"):
                config = settings()
                png = image_png(config.gateway(), config.ui_api_key, image_id_of(entry["url"]))
                show_png(png, caption=f"{label}: finished", width=PREVIEW_WIDTH)


def render_progress(status: dict[str, Any]) -> None:
    progress = status.get("progress") or {}
    stage = str(progress.get("stage", "queued"))
    percent = float(progress.get("percent", 0))
    st.progress(min(percent, 100) / 100, text=f"{STAGES.get(stage, stage)} · {percent:.0f} %")
    left, middle, right = st.columns(3)
    left.metric("Status", status.get("status", "?"))
    middle.metric("Tokens written", progress.get("tokens", 0))
    right.metric("Images", f"{progress.get('images_done', 0)}/{progress.get('images_total', 0)}")
    outline = status.get("outline")
    if outline:
        st.markdown(f"**{outline['title']}**")
        st.markdown("\n".join(f"1. {heading}" for heading in outline["headings"]))
    render_sources(list(status.get("sources") or []))
    render_images(list(progress.get("images") or []))


@shows_errors
def follow(article_id: str) -> None:
    """The fragment's body: one look at the article."""
    status = gateway().article(article_id)
    if status["status"] not in WORKING:
        st.rerun()  # the page shows what comes next
    render_progress(status)
    if st.button("Cancel", key="cancel"):
        gateway().cancel(article_id)
        st.rerun()


def follow_live(article_id: str) -> None:
    """`follow` as a fragment that runs again every poll interval, while it is on the page."""
    st.fragment(run_every=settings().ui_poll_seconds)(follow)(article_id)
