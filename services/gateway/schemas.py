"""The gateway's protocol: the article request, its status, and the Article JSON contract."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from services.common.limits import (
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_SIDE,
    SIDE_MULTIPLE,
    GuidanceScale,
    ImageCount,
    PromptText,
    SectionCount,
    Seed,
    Steps,
    TargetWords,
    Temperature,
    TopP,
)
from services.gateway import languages
from services.gateway.publish.schemas import PublishInfo, PublishOptions
from services.gateway.sources import MAX_SOURCES, SourceInfo, SourceSpec
from services.image.config import SchedulerName

Status = Literal[
    "queued",
    "writing",
    "awaiting_review",
    "illustrating",
    "assembling",
    "succeeded",
    "failed",
    "cancelled",
]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
Stage = Literal[
    "queued",
    "sources",
    "outline",
    "sections",
    "image_prompts",
    "images",
    "assemble",
    "webhook",
    "done",
]

LENGTH_WORDS = {"short": 400, "medium": 800, "long": 1500}
_SIZE = re.compile(r"^(\d{1,6})x(\d{1,6})$")
# An article's images are at least this wide and high (the image service takes down to 8).
MIN_ARTICLE_SIDE = 64
# Body sections when a request names none: the API's and `articleforge generate`'s one default.
DEFAULT_SECTIONS = 4
# Every request body of the gateway, nested objects too: an unknown field (`image` for `images`)
# is a 422 naming it, never dropped; NaN and infinities are refused by name, never passed on.
REQUEST_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)


class TextOptions(BaseModel):
    model_config = REQUEST_CONFIG

    temperature: Temperature = Field(
        default=0.7, description="Sampling temperature; 0 is greedy.", examples=[0.7]
    )
    top_p: TopP = Field(default=0.9, description="Nucleus sampling mass.", examples=[0.9])
    seed: Seed | None = Field(
        default=None, description="Fixes the text sampling; random when absent.", examples=[7]
    )


# The image service's own limit for `lcm` (services/image); refused here before any work is queued.
LCM_MAX_STEPS = 50


class SchedulerSteps(BaseModel):
    """Checks `scheduler` against `steps` (declared before it) for the models that take both."""

    @field_validator("scheduler", check_fields=False)
    @classmethod
    def _scheduler_steps(cls, value: str | None, info: ValidationInfo) -> str | None:
        steps = info.data.get("steps")
        if value == "lcm" and steps is not None and steps > LCM_MAX_STEPS:
            raise ValueError(
                f"the `lcm` scheduler runs at most {LCM_MAX_STEPS} steps, got steps={steps}"
            )
        return value


class ImageOptions(SchedulerSteps):
    model_config = REQUEST_CONFIG

    count: ImageCount = Field(
        default=1,
        description="Images: the first is the featured image, the rest illustrate "
        "sections in order.",
        examples=[2],
    )
    size: str | None = Field(
        default=None,
        description="WIDTHxHEIGHT in multiples of 8; the image model's native size when absent "
        "(512x512 for SD 1.5).",
        examples=["512x512"],
    )
    steps: Steps = Field(default=25, description="Denoising steps.", examples=[25])
    guidance_scale: GuidanceScale = Field(
        default=7.5, description="Classifier-free guidance.", examples=[7.5]
    )
    style: str | None = Field(
        default=None,
        max_length=200,
        description="Appended to every derived image prompt.",
        examples=["watercolor illustration, soft light"],
    )
    seed: Seed | None = Field(
        default=None,
        description="Image k uses seed+k, so seed + count - 1 is at most "
        f"{MAX_SEED}; random when absent.",
        examples=[1234],
    )
    negative_prompt: PromptText | None = Field(
        default=None,
        description="What to steer away from, for every image; replaces the default "
        "(`text, watermark, logo, signature, blurry, low quality, deformed`).",
        examples=["text, watermark, people"],
    )
    scheduler: SchedulerName | None = Field(
        default=None,
        description="Sampler the image service uses; its default (`dpmpp_2m`) when absent.",
        examples=["euler_a"],
    )

    @field_validator("seed")
    @classmethod
    def _seed_run(cls, value: int | None, info: ValidationInfo) -> int | None:
        count = info.data.get("count")
        if value is not None and count and value + count - 1 > MAX_SEED:
            raise ValueError(
                f"seed + count - 1 must be <= {MAX_SEED} (image k uses seed + k), got "
                f"{value + count - 1}"
            )
        return value

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is None:
            return None
        rule = (
            f"WIDTHxHEIGHT with width and height multiples of {SIDE_MULTIPLE} in "
            f"{MIN_ARTICLE_SIDE}..{MAX_SIDE} (such as 512x512)"
        )
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"must be {rule}, got {value!r}")
        for side in (int(match[1]), int(match[2])):
            if side % SIDE_MULTIPLE or not MIN_ARTICLE_SIDE <= side <= MAX_SIDE:
                raise ValueError(f"must be {rule}, got {value!r} ({side} is not)")
        return value

    def dimensions(self) -> dict[str, int]:
        """`width`/`height` for the image service; empty means its native size."""
        if self.size is None:
            return {}
        width, height = self.size.split("x")
        return {"width": int(width), "height": int(height)}


class WebhookTarget(BaseModel):
    model_config = REQUEST_CONFIG

    url: AnyHttpUrl = Field(
        description="Receives `article.succeeded` / `article.failed`, signed "
        "per Standard Webhooks.",
        examples=["https://cms.example.com/hooks/af"],
    )


class ArticleRequest(BaseModel):
    model_config = REQUEST_CONFIG

    topic: str = Field(
        min_length=3,
        max_length=300,
        description="What the article is about.",
        examples=["The future of solar power"],
    )
    audience: str | None = Field(
        default=None, max_length=200, description="Who reads it.", examples=["homeowners"]
    )
    tone: str | None = Field(
        default=None, max_length=100, description="How it sounds.", examples=["friendly"]
    )
    length: Literal["short", "medium", "long"] | None = Field(
        default=None,
        description="short ≈ 400, medium ≈ 800, long ≈ 1500 words.",
        examples=["medium"],
    )
    target_words: TargetWords | None = Field(
        default=None, description="Target length in words (instead of `length`).", examples=[800]
    )
    sections: SectionCount = Field(
        default=DEFAULT_SECTIONS, description="Body sections.", examples=[DEFAULT_SECTIONS]
    )
    keywords: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="Terms to work in; they also become tags.",
        examples=[["photovoltaics", "net metering"]],
    )
    language: str = Field(
        default="en",
        min_length=1,
        max_length=languages.MAX_TAG_CHARS,
        description="BCP-47 language tag (RFC 5646): `en`, `de-AT`, `es-419`, `zh-Hant`, "
        "`sr-Latn-RS`, …; returned in its canonical form (`EN-us` -> `en-US`).",
        examples=["en"],
    )
    text: TextOptions = Field(default_factory=TextOptions, description="Text sampling.")
    images: ImageOptions = Field(default_factory=ImageOptions, description="Illustrations.")
    image_prompts: list[str] | None = Field(
        default=None,
        max_length=MAX_IMAGES,
        description="Image prompts given by hand (the seed paper's flow); one per image. "
        "Otherwise prompts are derived from the text.",
        examples=[["a rooftop covered in solar panels at sunrise"]],
    )
    webhook: WebhookTarget | None = Field(default=None, description="Where to announce the end.")
    review: Literal["outline"] | None = Field(
        default=None,
        description="`outline` stops the article at `awaiting_review` once its outline is "
        "written: PUT /v1/articles/{id}/outline or POST /v1/articles/{id}/approve continues it; "
        "left unanswered for ARTICLEFORGE_REVIEW_TIMEOUT_SECONDS it is `cancelled`.",
        examples=["outline"],
    )
    publish: PublishOptions | None = Field(
        default=None,
        description="Publish the finished article into a CMS configured on the gateway: an RQ "
        "job after assemble, with retries; `publish` in the status shows how it went, and "
        "`article.published` / `article.publish_failed` webhooks announce it. POST "
        "/v1/articles/{id}/publish does the same later.",
        examples=[{"target": "wordpress", "status": "draft"}],
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Echoed back untouched (up to 4 KB as JSON).",
        examples=[{"cms_post_id": 42}],
    )
    sources: list[SourceSpec] = Field(
        default_factory=list,
        max_length=MAX_SOURCES,
        description="What the article is written from: URLs (fetched by the workers, private "
        "addresses refused, robots.txt honoured), uploaded files (HTML, Markdown, text, PDF, "
        "DOCX, as base64) and inline text. Each "
        "section is given the passages most relevant to its heading, numbered, and asked to "
        "cite them; markers that point at nothing are removed. A source that cannot be used "
        "is reported in `sources` of the status; the article fails at stage `sources` only "
        "when none can.",
        examples=[[{"type": "url", "url": "https://example.com/press/solar-2026"}]],
    )
    require_citations: bool = Field(
        default=False,
        description="With sources: a section that cites none of its passages is written once "
        "more; if it still cites nothing it is kept and listed in "
        "`provenance.uncited_sections`.",
        examples=[True],
    )

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        return languages.canonical_tag(value)

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, value: list[str]) -> list[str]:
        for word in value:
            if not 1 <= len(word) <= 50:
                raise ValueError(f"each keyword must be 1..50 characters, got {len(word)}")
        return value

    @field_validator("metadata")
    @classmethod
    def _finite_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:  # it is echoed back as JSON, which has no NaN or Infinity
            json.dumps(value, allow_nan=False)
        except ValueError:
            raise ValueError("metadata must not hold NaN or Infinity") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ArticleRequest:
        if self.length is not None and self.target_words is not None:
            raise ValueError("give `length` or `target_words`, not both")
        if self.image_prompts is not None:
            if len(self.image_prompts) != self.images.count:
                raise ValueError(
                    f"image_prompts has {len(self.image_prompts)} entries but images.count is "
                    f"{self.images.count}; give one prompt per image"
                )
            for prompt in self.image_prompts:
                if not 1 <= len(prompt) <= MAX_PROMPT_CHARS:
                    raise ValueError(f"each image prompt must be 1..{MAX_PROMPT_CHARS} characters")
        if len(repr(self.metadata)) > 4096:
            raise ValueError("metadata must be at most 4 KB")
        return self

    @property
    def words(self) -> int:
        if self.target_words is not None:
            return self.target_words
        return LENGTH_WORDS[self.length or "medium"]


class Links(BaseModel):
    self: str = Field(description="This article's status URL.", examples=["/v1/articles/art_1"])
    events: str = Field(description="SSE progress stream.", examples=["/v1/articles/art_1/events"])


class Accepted(BaseModel):
    id: str = Field(description="Article id.", examples=["art_3f2a9c1d"])
    status: Status = Field(description="Always `queued` on creation.", examples=["queued"])
    links: Links = Field(description="Where to follow it.")


ImageState = Literal["queued", "drawing", "done", "skipped"]
# A 2x2 PNG: what a preview looks like, a real one is 1/8 of the image's size (64x64 for 512x512).
PREVIEW_EXAMPLE = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGM8UaHBwMDA"
    "xMDAwMDAAAARqgFsecZ2JgAAAABJRU5ErkJggg=="
)


class ImageProgress(BaseModel):
    """One requested image, while the article is made: its steps and its latest preview."""

    index: int = Field(
        ge=0,
        description="Position in the request, from 0 (0 is the featured image, the rest "
        "illustrate the sections in order).",
        examples=[0],
    )
    state: ImageState = Field(
        description="`queued`: not started; `drawing`: denoising, `step` of `steps` done; "
        "`done`: finished, the PNG is at `url`; `skipped`: no image (the safety checker "
        "flagged it).",
        examples=["drawing"],
    )
    step: int = Field(
        ge=0, description="Denoising steps done (0 until the image starts).", examples=[12]
    )
    steps: int | None = Field(
        default=None,
        ge=0,
        description="Steps the scheduler runs in all; null until the image starts.",
        examples=[30],
    )
    step_progress: bool = Field(
        default=True,
        description="False when the image server reports no steps (ARTICLEFORGE_IMAGE_BACKEND="
        "`openai`): the image is `drawing` from its start to its end with `step` 0, `steps` "
        "null and no `preview`, and it counts toward `percent` only once it is done.",
        examples=[True],
    )
    preview: str | None = Field(
        default=None,
        description="While `drawing`: the latest step preview as a `data:image/png;base64,` "
        "URL, ready for an `<img src>`. It is the image service's latent-to-RGB preview, 1/8 "
        "of the image's size (64x64 for 512x512, a few KB), kept at most once per "
        "ARTICLEFORGE_PREVIEW_INTERVAL_MS (first and last always). Null before the first "
        "preview, once the image is done (the PNG replaces it), once the article has ended, "
        "and with previews off.",
        examples=[PREVIEW_EXAMPLE],
    )
    preview_step: int | None = Field(
        default=None,
        ge=0,
        description="The step `preview` shows; it trails `step`, since previews come every "
        "ARTICLEFORGE_IMAGE_PREVIEW_EVERY steps and are throttled.",
        examples=[10],
    )
    url: str | None = Field(
        default=None,
        description="Once `done`: the signed URL of the finished PNG (as in the article), "
        "before the article is assembled.",
        examples=["http://127.0.0.1:8000/v1/images/img_9b1e2c?signature=m1Xc0yP3kQ2r"],
    )


class Progress(BaseModel):
    stage: Stage = Field(description="Current pipeline stage.", examples=["sections"])
    percent: float = Field(ge=0, le=100, description="Rough completion.", examples=[42.0])
    tokens: int = Field(description="Text tokens generated so far.", examples=[512])
    images_done: int = Field(description="Images finished.", examples=[1])
    images_total: int = Field(description="Images requested.", examples=[2])
    images: list[ImageProgress] = Field(
        default_factory=list,
        description="One entry per requested image, in order: its state, step counter and "
        "latest preview. An event carries at most `images_total` previews of a few KB each "
        "(each at most ARTICLEFORGE_PREVIEW_MAX_BYTES).",
        examples=[
            [
                {
                    "index": 0,
                    "state": "done",
                    "step": 30,
                    "steps": 30,
                    "step_progress": True,
                    "preview": None,
                    "preview_step": None,
                    "url": "http://127.0.0.1:8000/v1/images/img_9b1e2c?signature=m1Xc0yP3kQ2r",
                },
                {
                    "index": 1,
                    "state": "drawing",
                    "step": 12,
                    "steps": 30,
                    "step_progress": True,
                    "preview": PREVIEW_EXAMPLE,
                    "preview_step": 10,
                    "url": None,
                },
            ]
        ],
    )


class ErrorInfo(BaseModel):
    type: str = Field(description="Error class.", examples=["service_unavailable"])
    message: str = Field(
        description="What went wrong.",
        examples=["the text service did not answer after 4 attempts"],
    )
    stage: str | None = Field(default=None, description="Stage that failed.", examples=["sections"])


class ImageRef(BaseModel):
    id: str = Field(
        description="Image id; GET /v1/images/{id} serves the PNG.", examples=["img_9b1e2c"]
    )
    url: str = Field(
        description="Absolute URL of the PNG.",
        examples=["http://127.0.0.1:8000/v1/images/img_9b1e2c"],
    )
    alt: str = Field(description="Alt text.", examples=["Solar panels on a roof at sunrise"])
    caption: str = Field(description="Caption.", examples=["How it works"])
    width: int = Field(description="Pixels.", examples=[512])
    height: int = Field(description="Pixels.", examples=[512])
    prompt: str = Field(
        description="The final prompt the image was drawn from.",
        examples=["solar panels on a roof at sunrise, watercolor"],
    )
    seed: int = Field(description="Seed that reproduces it.", examples=[1234])


class Section(BaseModel):
    heading: str = Field(description="Section heading.", examples=["How it works"])
    markdown: str = Field(description="Body as Markdown.", examples=["Panels turn light..."])
    html: str = Field(description="Body as sanitized HTML.", examples=["<p>Panels turn...</p>"])
    image: ImageRef | None = Field(default=None, description="Illustration, if any.")


class CitationInfo(BaseModel):
    marker: int = Field(description="The [n] in the text; the n-th reference.", examples=[1])
    source_id: str = Field(description="The source it points at.", examples=["src_1"])
    section: int = Field(description="The section (0-based) that cites it.", examples=[0])
    passage: str = Field(
        description="The passage the section was given.",
        examples=["Rooftop panels cost about 2.50 dollars per watt installed in 2025."],
    )
    start: int = Field(
        description="The passage's first character in the source text.", examples=[0]
    )
    end: int = Field(description="One past its last character.", examples=[66])


class Provenance(BaseModel):
    text_model: str = Field(
        description="Base text model.", examples=["NousResearch/Llama-2-7b-chat-hf"]
    )
    adapter: str | None = Field(description="Adapter that wrote it, if any.", examples=["writer"])
    image_model: str | None = Field(description="Image model.", examples=["stable-diffusion-v1-5"])
    parameters: dict[str, Any] = Field(
        description="Request parameters used.", examples=[{"topic": "Solar power", "sections": 4}]
    )
    seeds: dict[str, Any] = Field(
        description="Text and image seeds, to reproduce.",
        examples=[{"text": 7, "images": [1234, 1235]}],
    )
    timings: dict[str, float] = Field(
        description="Seconds per stage.", examples=[{"outline": 1.2, "sections": 9.8}]
    )
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Where model output was unusable and a deterministic fallback was used.",
        examples=[["outline"]],
    )
    invented_citations_removed: int = Field(
        default=0,
        description="Citation markers the model wrote that pointed at no passage it was "
        "given (or were malformed), removed from the text.",
        examples=[2],
    )
    uncited_sections: list[int] = Field(
        default_factory=list,
        description="With `require_citations`: sections (0-based) that cited nothing even "
        "when written a second time.",
        examples=[[3]],
    )


class Article(BaseModel):
    id: str = Field(description="Article id.", examples=["art_3f2a9c1d"])
    title: str = Field(description="Title.", examples=["The Future of Solar Power"])
    slug: str = Field(description="URL slug.", examples=["the-future-of-solar-power"])
    excerpt: str = Field(description="One or two sentences for listings.", examples=["..."])
    meta_description: str = Field(
        description="At most 160 characters, for search engines.", examples=["..."]
    )
    # SEO fields (services/gateway/seo.py), all derived from the article itself. Defaults keep
    # disk copies written before they existed readable.
    seo_title: str = Field(
        default="",
        max_length=60,
        description="The title for search results and `<title>`: at most 60 characters.",
        examples=["The Future of Solar Power"],
    )
    open_graph: dict[str, str] = Field(
        default_factory=dict,
        description="Open Graph `<meta property>` values by property name.",
        examples=[
            {
                "og:type": "article",
                "og:title": "The Future of Solar Power",
                "og:description": "Panels are cheaper than ever...",
                "og:image": "https://articles.example.com/v1/images/img_9b1e...?signature=...",
                "og:locale": "en",
            }
        ],
    )
    twitter: dict[str, str] = Field(
        default_factory=dict,
        description="Twitter (X) card `<meta name>` values by name.",
        examples=[
            {
                "twitter:card": "summary_large_image",
                "twitter:title": "The Future of Solar Power",
                "twitter:description": "Panels are cheaper than ever...",
                "twitter:image": "https://articles.example.com/v1/images/img_9b1e...",
            }
        ],
    )
    json_ld: dict[str, Any] = Field(
        default_factory=dict,
        description='A schema.org `Article` object for `<script type="application/ld+json">`.',
        examples=[
            {
                "@context": "https://schema.org",
                "@type": "Article",
                "headline": "The Future of Solar Power",
                "description": "Panels are cheaper than ever...",
                "image": ["https://articles.example.com/v1/images/img_9b1e..."],
                "datePublished": "2026-11-26T06:30:00Z",
                "dateModified": "2026-11-26T07:10:00Z",
                "inLanguage": "en",
                "keywords": "solar, energy",
                "wordCount": 812,
            }
        ],
    )
    tags: list[str] = Field(description="Tags (keywords first).", examples=[["solar", "energy"]])
    sections: list[Section] = Field(description="Body sections in order.")
    featured_image: ImageRef | None = Field(description="The lead image, if any.")
    images: list[ImageRef] = Field(description="Every image.")
    markdown: str = Field(description="The whole article as Markdown.", examples=["# ..."])
    html: str = Field(description="The whole article as sanitized HTML.", examples=["<h1>..."])
    word_count: int = Field(description="Words in the body.", examples=[812])
    reading_time_minutes: int = Field(
        description="At 200 words per minute, rounded up.", examples=[5]
    )
    language: str = Field(description="Language tag.", examples=["en"])
    provenance: Provenance = Field(description="How it was made.")
    created_at: str = Field(description="ISO 8601 UTC.", examples=["2026-11-26T06:30:00Z"])
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Echo of the request's.", examples=[{"cms_post_id": 42}]
    )
    sources: list[SourceInfo] = Field(
        default_factory=list,
        description="The request's sources, as loaded (no text).",
        examples=[[{"id": "src_1", "type": "text", "title": "Cost survey 2025", "chars": 66}]],
    )
    citations: list[CitationInfo] = Field(
        default_factory=list,
        description="Every kept citation: its marker, the source and the passage it points at. "
        "The references list at the end of `markdown` and `html` numbers the cited sources.",
        examples=[
            [
                {
                    "marker": 1,
                    "source_id": "src_1",
                    "section": 0,
                    "passage": "…",
                    "start": 0,
                    "end": 66,
                }
            ]
        ],
    )
    revision: int = Field(
        default=1,
        ge=1,
        description="1 as first assembled; each regenerated section or image adds one.",
        examples=[1],
    )
    updated_at: str | None = Field(
        default=None,
        description="ISO 8601 UTC time of this revision (absent on revision 1).",
        examples=["2026-11-26T07:10:00Z"],
    )


class OutlineView(BaseModel):
    title: str = Field(description="Title.", examples=["The Future of Solar Power"])
    headings: list[str] = Field(
        description="Section headings, in order.", examples=[["Why now", "How panels work"]]
    )


class EditInfo(BaseModel):
    kind: Literal["section", "image"] = Field(
        description="What is regenerated.", examples=["section"]
    )
    index: int = Field(
        description="0-based index in `sections`, or image slot (0 is featured).", examples=[2]
    )
    revision: int = Field(description="The revision it makes.", examples=[2])
    status: Literal["queued", "running", "succeeded", "failed"] = Field(
        description="Where it stands; the article keeps its last revision meanwhile.",
        examples=["queued"],
    )
    error: ErrorInfo | None = Field(default=None, description="Present once `failed`.")
    requested_at: str = Field(description="ISO 8601 UTC.", examples=["2026-11-26T07:09:00Z"])


class BatchRef(BaseModel):
    id: str = Field(description="The batch.", examples=["bat_5c1e0f2a9b3d4c6e8f7a1b2c"])
    index: int = Field(description="The item's place in the batch.", examples=[3])
    waiting: bool = Field(
        description="`queued` but not started: waiting for one of the key's batch slots.",
        examples=[False],
    )


class ArticleStatus(BaseModel):
    id: str = Field(description="Article id.", examples=["art_3f2a9c1d"])
    status: Status = Field(description="Where it stands.", examples=["writing"])
    progress: Progress = Field(description="Progress.")
    article: Article | None = Field(default=None, description="Present once `succeeded`.")
    revision: int | None = Field(
        default=None,
        description="The article's latest revision (present once `succeeded`); "
        "`?revision=N` reads an older one.",
        examples=[1],
    )
    outline: OutlineView | None = Field(
        default=None,
        description="Present once the outline is written; during `awaiting_review` it is the "
        "outline to approve or edit.",
    )
    edit: EditInfo | None = Field(
        default=None, description="The latest section or image regeneration, if any."
    )
    error: ErrorInfo | None = Field(default=None, description="Present once `failed`.")
    sources: list[SourceInfo] = Field(
        default_factory=list,
        description="Each source as loaded, with its error if it could not be used (once the "
        "`sources` stage has run). Their text: GET /v1/articles/{id}/sources.",
        examples=[[{"id": "src_1", "type": "url", "title": "Solar 2026", "chars": 5120}]],
    )
    batch: BatchRef | None = Field(
        default=None, description="The batch this article is an item of (POST /v1/batches)."
    )
    publish: dict[str, PublishInfo] = Field(
        default_factory=dict,
        description="By target (`wordpress`, `ghost`): where publishing the article stands, "
        "once asked for (the request's `publish`, or POST /v1/articles/{id}/publish).",
        examples=[
            {
                "wordpress": {
                    "target": "wordpress",
                    "state": "published",
                    "status": "draft",
                    "post_id": "42",
                    "url": "https://blog.example.com/?p=42",
                    "edit_url": "https://blog.example.com/wp-admin/post.php?post=42&action=edit",
                    "media_ids": {"img_9b1e2c0d4f6a8b0c2e4f6a8b": "57"},
                    "featured_media": "57",
                    "tag_ids": ["12"],
                    "seo_meta": ["_yoast_wpseo_metadesc"],
                    "revision": 1,
                    "attempts": 1,
                    "error": None,
                    "requested_at": "2026-11-26T06:31:00Z",
                    "published_at": "2026-11-26T06:31:04Z",
                }
            }
        ],
    )
    timestamps: dict[str, str] = Field(
        description="ISO times: created, started, finished; `review_expires` while "
        "`awaiting_review`.",
        examples=[{"created": "2026-11-26T06:30:00Z"}],
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Echo of the request's.", examples=[{"cms_post_id": 42}]
    )


class ArticleList(BaseModel):
    data: list[ArticleStatus] = Field(description="Newest first; `article` is left out.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page.", examples=["1764140000.123"]
    )
