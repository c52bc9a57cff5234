"""One definition of each shared limit: every schema that takes a seed, steps, guidance, an image
side, a temperature or a top_p states the same bounds, the ones in services.common.limits, and
the studio's widgets stop there too. (The whole-system side: tests/gateway/test_seed_limits.py.)
"""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from services.common import limits
from services.gateway.editorial_schemas import ImageRegenerate, OutlineEdit, SectionRegenerate
from services.gateway.schemas import ArticleRequest, ImageOptions, TextOptions
from services.image.schemas import ImagesRequest, OpenAIImagesRequest
from services.text.schemas import ChatCompletionRequest, CompletionRequest, GenerateRequest
from services.ui.limits import bounds

SEEDS = [TextOptions, ImageOptions, SectionRegenerate, ImageRegenerate, ImagesRequest]
STEPS = [ImageOptions, ImageRegenerate, ImagesRequest]
GUIDANCE = [ImageOptions, ImageRegenerate, ImagesRequest]
TEMPERATURES = [TextOptions, SectionRegenerate, GenerateRequest, ChatCompletionRequest]
TOP_PS = [TextOptions, GenerateRequest, CompletionRequest]


def _range(model: type[BaseModel], name: str) -> tuple[float | None, float | None]:
    found = bounds(model, name)
    return found.low, found.high


@pytest.mark.parametrize("model", [*SEEDS, OpenAIImagesRequest], ids=lambda m: m.__name__)
def test_every_article_and_image_seed_stops_at_the_image_services_limit(
    model: type[BaseModel],
) -> None:
    assert _range(model, "seed") == (0, limits.MAX_SEED) == (0, 2**32 - 1)


def test_the_other_shared_bounds_are_the_same_in_every_schema() -> None:
    for model in STEPS:
        assert _range(model, "steps") == (1, limits.MAX_STEPS), model
    for model in GUIDANCE:
        assert _range(model, "guidance_scale") == (0, limits.MAX_GUIDANCE), model
    for model in TEMPERATURES:
        assert _range(model, "temperature") == (0, limits.MAX_TEMPERATURE), model
    for model in TOP_PS:
        assert _range(model, "top_p") == (0, 1) and bounds(model, "top_p").low_open, model
    for name in ("width", "height"):
        assert _range(ImagesRequest, name) == (limits.MIN_SIDE, limits.MAX_SIDE)
    assert _range(ArticleRequest, "sections")[1] == bounds(OutlineEdit, "headings").max_length
    assert _range(ArticleRequest, "target_words") == (limits.MIN_WORDS, limits.MAX_WORDS)


def test_images_of_an_article_stay_in_the_seed_range_as_a_whole() -> None:
    # Image k is drawn with seed + k, so the last one decides.
    ImageOptions(count=2, seed=limits.MAX_SEED - 1)
    with pytest.raises(ValidationError, match="seed \\+ count - 1 must be <= 4294967295") as info:
        ImageOptions(count=2, seed=limits.MAX_SEED)
    assert info.value.errors()[0]["loc"] == ("seed",)


def test_a_random_seed_leaves_room_for_the_seeds_made_from_it() -> None:
    assert limits.seed_or_random(limits.MAX_SEED) == limits.MAX_SEED
    assert limits.seed_or_random(0) == 0
    drawn = [limits.seed_or_random(None) for _ in range(200)]
    assert len(set(drawn)) > 100
    # image k: seed + k; image prompt k: seed + 100 + k
    assert all(0 <= s and s + 100 + limits.MAX_IMAGES <= limits.MAX_SEED for s in drawn)
