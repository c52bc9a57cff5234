"""The PNG `parameters` chunk: AUTOMATIC1111's infotext, written and read back."""

from __future__ import annotations

import numpy as np
import pytest

from services.image.infotext import (
    ImageParameters,
    encode_png,
    format_infotext,
    parse_infotext,
    parse_parameters,
    read_parameters,
)

PARAMS = ImageParameters(
    prompt="a lighthouse, at dusk: watercolor",
    negative_prompt="blurry, text",
    steps=30,
    scheduler="dpmpp_2m_karras",
    guidance_scale=7.5,
    seed=1234,
    width=512,
    height=768,
    model="stable-diffusion-v1-5/stable-diffusion-v1-5",
)


def test_the_text_has_automatic1111s_layout() -> None:
    assert format_infotext(PARAMS) == (
        "a lighthouse, at dusk: watercolor\n"
        "Negative prompt: blurry, text\n"
        "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 1234, Size: 512x768, "
        "Model: stable-diffusion-v1-5/stable-diffusion-v1-5"
    )


@pytest.mark.parametrize(
    "params",
    [
        PARAMS,
        ImageParameters("x", "", 1, "euler_a", 0.0, 0, 8, 8, "tiny"),
        ImageParameters(
            "été ☀\nline two", "no\nnot this", 150, "pndm", 30, 2**32 - 1, 64, 32, "C:\\m, v2"
        ),
    ],
)
def test_write_then_read_back(params: ImageParameters) -> None:
    assert parse_parameters(format_infotext(params)) == params
    png = encode_png(np.zeros((4, 4, 3), dtype=np.uint8), params)
    assert read_parameters(png) == params


def test_reads_an_automatic1111_infotext() -> None:
    text = (
        "masterpiece, a castle\nNegative prompt: lowres\nSteps: 20, Sampler: Euler a, "
        "Schedule type: Automatic, CFG scale: 7, Seed: 42, Size: 512x512, Model hash: 6ce0161689, "
        'Model: v1-5-pruned-emaonly, Lora hashes: "a: 1, b: 2", Version: v1.10.1'
    )
    raw = parse_infotext(text)
    assert raw["prompt"] == "masterpiece, a castle"
    assert raw["Lora hashes"] == "a: 1, b: 2"
    params = parse_parameters(text)
    assert (params.scheduler, params.seed, params.steps, params.guidance_scale) == (
        "euler_a",
        42,
        20,
        7.0,
    )


def test_a_png_without_the_chunk_is_an_error() -> None:
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.new("RGB", (2, 2)).save(out, format="PNG")
    with pytest.raises(ValueError, match="parameters"):
        read_parameters(out.getvalue())
