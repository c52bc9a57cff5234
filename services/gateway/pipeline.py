"""The article pipeline's stages, independent of where they run.

RQ jobs (``jobs.py``) run them one stage per job against the HTTP services; ``articleforge
generate`` runs them in one process against in-process engines. Both hand in a ``TextBackend``
and an ``ImageBackend`` and a ``Progress`` sink, so the stage code is the same.

Model output is untrusted: the tiny model writes nonsense and a real one can ignore the format.
Every parse is tolerant, and where it fails a deterministic fallback keeps the article going and
is recorded in ``provenance.fallbacks``.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from services.common.limits import MAX_HEADING_CHARS, MAX_TITLE_CHARS
from services.gateway import grounding, languages
from services.gateway.schemas import ArticleRequest

if TYPE_CHECKING:
    from services.gateway.grounding import Grounding
    from services.gateway.sources import Passage, Source

SYSTEM = (
    "You are a skilled writer who writes clear, accurate, well-structured articles for the web."
)
# Prompt order matters for speed: the text service keeps the KV of full prompt pages (16 tokens)
# keyed by their tokens and every token before them, and reuses them for a later prompt that starts
# the same way. So each prompt puts what many requests share first and what differs last: the
# system prompt, then the outline's fixed rules (every article), the article's preamble (every
# section of one article), the image prompts' fixed rules and topic (every image of one article).
NEGATIVE_PROMPT = "text, watermark, logo, signature, blurry, low quality, deformed"
MAX_IMAGE_PROMPT_CHARS = 400
TOKENS_PER_WORD = 1.4  # Llama-2's tokenizer on English prose, with some margin


class TextBackend(Protocol):
    async def generate(
        self,
        body: dict[str, Any],
        on_delta: Callable[[str], None] | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """POST /v1/generate semantics: returns {text, finish_reason, model, seed, usage}.

        ``on_delta`` sees every streamed piece, also those of an attempt that is retried;
        ``on_text`` sees the text of the current attempt so far (a retried attempt starts it
        again from nothing)."""
        ...


# Called once per denoising step with (step, steps, preview): the preview is the image service's
# base64 PNG of the latents on the steps that have one (every ARTICLEFORGE_IMAGE_PREVIEW_EVERY),
# else None.
OnStep = Callable[[int, int, str | None], None]


class ImageBackend(Protocol):
    async def generate(self, body: dict[str, Any], on_step: OnStep | None = None) -> dict[str, Any]:
        """POST /v1/images semantics (n=1): returns {images: [{b64_png, seed, width, height}]}."""
        ...


@dataclass
class Outline:
    title: str
    headings: list[str]
    fallback: bool = False


@dataclass
class TextResult:
    outline: Outline
    sections: list[str]
    image_prompts: list[str]
    fallbacks: list[str] = field(default_factory=list)
    text_model: str | None = None


def instruction(request: ArticleRequest) -> str:
    """The seed paper's prompt shape: topic, audience and tone in one instruction, and the
    language the article is written in (every prompt of the pipeline names it)."""
    parts = [f"an article about {request.topic}"]
    if request.audience:
        parts.append(f"for {request.audience}")
    if request.tone:
        parts.append(f"in a {request.tone} tone")
    return "Write " + " ".join(parts) + ". " + in_language(request)


def in_language(request: ArticleRequest) -> str:
    return f"Write it in {languages.name(request.language)}."


def text_body(
    prompt: str,
    request: ArticleRequest,
    seed: int,
    max_new_tokens: int,
    temperature: float | None = None,
) -> dict[str, Any]:
    return {
        "system": SYSTEM,
        "prompt": prompt,
        "max_new_tokens": max_new_tokens,
        "temperature": request.text.temperature if temperature is None else temperature,
        "top_p": request.text.top_p,
        "seed": seed,
    }


# --- 1. outline ---------------------------------------------------------------------------------

_CLEAN_LINE = re.compile(r"^\s*(?:#+|[-*•]|\d+[.)]|title\s*:|section\s*\d*\s*:)\s*", re.I)


def fallback_outline(request: ArticleRequest) -> Outline:
    """Headings in the article's language; in one without fallback words, the title numbered
    (never English headings under another language's tag)."""
    topic = request.topic.strip().rstrip(".")
    title = topic[:1].upper() + topic[1:]
    words = languages.fallbacks(request.language)
    if words is None:
        headings = [f"{title} ({k})" for k in range(1, request.sections + 1)]
    else:
        # English lower-cases the topic inside a heading; German capitalizes its nouns.
        inner = topic.lower() if languages.base(request.language) == "en" else topic
        headings = [h.format(topic=inner) for h in words.headings[: request.sections]]
    return Outline(title=title, headings=[h[:1].upper() + h[1:] for h in headings], fallback=True)


def _plausible(text: str, max_len: int) -> bool:
    """Short, printable, mostly letters: what a title or heading looks like."""
    text = text.strip()
    if not 2 <= len(text) <= max_len or "\ufffd" in text:
        return False
    if any(ord(c) < 32 for c in text):
        return False
    letters = sum(c.isalpha() for c in text)
    return letters >= 0.6 * len(text.replace(" ", "")) and len(text.split()) <= 16


def parse_outline(raw: str, sections: int) -> Outline | None:
    """JSON {"title", "sections"} first, then a `Title:` + list layout; None when unusable."""
    title: str | None = None
    headings: list[str] = []
    match = re.search(r"\{.*\}", raw, re.S)
    if match:
        try:
            data = json.loads(match.group(0))
            if isinstance(data, dict):
                title = str(data.get("title", "")).strip() or None
                headings = [str(h).strip() for h in data.get("sections", []) if str(h).strip()]
        except (json.JSONDecodeError, TypeError, AttributeError):
            pass
    if title is None or not headings:
        lines = [_CLEAN_LINE.sub("", line).strip() for line in raw.splitlines()]
        lines = [line.strip("\"' ") for line in lines if line.strip()]
        if len(lines) > sections:
            title, headings = lines[0], lines[1:]
    if title is None or len(headings) < sections:
        return None
    headings = headings[:sections]
    if not _plausible(title, MAX_TITLE_CHARS) or not all(
        _plausible(h, MAX_HEADING_CHARS) for h in headings
    ):
        return None
    return Outline(title=title, headings=headings)


async def write_outline(
    text: TextBackend,
    request: ArticleRequest,
    seed: int,
    sources: Sequence[Source] = (),
) -> Outline:
    # The fixed rules first (shared by every article with this many sections), the topic last,
    # then the article's own sources.
    from_sources = grounding.outline_block(sources)
    prompt = (
        "Plan the article described below: its title and its section headings, in the "
        "language the article is written in. Answer with JSON only, in the form "
        f'{{"title": "...", "sections": ["...", ...]}} with exactly {request.sections} '
        f"section headings. The article: {instruction(request)}{from_sources}"
    )
    reply = await text.generate(text_body(prompt, request, seed, 48 + 24 * request.sections))
    return parse_outline(reply["text"], request.sections) or fallback_outline(request)


# --- 2. sections --------------------------------------------------------------------------------


def clean_section(raw: str, heading: str) -> str:
    lines = raw.strip().splitlines()
    # Models like to repeat the heading; the article adds its own.
    while lines and (
        lines[0].lstrip("# ").strip().lower() == heading.lower() or not lines[0].strip()
    ):
        lines.pop(0)
    lines = [line for line in lines if not line.lstrip().startswith("#")]
    return "\n".join(lines).strip()


def fallback_section(heading: str, request: ArticleRequest) -> str:
    words = languages.fallbacks(request.language)
    if words is None:
        return f"{heading}: {request.topic}."
    if languages.base(request.language) == "en":
        heading = heading.lower()
    return words.section.format(heading=heading, topic=request.topic)


def outline_plan(outline: Outline) -> str:
    """The headings numbered, as the section prompts show the whole outline."""
    return "; ".join(f"{k + 1}. {h}" for k, h in enumerate(outline.headings))


def section_preamble(request: ArticleRequest, outline: Outline) -> str:
    """What every section prompt of one article starts with, word for word (a rewrite's too):
    the instruction, the title, the whole outline (so a section leaves the others' ground to
    them), the keywords and the budget. Only the part after it names the section."""
    words, _ = section_budget(request, outline)
    prompt = (
        f'{instruction(request)} The article is titled "{outline.title}" and has these '
        f"{len(outline.headings)} sections: {outline_plan(outline)}."
    )
    if request.keywords:
        prompt += " Work in these terms where they fit: " + ", ".join(request.keywords) + "."
    return prompt + (
        f" Each section is about {words} words, as Markdown paragraphs without a heading, and "
        "keeps to its own heading: what the other sections cover is left to them."
    )


def section_budget(request: ArticleRequest, outline: Outline) -> tuple[int, int]:
    """(words asked for, max new tokens) of one section: the article's words shared out."""
    words = max(60, request.words // len(outline.headings))
    return words, min(2048, int(words * TOKENS_PER_WORD) + 32)


def section_prompt(preamble: str, k: int, heading: str, passages: str = "") -> str:
    """Section ``k``'s prompt: the article's shared preamble, then what differs: the section's
    own source passages (if any) and its name."""
    return f'{preamble}{passages} Now write only section {k + 1}, "{heading}".'


# A second attempt at a section that cited none of its sources draws with another seed.
RECITE_SEED_OFFSET = 1000


# An image prompt for a section reads this much of it: its lead.
LEAD_CHARS = 400


def section_lead(raw: str, heading: str, done: bool) -> str | None:
    """The first ``LEAD_CHARS`` characters of a section as ``clean_section`` makes it, from
    ``raw``, the text streamed so far; None while they can still change.

    Once the cleaned text runs past ``LEAD_CHARS``, what streams next can only add to its end:
    lines already complete keep their fate, and the line still streaming stays dropped if it
    began with ``#``, else kept (it cannot become the heading any more, being longer than any
    heading, or it follows kept text). So a lead taken mid-stream is the one the finished
    section has."""
    body = clean_section(raw, heading)
    if done or len(body) > LEAD_CHARS:
        return body[:LEAD_CHARS]
    return None


async def write_sections(
    text: TextBackend,
    request: ArticleRequest,
    outline: Outline,
    seed: int,
    on_delta: Callable[[str], None] | None = None,
    on_usage: Callable[[int, int], None] | None = None,
    grounded: Grounding | None = None,
    on_lead: Callable[[int, str], None] | None = None,
) -> tuple[list[str], list[str]]:
    """All sections at once, so the text engine decodes them in one batch.

    ``on_delta`` sees every streamed token, also those of an attempt that the service client
    retries; ``on_usage(k, completion_tokens)`` reports what section k finally cost. With
    ``grounded`` each section is given its passages, its markers are settled there (citations,
    removals) and, with ``require_citations``, a section citing nothing is written again.
    ``on_lead(k, lead)`` hears section k's lead (``section_lead``) once, as soon as it is
    known: mid-stream, or at the end for a short section, a fallback, or (with
    ``require_citations``, which may rewrite a section) once the rewrites are done."""
    _, max_new = section_budget(request, outline)
    preamble = section_preamble(request, outline)  # shared by all sections: the cache's prefix
    given: dict[int, list[Passage]] = {}
    spent: dict[int, int] = {}
    led: set[int] = set()
    early = on_lead is not None and not (grounded is not None and grounded.require)

    def lead(k: int, lead_text: str | None) -> None:
        if on_lead is not None and lead_text is not None and k not in led:
            led.add(k)
            on_lead(k, lead_text)

    async def one(k: int, heading: str, offset: int = 0) -> str:
        block = ""
        if grounded is not None:
            block, given[k] = grounded.prompt_for(outline.title, heading)
        prompt = section_prompt(preamble, k, heading, block)
        body = text_body(prompt, request, seed + 1 + k + offset, max_new)

        def on_text(so_far: str) -> None:
            if k not in led:
                lead(k, section_lead(so_far, heading, done=False))

        reply = await (
            text.generate(body, on_delta, on_text) if early else text.generate(body, on_delta)
        )
        spent[k] = spent.get(k, 0) + int((reply.get("usage") or {}).get("completion_tokens", 0))
        if on_usage is not None:
            on_usage(k, spent[k])
        written = clean_section(reply["text"], heading)
        if early:
            lead(k, (written or fallback_section(heading, request))[:LEAD_CHARS])
        return written

    bodies = list(await asyncio.gather(*(one(k, h) for k, h in enumerate(outline.headings))))
    if grounded is not None and grounded.require:
        again = [k for k, b in enumerate(bodies) if not grounded.cites(b, given[k])]
        rewrites = await asyncio.gather(
            *(one(k, outline.headings[k], RECITE_SEED_OFFSET) for k in again)
        )
        for k, body in zip(again, rewrites, strict=True):
            if grounded.cites(body, given[k]) or not bodies[k]:
                bodies[k] = body
    fallbacks = []
    for k, body in enumerate(bodies):
        if not body:
            bodies[k] = fallback_section(outline.headings[k], request)
            fallbacks.append(f"section:{k}")
            given[k] = []
        lead(k, bodies[k][:LEAD_CHARS])  # the leads not yet given (all, with rewrites)
        if grounded is not None:  # in section order: the article's numbering
            bodies[k] = grounded.settle(k, bodies[k], given[k])
    return bodies, fallbacks


# --- 3. image prompts ---------------------------------------------------------------------------


def image_subjects(outline: Outline, count: int) -> list[str]:
    """Image 0 is the featured image (the title); image k illustrates section k-1."""
    subjects = [outline.title]
    subjects += outline.headings[: max(0, count - 1)]
    while len(subjects) < count:  # more images than sections: reuse the title
        subjects.append(outline.title)
    return subjects[:count]


FALLBACK_IMAGE_STYLE = "editorial illustration, detailed"


def fallback_image_prompt(subject: str, topic: str) -> str:
    """The subject, the topic where the subject does not already say it (the featured image's
    subject is the title, which a fallback outline takes from the topic), and a plain style."""
    topic = topic.strip().rstrip(".")
    parts = [subject.strip()]
    if topic.lower() not in subject.lower() and subject.lower() not in topic.lower():
        parts.append(topic)
    return ", ".join([*parts, FALLBACK_IMAGE_STYLE])


def alt_text(prompt: str, style: str | None, language: str) -> str:
    """What the picture shows, for a reader who cannot see it: its prompt without the style
    words appended to every image; a fallback prompt reads as "Illustration: <subject>"."""
    text = prompt.strip()
    if style and text.endswith(style.strip()):
        text = text[: -len(style.strip())].rstrip(" ,")
    if text.endswith(FALLBACK_IMAGE_STYLE):
        subject = text[: -len(FALLBACK_IMAGE_STYLE)].rstrip(" ,")
        words = languages.fallbacks(language)
        text = words.illustration.format(subject=subject) if words else subject
    return text[:1].upper() + text[1:]


def with_style(prompt: str, style: str | None) -> str:
    prompt = prompt.strip()
    if style:
        prompt = f"{prompt}, {style.strip()}"
    return prompt[:MAX_IMAGE_PROMPT_CHARS]


def clean_image_prompt(raw: str) -> str | None:
    line = next((ln.strip() for ln in raw.splitlines() if ln.strip()), "")
    line = line.strip("\"'` ").removeprefix("Prompt:").strip()
    if len(line.split()) < 3 or "\ufffd" in line:
        return None
    letters = sum(c.isalpha() for c in line)
    if letters < 0.6 * len(line.replace(" ", "")):
        return None
    return line[:MAX_IMAGE_PROMPT_CHARS]


async def image_prompt(
    text: TextBackend, request: ArticleRequest, k: int, subject: str, context: str, seed: int
) -> tuple[str, bool]:
    """Image ``k``'s prompt (with the style) and whether it fell back: given by hand, as in
    the seed paper, or written by the model from its subject and ``context`` (the lead of the
    section it illustrates, or the topic)."""
    if request.image_prompts is not None:
        return with_style(request.image_prompts[k], request.images.style), False
    # The fixed rules, the language and the topic first (shared by every image of the
    # article, the rules by every article); the subject and its context last.
    prompt = (
        "Describe one illustration for an article as a Stable Diffusion prompt: a single "
        "line of comma-separated visual details, under 40 words, no text in the image, "
        f"written in {languages.name(request.language)} (it is also the image's alt text). "
        f'The article is about {request.topic}. Illustrate "{subject}". Context: {context}'
    )
    reply = await text.generate(text_body(prompt, request, seed + 100 + k, 64))
    cleaned = clean_image_prompt(reply["text"])
    if cleaned is None:
        return with_style(fallback_image_prompt(subject, request.topic), request.images.style), True
    return with_style(cleaned, request.images.style), False


def needs_section(request: ArticleRequest, outline: Outline, k: int) -> bool:
    """Whether image k's prompt reads a section (else the topic: the featured image, images
    past the last section, and prompts given by hand need none)."""
    return request.image_prompts is None and 0 < k <= len(outline.headings)


async def write_image_prompts(
    text: TextBackend, request: ArticleRequest, outline: Outline, sections: list[str], seed: int
) -> tuple[list[str], list[str]]:
    """Every image's prompt, once the sections are written (``write_text`` starts each one
    as soon as its section's lead is known instead)."""
    subjects = image_subjects(outline, request.images.count)

    async def one(k: int) -> tuple[str, bool]:
        context = sections[k - 1][:LEAD_CHARS] if needs_section(request, outline, k) else ""
        return await image_prompt(text, request, k, subjects[k], context or request.topic, seed)

    results = await asyncio.gather(*(one(k) for k in range(len(subjects))))
    fallbacks = [f"image_prompt:{k}" for k, (_, fell) in enumerate(results) if fell]
    return [p for p, _ in results], fallbacks


# Called as each image prompt is written: (index, prompt with style, fell back).
OnImagePrompt = Callable[[int, str, bool], None]


async def write_text(
    text: TextBackend,
    request: ArticleRequest,
    outline: Outline,
    seed: int,
    on_delta: Callable[[str], None] | None = None,
    on_usage: Callable[[int, int], None] | None = None,
    grounded: Grounding | None = None,
    on_image_prompt: OnImagePrompt | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """The sections and the image prompts side by side: returns (sections, prompts, fallbacks).

    A prompt that needs no section (the featured image's) starts with the sections; image k's
    starts once section k-1's lead is known, mid-stream (``write_sections``' ``on_lead``). The
    text engine batches them all. ``on_image_prompt`` hears each prompt as it is written, so a
    caller can start drawing that image while the rest of the text is still being written."""
    subjects = image_subjects(outline, request.images.count)
    prompts: dict[int, tuple[str, bool]] = {}
    started: dict[int, asyncio.Future[None]] = {}

    async def prompt_for(k: int, context: str) -> None:
        prompts[k] = await image_prompt(text, request, k, subjects[k], context, seed)
        if on_image_prompt is not None:
            on_image_prompt(k, *prompts[k])

    def start(k: int, context: str) -> None:
        if k < len(subjects) and k not in started:
            started[k] = asyncio.ensure_future(prompt_for(k, context or request.topic))

    def on_lead(section: int, lead: str) -> None:
        if needs_section(request, outline, section + 1):
            start(section + 1, lead)

    for k in range(len(subjects)):
        if not needs_section(request, outline, k):
            start(k, request.topic)
    try:
        bodies, fallbacks = await write_sections(
            text, request, outline, seed, on_delta, on_usage, grounded, on_lead
        )
        await asyncio.gather(*started.values())
    finally:
        for future in started.values():
            future.cancel()
    fallbacks += [f"image_prompt:{k}" for k in sorted(prompts) if prompts[k][1]]
    return bodies, [prompts[k][0] for k in range(len(subjects))], fallbacks


def image_body(request: ArticleRequest, prompt: str, seed: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": request.images.negative_prompt or NEGATIVE_PROMPT,
        **request.images.dimensions(),
        "steps": request.images.steps,
        "guidance_scale": request.images.guidance_scale,
        "seed": seed,
        "n": 1,
    }
    if request.images.scheduler is not None:  # else the image service's default
        body["scheduler"] = request.images.scheduler
    return body


def estimate_tokens(request: ArticleRequest) -> int:
    return max(1, math.ceil(request.words * TOKENS_PER_WORD))
