"""The editorial loop's protocol: an edited outline, section and image regeneration requests,
and what a regeneration answers (see ``services.gateway.editorial``)."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from services.common.limits import (
    MAX_HEADING_CHARS,
    MAX_SECTIONS,
    MAX_TITLE_CHARS,
    GuidanceScale,
    PromptText,
    Seed,
    Steps,
    Temperature,
)
from services.gateway.schemas import REQUEST_CONFIG, EditInfo, SchedulerSteps
from services.gateway.sources import MAX_SOURCES, SourceSpec
from services.image.config import SchedulerName


def _one_line(value: str, name: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{name} must be one line without control characters")
    value = value.strip()
    if not value:
        raise ValueError(f"{name} must not be blank")
    return value


class OutlineEdit(BaseModel):
    """`PUT /v1/articles/{id}/outline`: the outline to write, replacing the proposed one."""

    model_config = REQUEST_CONFIG

    title: str = Field(
        min_length=1,
        max_length=MAX_TITLE_CHARS,
        description="The article's title.",
        examples=["Solar Power at Home: What It Costs and What It Saves"],
    )
    headings: list[str] = Field(
        min_length=1,
        max_length=MAX_SECTIONS,
        description=f"Section headings in order (1..{MAX_SECTIONS}, each "
        f"1..{MAX_HEADING_CHARS} characters); one section is written per heading, so their "
        "number may differ from the request's `sections`.",
        examples=[["Why now", "What panels cost", "Net metering explained"]],
    )
    sources: list[SourceSpec] | None = Field(
        default=None,
        max_length=MAX_SOURCES,
        description="Replaces the article's sources (add some, leave some out), as in the "
        "article request; they are loaded again before the sections are written, with ids "
        "by their new positions. Absent: the sources stay as they are.",
        examples=[[{"type": "text", "title": "Cost survey 2025", "text": "Panels cost …"}]],
    )

    @field_validator("title")
    @classmethod
    def _title(cls, value: str) -> str:
        return _one_line(value, "title")

    @field_validator("headings")
    @classmethod
    def _headings(cls, value: list[str]) -> list[str]:
        cleaned = []
        for k, heading in enumerate(value):
            if len(heading) > MAX_HEADING_CHARS:
                raise ValueError(
                    f"headings[{k}] must be at most {MAX_HEADING_CHARS} characters, "
                    f"got {len(heading)}"
                )
            cleaned.append(_one_line(heading, f"headings[{k}]"))
        return cleaned


class SectionRegenerate(BaseModel):
    """`POST /v1/articles/{id}/sections/{k}/regenerate`: every field is optional."""

    model_config = REQUEST_CONFIG

    instructions: PromptText | None = Field(
        default=None,
        description="What to change, in the editor's words; added to the prompt.",
        examples=["shorter, with an example"],
    )
    seed: Seed | None = Field(
        default=None,
        description="Fixes the sampling; random when absent (so each call gives a new text).",
        examples=[11],
    )
    temperature: Temperature | None = Field(
        default=None,
        description="Sampling temperature; the article's `text.temperature` when absent.",
        examples=[0.9],
    )


class ImageRegenerate(SchedulerSteps):
    """`POST /v1/articles/{id}/images/{k}/regenerate`: every field is optional; absent ones
    keep the image's prompt and the article's image options."""

    model_config = REQUEST_CONFIG

    prompt: PromptText | None = Field(
        default=None,
        description="The prompt, used as given (no `images.style` added); the image's "
        "current prompt when absent.",
        examples=["a rooftop covered in solar panels at sunrise, watercolor"],
    )
    negative_prompt: PromptText | None = Field(
        default=None,
        description="What to steer away from; the article's `images.negative_prompt` (or the "
        "default) when absent.",
        examples=["text, watermark, people"],
    )
    seed: Seed | None = Field(
        default=None,
        description="Seed of the new image; random when absent (so each call draws anew).",
        examples=[4321],
    )
    steps: Steps | None = Field(
        default=None,
        description="Denoising steps; the article's `images.steps` when absent.",
        examples=[30],
    )
    guidance_scale: GuidanceScale | None = Field(
        default=None,
        description="Classifier-free guidance; the article's when absent.",
        examples=[7.0],
    )
    scheduler: SchedulerName | None = Field(
        default=None,
        description="Sampler; the article's `images.scheduler` (or the service's default) "
        "when absent.",
        examples=["euler_a"],
    )


class EditLinks(BaseModel):
    self: str = Field(description="The article's status URL.", examples=["/v1/articles/art_1"])
    revision: str = Field(
        description="Where the new revision will be readable.",
        examples=["/v1/articles/art_1?revision=2"],
    )


class EditAccepted(BaseModel):
    id: str = Field(description="Article id.", examples=["art_3f2a9c1d"])
    revision: int = Field(description="The revision this regeneration makes.", examples=[2])
    edit: EditInfo = Field(description="The regeneration, `queued`.")
    links: EditLinks = Field(description="Where to follow it.")
