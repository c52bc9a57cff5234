"""Pipeline stages on their own: tolerant parsing, fallbacks, sanitized assembly, signing."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook

from services.gateway import assemble, pipeline
from services.gateway.schemas import ArticleRequest
from services.gateway.webhooks import WebhookRefused, check_url, sign

REQUEST = ArticleRequest(topic="The future of solar power", sections=3, keywords=["photovoltaics"])


class ScriptedText:
    """A TextBackend that answers with fixed text, standing in for model output we choose.

    The model code itself is exercised by the whole-system tests; here the point is what the
    pipeline does with well-formed, malformed and hostile output."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = replies
        self.bodies: list[dict[str, Any]] = []

    async def generate(
        self, body: dict[str, Any], on_delta: Callable[[str], None] | None = None
    ) -> dict[str, Any]:
        self.bodies.append(body)
        text = self.replies[min(len(self.bodies) - 1, len(self.replies) - 1)]
        if on_delta:
            for word in text.split(" "):
                on_delta(word)
        return {"text": text, "finish_reason": "stop", "model": "tiny", "seed": body["seed"]}


def test_outline_from_json_even_inside_chatter() -> None:
    raw = (
        'Sure! Here it is:\n{"title": "Sunny Days Ahead", "sections": ["Why now", '
        '"How panels work", "Costs", "Extra"]}\nHope that helps.'
    )
    outline = pipeline.parse_outline(raw, 3)
    assert outline is not None
    assert outline.title == "Sunny Days Ahead"
    assert outline.headings == ["Why now", "How panels work", "Costs"]


def test_outline_from_a_title_and_list() -> None:
    raw = "Title: Sunny Days Ahead\n1. Why now\n2. How panels work\n- Costs"
    outline = pipeline.parse_outline(raw, 3)
    assert outline is not None and outline.headings == ["Why now", "How panels work", "Costs"]


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "\ufffd\x01ion\ufffd once\ufffdust",
        '{"title": 5}',
        "A\nB",
        "###\n@@@\n$$$\n%%%",
        '{"title": "Ok title", "sections": ["only one"]}',
    ],
)
def test_junk_gives_no_outline(junk: str) -> None:
    assert pipeline.parse_outline(junk, 3) is None


def test_junk_falls_back_deterministically_and_says_so() -> None:
    backend = ScriptedText(["\ufffd\x01 garbage \ufffd"])
    outline = asyncio.run(pipeline.write_outline(backend, REQUEST, seed=3))
    assert outline.fallback
    assert outline == pipeline.fallback_outline(REQUEST)
    assert outline.title == "The future of solar power"
    assert len(outline.headings) == 3
    assert backend.bodies[0]["seed"] == 3


def test_sections_go_out_together_and_stream_tokens() -> None:
    backend = ScriptedText(["## How panels work\nPanels turn light into power.", "", "Text."])
    outline = pipeline.Outline("T", ["How panels work", "B", "C"])
    deltas: list[str] = []
    bodies, fallbacks = asyncio.run(
        pipeline.write_sections(backend, REQUEST, outline, 10, deltas.append)
    )
    assert bodies[0] == "Panels turn light into power."  # the repeated heading is dropped
    assert bodies[1] == pipeline.fallback_section("B", REQUEST) and fallbacks == ["section:1"]
    assert [b["seed"] for b in backend.bodies] == [11, 12, 13]
    assert deltas


def test_manual_image_prompts_are_used_as_given_plus_style() -> None:
    request = ArticleRequest(
        topic="Solar power",
        images={"count": 1, "style": "watercolor"},
        image_prompts=["a rooftop of panels at dawn"],
    )
    backend = ScriptedText(["unused"])
    prompts, fallbacks = asyncio.run(
        pipeline.write_image_prompts(backend, request, pipeline.fallback_outline(request), ["x"], 1)
    )
    assert prompts == ["a rooftop of panels at dawn, watercolor"]
    assert backend.bodies == [] and fallbacks == []


def test_derived_image_prompts_and_their_fallback() -> None:
    request = ArticleRequest(topic="Solar power", sections=2, images={"count": 2})
    backend = ScriptedText(['"solar panels on a red roof, morning light, detailed"', "\ufffd"])
    outline = pipeline.Outline("Solar at home", ["Costs", "Installers"])
    prompts, fallbacks = asyncio.run(
        pipeline.write_image_prompts(
            backend, request, outline, ["Panels cost less now.", "Pick a good installer."], 5
        )
    )
    assert prompts[0] == "solar panels on a red roof, morning light, detailed"
    assert prompts[1].startswith("Costs, Solar power") and fallbacks == ["image_prompt:1"]
    assert "Panels cost less now." in backend.bodies[1]["prompt"]  # section text as context


# --- prompt order: shared first, different last (the text service's prefix cache) ---------------


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


