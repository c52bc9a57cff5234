"""Bad input to the image service: NaN/inf and wrong JSON types refused by name, steps capped."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from services.image.config import ImageSettings
from tests.image.conftest import SMALL, serve_image


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_guidance_scale_is_a_422_naming_it(
    image_client: httpx.Client, literal: str
) -> None:
    raw = f'{{"prompt": "a lighthouse", "steps": 2, "guidance_scale": {literal}}}'
    response = image_client.post(
        "/v1/images", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "guidance_scale"
    assert "finite number" in error["message"]


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/v1/images", "steps", True),
        ("/v1/images", "n", "2"),
        ("/v1/images", "seed", 1.5),
        ("/v1/images/generations", "n", False),
    ],
)
def test_values_of_the_wrong_json_type_are_a_422(
    image_client: httpx.Client, path: str, field: str, value: Any
) -> None:
    response = image_client.post(path, json={"prompt": "a lighthouse", field: value})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == field


def test_steps_over_the_configured_limit_are_a_400(tiny_image_path: object) -> None:
    with serve_image(image_max_steps=3) as client:
        response = client.post("/v1/images", json={"prompt": "a", **SMALL, "steps": 4})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == "steps"
        assert error["message"] == "steps must be <= 3 (ARTICLEFORGE_IMAGE_MAX_STEPS), got 4"
        assert client.post("/v1/images", json={"prompt": "a", **SMALL, "steps": 3}).is_success


def test_a_default_above_the_step_limit_fails_at_start_up() -> None:
    with pytest.raises(ValueError, match="ARTICLEFORGE_IMAGE_MAX_STEPS"):
        ImageSettings(_env_file=None, image_default_steps=30, image_max_steps=20)  # type: ignore[call-arg]
