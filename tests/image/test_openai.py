"""POST /v1/images/generations: the OpenAI Images API subset, over real HTTP."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from services.image.infotext import read_parameters
from tests.image.conftest import draw, pixels


def test_generations_answers_in_openais_shape(image_client: httpx.Client) -> None:
    body = {
        "model": "dall-e-3",
        "prompt": "a lighthouse",
        "n": 2,
        "size": "32x48",
        "response_format": "b64_json",
        "quality": "hd",
        "seed": 21,
    }
    reply = image_client.post("/v1/images/generations", json=body)
    assert reply.status_code == 200
    data = reply.json()
    assert isinstance(data["created"], int)
    assert len(data["data"]) == 2
    first = base64.b64decode(data["data"][0]["b64_json"])
    params = read_parameters(first)
    assert (params.width, params.height, params.seed, params.steps) == (32, 48, 21, 2)
    # The same image as the native endpoint draws with the same parameters.
    native = draw(image_client, **params.to_request())["images"][0]["b64_png"]
    assert np.array_equal(pixels(data["data"][0]["b64_json"]), pixels(native))


@pytest.mark.parametrize(
    ("field", "value", "limit"),
    [
        ("size", "33x32", "multiple of 8"),
        ("size", "4096x4096", "from 8 to 2048"),
        ("size", "large", "WIDTHxHEIGHT"),
        ("response_format", "url", "'b64_json'"),
        ("n", 9, "less than or equal to 8"),
    ],
)
def test_generations_bounds(
    image_client: httpx.Client, field: str, value: object, limit: str
) -> None:
    reply = image_client.post("/v1/images/generations", json={"prompt": "a", field: value})
    assert reply.status_code == 422
    error = reply.json()["error"]
    assert error["param"] == field
    assert limit in error["message"]