class RecordingText:
    """The real tiny text engine, with every body the pipeline sends it kept."""

    def __init__(self, engine: Any) -> None:
        from services.gateway.local import LocalText

        self.inner = LocalText(engine)
        self.bodies: list[dict[str, Any]] = []
        self.spans: list[tuple[float, float]] = []  # each call's start and end

    async def generate(
        self,
        body: dict[str, Any],
        on_delta: Callable[[str], None] | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        self.bodies.append(body)
        started = time.monotonic()
        reply: dict[str, Any] = await self.inner.generate(body, on_delta, on_text)
        self.spans.append((started, time.monotonic()))
        return reply


def _common_length(a: list[int], b: list[int]) -> int:
    return next(
        (k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def test_one_articles_section_prompts_share_everything_but_the_section_named_last(
    tiny_engine: Any,
) -> None:
    from services.text.schemas import GenerateRequest

    request = ArticleRequest(
        topic="The future of solar power",
        audience="homeowners",
        sections=4,
        target_words=240,
        keywords=["photovoltaics", "net metering"],
        text={"seed": 3, "temperature": 0.0},
    )
    recording = RecordingText(tiny_engine)
    outline = asyncio.run(pipeline.write_outline(recording, request, 7))
    asyncio.run(pipeline.write_sections(recording, request, outline, 7))
    bodies = recording.bodies[1:]
    prompts = [b["prompt"] for b in bodies]
    assert len(prompts) == 4 and {b["system"] for b in bodies} == {pipeline.SYSTEM}

    shared = os.path.commonprefix(prompts)
    assert shared == pipeline.section_preamble(request, outline) + " Now write only section "
    for part in (
        "Write an article about The future of solar power for homeowners.",
        "Write it in English.",
        f'titled "{outline.title}"',
        "photovoltaics, net metering",
        "about 60 words, as Markdown paragraphs without a heading",
    ):
        assert part in shared, part
    # The whole outline, numbered, in every section's shared part.
    assert (
        "4 sections: " + "; ".join(f"{k + 1}. {h}" for k, h in enumerate(outline.headings))
        in shared
    )
    for k, (prompt, heading) in enumerate(zip(prompts, outline.headings, strict=True)):
        assert prompt[len(shared) :] == f'{k + 1}, "{heading}".'  # the section, and only it, last

    # In tokens, as the cache keys them: the prompts (system and chat template included) part
    # only at the section's number, so all but the last few tokens of each are shared.
    ids = [tiny_engine.encode_prompt(GenerateRequest.model_validate(b).to_prompt()) for b in bodies]
    common = min(_common_length(ids[0], other) for other in ids[1:])
    assert common >= 0.8 * max(len(i) for i in ids) and common >= 64, (
        common,
        [len(i) for i in ids],
    )


def test_outline_and_image_prompts_put_their_fixed_rules_first_and_the_subject_last() -> None:
    solar = ArticleRequest(topic="Solar power", sections=2, images={"count": 3})
    bees = ArticleRequest(topic="Urban beekeeping", sections=2, images={"count": 3})
    backend = ScriptedText(["\ufffd"])
    for request in (solar, bees):
        asyncio.run(pipeline.write_outline(backend, request, 1))
    # Every article's outline prompt starts with the same rules; its topic comes after them.
    fixed = os.path.commonprefix([b["prompt"] for b in backend.bodies])
    for part in ("JSON only", '{"title": "...", "sections": ["...", ...]}', "exactly 2 section"):
        assert part in fixed, part
    assert backend.bodies[0]["prompt"].endswith(
        "The article: Write an article about Solar power. Write it in English."
    )

    outline = pipeline.Outline("Solar at home", ["Costs", "Installers"])
    backend = ScriptedText(["\ufffd"])
    asyncio.run(pipeline.write_image_prompts(backend, solar, outline, ["Cheap.", "Pick well."], 5))
    prompts = [b["prompt"] for b in backend.bodies]
    shared = os.path.commonprefix(prompts)
    for part in ("under 40 words", "no text in the image", "written in English", "Solar power"):
        assert part in shared, part
    assert shared.endswith('Illustrate "')
    tails = [p[len(shared) :] for p in prompts]
    assert tails == [
        'Solar at home". Context: Solar power',
        'Costs". Context: Cheap.',
        'Installers". Context: Pick well.',
    ]


def _provenance() -> Any:
    return assemble.provenance(REQUEST, "tiny", None, "tiny", 1, [5], {"outline": 0.1}, [])


def test_model_html_is_sanitized() -> None:
    outline = pipeline.Outline("<b>Title</b>", ["Intro <img src=x onerror=alert(1)>"])
    body = 'Hello <script>alert("x")</script> [click](javascript:alert(1)) **bold**'
    article = assemble.assemble(
        "art_1",
        REQUEST.model_copy(update={"sections": 1}),
        outline,
        [body],
        [],
        _provenance(),
        "2026-11-26T00:00:00Z",
    )
    for html in (article.html, article.sections[0].html):
        assert "<script" not in html and 'href="javascript:' not in html
        assert "<img src=x" not in html  # the heading's tag is text, not an element
    assert "&lt;script&gt;" in article.sections[0].html
    assert "<strong>bold</strong>" in article.html
    assert "<h1>&lt;b&gt;Title&lt;/b&gt;</h1>" in article.html


def test_article_fields_are_derived_from_the_text() -> None:
    outline = pipeline.Outline("Solar Power at Home!", ["Why", "How"])
    bodies = ["Panels are cheap now. They pay back fast. More text here.", "Call an installer."]
    image = assemble.image_ref(
        "img_1", "http://x/v1/images/img_1", "solar panels on a roof", 5, 64, 64, "Solar"
    )
    article = assemble.assemble(
        "art_1",
        REQUEST.model_copy(update={"sections": 2}),
        outline,
        bodies,
        [image],
        _provenance(),
        "2026-11-26T00:00:00Z",
    )
    assert article.slug == "solar-power-at-home"
    assert article.excerpt == "Panels are cheap now. They pay back fast."
    assert article.word_count == 14 and article.reading_time_minutes == 1
    assert article.tags[0] == "photovoltaics" and "solar" in article.tags
    # The alt text describes the picture (its prompt); the featured caption is the title.
    assert article.featured_image == image.model_copy(update={"caption": "Solar Power at Home!"})
    assert article.featured_image.alt == "Solar panels on a roof"
    assert article.sections[0].image is None
    assert article.markdown.startswith(
        "# Solar Power at Home!\n\n![Solar panels on a roof](http://x/v1/images"
    )
    assert len(article.meta_description) <= 160


def test_webhook_signature_follows_standard_webhooks() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    when = datetime(2026, 11, 26, tzinfo=UTC)
    headers = sign(secret, "msg_1", when, '{"a": 1}')
    assert headers["webhook-timestamp"] == str(int(when.timestamp()))
    assert headers["webhook-signature"].startswith("v1,")
    with pytest.raises(Exception, match="timestamp|Message"):
        Webhook(secret).verify('{"a": 1}', headers)  # too old: replay protection works
    fresh = sign(secret, "msg_1", datetime.now(UTC), '{"a": 1}')
    assert Webhook(secret).verify('{"a": 1}', fresh) == {"a": 1}
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify('{"a": 2}', fresh)


def test_ssrf_guard() -> None:
    check_url("http://127.0.0.1/x", allow_private=True)
    for url in (
        "ftp://example.com/x",
        "http:///nohost",
        "http://192.168.1.1/",
        "http://[fe80::1]/",
    ):
        with pytest.raises(WebhookRefused):
            check_url(url, allow_private=False)


# --- sections and image prompts side by side ----------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["# Costs", "Costs", "", "   ", "Panels cost less now. ", "#", "x" * 90]),
        max_size=12,
    ),
    st.integers(min_value=1, max_value=40),
)
def test_a_lead_taken_mid_stream_is_the_finished_sections_lead(lines: list[str], step: int) -> None:
    raw = "\n".join(lines) + " and the rest of it" * 30
    final = pipeline.section_lead(raw, "Costs", done=True)
    assert final == pipeline.clean_section(raw, "Costs")[: pipeline.LEAD_CHARS]
    for cut in range(0, len(raw), step):
        early = pipeline.section_lead(raw[:cut], "Costs", done=False)
        assert early is None or early == final, (raw[:cut], early, final)


def test_image_prompts_start_beside_the_sections_and_read_each_sections_lead(
    tiny_engine: Any,
) -> None:
    request = ArticleRequest(
        topic="The future of solar power",
        sections=3,
        target_words=300,
        images={"count": 3},  # type: ignore[arg-type]
        text={"seed": 5},  # type: ignore[arg-type]
    )
    backend = RecordingText(tiny_engine)
    outline = pipeline.fallback_outline(request)
    heard: list[tuple[int, float]] = []
    bodies, prompts, fallbacks = asyncio.run(
        pipeline.write_text(
            backend,
            request,
            outline,
            5,
            on_image_prompt=lambda k, prompt, fell: heard.append((k, time.monotonic())),
        )
    )
    assert len(bodies) == 3 and len(prompts) == 3 and sorted(k for k, _ in heard) == [0, 1, 2]
    sent = [b["prompt"] for b in backend.bodies]
    sections = [k for k, p in enumerate(sent) if "Now write only section" in p]
    images = {k: p for k, p in enumerate(sent) if "Stable Diffusion prompt" in p}
    assert len(sections) == 3 and len(images) == 3
    sections_end = max(backend.spans[k][1] for k in sections)
    # The featured image's prompt was written before the last section was done...
    first_prompt = min(images)
    assert backend.spans[first_prompt][0] < sections_end
    assert heard[0][0] == 0 and heard[0][1] < sections_end
    # ... and image k's read the lead of section k-1 as the finished article has it.
    for k in (1, 2):
        context = f"Context: {bodies[k - 1][: pipeline.LEAD_CHARS]}"
        assert any(p.endswith(context) and outline.headings[k - 1] in p for p in images.values())
    assert all(f.startswith(("image_prompt:", "section:")) for f in fallbacks)
