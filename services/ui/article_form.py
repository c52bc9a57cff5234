"""The article request form: every control maps onto one field of `POST /v1/articles`
(services/gateway/schemas.py), with the bounds read from that schema; the sources box is
services/ui/sources_form.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, get_args

import streamlit as st

from services.gateway.schemas import (
    DEFAULT_SECTIONS,
    LENGTH_WORDS,
    ArticleRequest,
    ImageOptions,
    TextOptions,
)
from services.image.config import SchedulerName
from services.ui.common import settings
from services.ui.limits import bounds
from services.ui.sources_form import Refused, check_fits, collect, sources_box

# Offered sizes; the image model's native size (512 for SD 1.5, 64 for `tiny`) is the default.
SIZES = ("native", "64x64", "128x128", "256x256", "512x512", "512x768", "768x512", "768x768")
SERVICE_DEFAULT = "service default"
TEXT_DEFAULTS = TextOptions()
IMAGE_DEFAULTS = ImageOptions()


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass
class Draft:
    """A submitted form: the request body, and where each of its sources came from."""

    body: dict[str, Any]
    origins: list[str] = field(default_factory=list)


def article_form() -> Draft | None:
    """Renders the form; returns the request once it is submitted and within the limits (a
    refusal is shown under the form and nothing is sent)."""
    max_body_bytes = settings().max_body_bytes
    with st.form("article"):
        topic = st.text_input(
            "Topic",
            max_chars=bounds(ArticleRequest, "topic").max_length,
            placeholder="The future of solar power",
            key="topic",
        )
        left, middle, right = st.columns(3)
        audience = left.text_input(
            "Audience",
            max_chars=bounds(ArticleRequest, "audience").max_length,
            placeholder="homeowners",
            key="audience",
        )
        tone = middle.text_input(
            "Tone",
            max_chars=bounds(ArticleRequest, "tone").max_length,
            placeholder="friendly",
            key="tone",
        )
        language = right.text_input("Language (BCP-47)", value="en", key="language")
        words_b = bounds(ArticleRequest, "target_words")
        sections_b = bounds(ArticleRequest, "sections")
        left, middle, right = st.columns(3)
        words = left.number_input(
            "Length (words)",
            min_value=words_b.int_low(),
            max_value=words_b.int_high(),
            value=LENGTH_WORDS["medium"],
            step=50,
            key="words",
        )
        sections = middle.number_input(
            "Sections",
            min_value=sections_b.int_low(),
            max_value=sections_b.int_high(),
            value=DEFAULT_SECTIONS,
            key="sections",
        )
        keywords = right.text_input(
            "Keywords (comma-separated)", placeholder="net metering, batteries", key="keywords"
        )
        review = st.checkbox(
            "Let me review the outline before the text is written",
            key="review",
            help="The article stops at `awaiting_review`: edit the headings, then continue.",
        )
        given = sources_box(max_body_bytes)

        st.markdown("**Text**")
        temperature_b = bounds(TextOptions, "temperature")
        top_p_b = bounds(TextOptions, "top_p")
        seed_b = bounds(TextOptions, "seed")
        left, middle, right = st.columns(3)
        temperature = left.slider(
            "Temperature",
            min_value=temperature_b.float_low(),
            max_value=temperature_b.float_high(),
            value=TEXT_DEFAULTS.temperature,
            step=0.05,
            key="temperature",
        )
        top_p = middle.slider(
            "Top p",
            min_value=top_p_b.float_low(0.05),
            max_value=top_p_b.float_high(),
            value=TEXT_DEFAULTS.top_p,
            step=0.05,
            key="top_p",
        )
        text_seed = right.number_input(
            "Text seed (empty: random)",
            min_value=seed_b.int_low(),
            max_value=seed_b.int_high(),
            value=None,
            step=1,
            key="text_seed",
        )

        st.markdown("**Images**")
        count_b = bounds(ImageOptions, "count")
        steps_b = bounds(ImageOptions, "steps")
        guidance_b = bounds(ImageOptions, "guidance_scale")
        image_seed_b = bounds(ImageOptions, "seed")
        left, middle, right = st.columns(3)
        count = left.number_input(
            "Images",
            min_value=count_b.int_low(),
            max_value=count_b.int_high(),
            value=IMAGE_DEFAULTS.count,
            key="count",
        )
        size = middle.selectbox("Size", SIZES, key="size")
        scheduler = right.selectbox(
            "Scheduler", (SERVICE_DEFAULT, *get_args(SchedulerName)), key="scheduler"
        )
        left, middle, right = st.columns(3)
        steps = left.slider(
            "Steps",
            min_value=steps_b.int_low(),
            max_value=steps_b.int_high(),
            value=IMAGE_DEFAULTS.steps,
            key="steps",
        )
        guidance = middle.slider(
            "Guidance (CFG scale)",
            min_value=guidance_b.float_low(),
            max_value=guidance_b.float_high(),
            value=IMAGE_DEFAULTS.guidance_scale,
            step=0.5,
            key="guidance",
        )
        image_seed = right.number_input(
            "Image seed (empty: random)",
            min_value=image_seed_b.int_low(),
            max_value=image_seed_b.int_high(),
            value=None,
            step=1,
            key="image_seed",
        )
        style = st.text_input(
            "Style (added to every derived prompt)",
            max_chars=bounds(ImageOptions, "style").max_length,
            placeholder="watercolor illustration, soft light",
            key="style",
        )
        negative = st.text_input(
            "Negative prompt (empty: the default)",
            max_chars=bounds(ImageOptions, "negative_prompt").max_length,
            placeholder="text, watermark, people",
            key="negative_prompt",
        )
        prompts = st.text_area(
            "Image prompts by hand, one a line (empty: derived from the text)",
            help="One prompt per image, the first for the featured image.",
            key="image_prompts",
        )
        submitted = st.form_submit_button("Write the article", type="primary", key="submit")

    if not submitted:
        return None
    images: dict[str, Any] = {"count": int(count), "steps": int(steps), "guidance_scale": guidance}
    if size != "native":
        images["size"] = size
    if scheduler != SERVICE_DEFAULT:
        images["scheduler"] = scheduler
    if image_seed is not None:
        images["seed"] = int(image_seed)
    if style.strip():
        images["style"] = style.strip()
    if negative.strip():
        images["negative_prompt"] = negative.strip()
    text: dict[str, Any] = {"temperature": temperature, "top_p": top_p}
    if text_seed is not None:
        text["seed"] = int(text_seed)
    body: dict[str, Any] = {
        "topic": topic.strip(),
        "target_words": int(words),
        "sections": int(sections),
        "keywords": [k.strip() for k in keywords.split(",") if k.strip()],
        "language": language.strip(),
        "text": text,
        "images": images,
    }
    if audience.strip():
        body["audience"] = audience.strip()
    if tone.strip():
        body["tone"] = tone.strip()
    if _lines(prompts):
        body["image_prompts"] = _lines(prompts)
    if review:
        body["review"] = "outline"
    try:
        sourced = collect(given)
        if sourced.specs:
            body["sources"] = sourced.specs
        if given.require_citations:
            body["require_citations"] = True
        check_fits(body, max_body_bytes)
    except Refused as refused:
        st.error(str(refused), icon=":material/block:")
        return None
    return Draft(body, sourced.origins)
