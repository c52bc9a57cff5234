"""Every bound that more than one schema states, defined once.

The gateway's article and editorial schemas, the image and text services' schemas and the studio
all take their limits from here, so that what the gateway accepts is what the services behind it
accept, and the OpenAPI pages say so. Each type carries only its constraints (and `strict`: JSON
types as the OpenAPI states them, `true` is not a step count); the description and the example
stay with the field, which says what the number means there. Use as ``seed: Seed | None =
Field(default=None, description=..., examples=[...])``.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from pydantic import Field

# AUTOMATIC1111's seed range, and the image service's. Every seed of an article (text and
# images) and of a regeneration stays within it, so none is accepted that a service refuses.
MAX_SEED = 2**32 - 1
# Seeds picked when a request gives none stay below this, so that the seeds derived from them
# (image k: seed + k; section k: seed + 1 + k; image prompt k: seed + 100 + k) stay in range too.
RANDOM_SEEDS = 2**31

MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MAX_TEMPERATURE = 2.0
# An image side: a multiple of 8 (the VAE's downsampling), at most 2048 pixels.
SIDE_MULTIPLE = 8
MIN_SIDE = 8
MAX_SIDE = 2048
# Images of one article: the featured image and one per section after it.
MAX_IMAGES = 8
MIN_WORDS = 100
MAX_WORDS = 4000
# Body sections of an article, which is also the most headings an outline has.
MAX_SECTIONS = 12
MAX_TITLE_CHARS = 150
MAX_HEADING_CHARS = 100
# What an editor types into a request: an image prompt, a negative prompt, instructions.
MAX_PROMPT_CHARS = 1000

Seed = Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)]
Steps = Annotated[int, Field(strict=True, ge=1, le=MAX_STEPS)]
GuidanceScale = Annotated[float, Field(strict=True, ge=0.0, le=MAX_GUIDANCE)]
Temperature = Annotated[float, Field(strict=True, ge=0.0, le=MAX_TEMPERATURE)]
TopP = Annotated[float, Field(strict=True, gt=0.0, le=1.0)]
ImageSide = Annotated[int, Field(strict=True, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=SIDE_MULTIPLE)]
ImageCount = Annotated[int, Field(strict=True, ge=0, le=MAX_IMAGES)]
TargetWords = Annotated[int, Field(strict=True, ge=MIN_WORDS, le=MAX_WORDS)]
SectionCount = Annotated[int, Field(strict=True, ge=1, le=MAX_SECTIONS)]
PromptText = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]


def seed_or_random(seed: int | None) -> int:
    """``seed``, or a random one when the request gave none."""
    return seed if seed is not None else secrets.randbelow(RANDOM_SEEDS)
