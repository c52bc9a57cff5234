"""The image service's protocol: request and response models, the OpenAI subset included."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# MAX_SEED is re-exported for the engine, which checks seed + n - 1 against it.
from services.common.limits import MAX_SEED as MAX_SEED
from services.common.limits import (
    MAX_SIDE,
    MIN_SIDE,
    SIDE_MULTIPLE,
    GuidanceScale,
    ImageSide,
    Seed,
    Steps,
)
from services.image.config import SchedulerName

# Static ceilings for the OpenAPI page (the shared ones come from services.common.limits). The
# configured limits (ARTICLEFORGE_IMAGE_MAX_SIDE, _MAX_PROMPT_LENGTH, _MAX_BATCH_SIZE) and the
# pipeline's own minimum size are checked by the engine and named in the 400 it answers.
MAX_N = 8
MAX_PROMPT_CHARS = 20_000

_SIZE = re.compile(r"^(\d{1,4})x(\d{1,4})$")


@dataclass(frozen=True)
class ImageParams:
    """What the engine needs to draw one request; None means the service default."""

    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    scheduler: str | None = None
    seed: int | None = None
    n: int = 1


class ImagesRequest(BaseModel):
    """`POST /v1/images`: a prompt in, PNGs out."""

    # JSON types as the OpenAPI states them (`true` is not a step count), and no NaN or
    # infinities: each is a 422 naming the field, never passed on to the pipeline.
    model_config = ConfigDict(strict=True, allow_inf_nan=False)

    prompt: str = Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="What to draw.",
        examples=["a lighthouse on a cliff at dusk, watercolor"],
    )
    negative_prompt: str = Field(
        default="",
        max_length=MAX_PROMPT_CHARS,
        description="What to steer away from (used when guidance_scale > 1).",
        examples=["blurry, text, watermark"],
    )
    width: ImageSide | None = Field(
        default=None,
        description=f"Pixels, a multiple of {SIDE_MULTIPLE}; the model's native width when absent.",
        examples=[512],
    )
    height: ImageSide | None = Field(
        default=None,
        description=f"Pixels, a multiple of {SIDE_MULTIPLE}; the model's native height when "
        "absent.",
        examples=[512],
    )
    steps: Steps | None = Field(
        default=None,
        description="Denoising steps; the service default (ARTICLEFORGE_IMAGE_DEFAULT_STEPS) "
        "when absent.",
        examples=[30],
    )
    guidance_scale: GuidanceScale | None = Field(
        default=None,
        description="Classifier-free guidance (CFG scale); 1 or less turns it off.",
        examples=[7.0],
    )
    scheduler: SchedulerName | None = Field(
        default=None,
        description="Sampler; the service default (`dpmpp_2m`) when absent.",
        examples=["dpmpp_2m"],
    )
    seed: Seed | None = Field(
        default=None,
        description="Image k gets seed + k, so it equals a single request with that seed. "
        "Random when absent; the reply says which was used.",
        examples=[1234],
    )
    n: int = Field(default=1, ge=1, le=MAX_N, description="How many images.", examples=[1])
    stream: bool = Field(
        default=False,
        description="Answer with Server-Sent Events: `progress` per step, then `result`.",
        examples=[False],
    )

    def to_params(self) -> ImageParams:
        return ImageParams(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            width=self.width,
            height=self.height,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            scheduler=self.scheduler,
            seed=self.seed,
            n=self.n,
        )


class GeneratedImage(BaseModel):
    b64_png: str | None = Field(
        description="Base64 PNG whose `parameters` text chunk holds the prompt and settings "
        "(AUTOMATIC1111 infotext). Null when the safety checker flagged the image.",
        examples=["iVBORw0KGgoAAAANSUhEUgAA..."],
    )
    seed: int = Field(description="This image's seed; send it back to redraw it.", examples=[1234])
    width: int = Field(description="Pixels.", examples=[512])
    height: int = Field(description="Pixels.", examples=[512])
    nsfw: bool = Field(
        default=False,
        description="The safety checker flagged this image (only when it is switched on).",
        examples=[False],
    )


class ImageTimings(BaseModel):
    queue_seconds: float = Field(description="Wait before the pipeline call.", examples=[0.02])
    inference_seconds: float = Field(
        description="The pipeline call (shared with the batch).", examples=[1.8]
    )
    total_seconds: float = Field(description="From arrival to the reply.", examples=[1.9])
    seconds_per_image: float = Field(
        description="inference_seconds over the images in the batch.", examples=[0.45]
    )
    batch_size: int = Field(
        description="Images drawn in the same pipeline call, other requests' included.",
        examples=[4],
    )


class ImagesResponse(BaseModel):
    model: str = Field(description="The model that drew.", examples=["tiny"])
    scheduler: SchedulerName = Field(description="The sampler used.", examples=["dpmpp_2m"])
    steps: int = Field(description="Denoising steps.", examples=[30])
    guidance_scale: float = Field(description="CFG scale used.", examples=[7.0])
    images: list[GeneratedImage] = Field(description="One per image, in seed order.")
    timings: ImageTimings = Field(description="Where the time went.")


class ProgressEvent(BaseModel):
    """Data of an SSE `progress` event."""

    step: int = Field(description="Steps done, from 1.", examples=[5])
    steps: int = Field(
        description="Steps the scheduler runs in all (PLMS runs one more than asked).",
        examples=[30],
    )
    preview_b64: str | None = Field(
        default=None,
        description="Every K steps: base64 PNG of the first image, from a latent-to-RGB "
        "approximation at 1/8 of the size.",
        examples=[None],
    )


# --- OpenAI-compatible ------------------------------------------------------------------------


class OpenAIImagesRequest(BaseModel):
    """`POST /v1/images/generations`: the subset of OpenAI's Images API that maps onto SD."""

    # Unknown OpenAI fields (quality, style, user, ...) are accepted and ignored.
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    prompt: str = Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="What to draw.",
        examples=["a lighthouse on a cliff at dusk, watercolor"],
    )
    model: str | None = Field(
        default=None,
        max_length=256,
        description="Ignored: the service draws with its one model.",
        examples=["tiny"],
    )
    n: int = Field(default=1, ge=1, le=MAX_N, description="How many images.", examples=[1])
    size: str | None = Field(
        default=None,
        description=f"`WIDTHxHEIGHT`, each a multiple of {SIDE_MULTIPLE} up to {MAX_SIDE}; "
        "native size when absent.",
        examples=["512x512"],
    )
    response_format: Literal["b64_json"] | None = Field(
        default="b64_json",
        description="Only `b64_json`: the service keeps no files to link to.",
        examples=["b64_json"],
    )
    seed: Seed | None = Field(
        default=None,
        description="Extension (pass with `extra_body`): the seed of the first image.",
        examples=[1234],
    )

    @field_validator("size")
    @classmethod
    def _check_size(cls, size: str | None) -> str | None:
        if size is None:
            return None
        match = _SIZE.match(size)
        if not match:
            raise ValueError("size must be WIDTHxHEIGHT, for example 512x512")
        for side in match.groups():
            if int(side) % SIDE_MULTIPLE or not MIN_SIDE <= int(side) <= MAX_SIDE:
                raise ValueError(
                    f"each side must be a multiple of {SIDE_MULTIPLE} from {MIN_SIDE} to {MAX_SIDE}"
                )
        return size

    def to_params(self) -> ImageParams:
        width = height = None
        if self.size is not None:
            width, height = (int(side) for side in self.size.split("x"))
        return ImageParams(prompt=self.prompt, width=width, height=height, seed=self.seed, n=self.n)


class OpenAIImage(BaseModel):
    b64_json: str | None = Field(
        description="Base64 PNG; null when the safety checker flagged the image.",
        examples=["iVBORw0KGgoAAAANSUhEUgAA..."],
    )
    revised_prompt: str | None = Field(
        default=None, description="Always null: the prompt is used as given.", examples=[None]
    )


class OpenAIImagesResponse(BaseModel):
    created: int = Field(
        default_factory=lambda: int(time.time()), description="Unix time.", examples=[1764140000]
    )
    data: list[OpenAIImage] = Field(description="One per image.")
