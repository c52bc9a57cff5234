"""Bounds, configured limits, a full queue, the safety checker, and start-up failures."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from services.image.schemas import MAX_PROMPT_CHARS
from tests.image.conftest import SMALL, draw, metric, serve_image


@pytest.mark.parametrize(
    ("field", "value", "limit"),
    [
        ("width", 36, "multiple of 8"),
        ("height", 4096, "less than or equal to 2048"),
        ("width", 0, "greater than or equal to 8"),
        ("steps", 0, "greater than or equal to 1"),
        ("steps", 151, "less than or equal to 150"),
        ("guidance_scale", 30.5, "less than or equal to 30"),
        ("guidance_scale", -1, "greater than or equal to 0"),
        ("n", 9, "less than or equal to 8"),
        ("n", 0, "greater than or equal to 1"),
        ("seed", -1, "greater than or equal to 0"),
        ("seed", 2**32, "less than or equal to 4294967295"),
        ("scheduler", "heun", "'dpmpp_2m'"),
        ("prompt", "", "at least 1 character"),
        ("prompt", "x" * (MAX_PROMPT_CHARS + 1), f"at most {MAX_PROMPT_CHARS} characters"),
    ],
)
def test_a_broken_bound_is_a_422_naming_the_field_and_the_limit(
    image_client: httpx.Client, field: str, value: Any, limit: str
) -> None:
    body = {"prompt": "a lighthouse", **SMALL, field: value}
    response = image_client.post("/v1/images", json=body, headers={"X-Request-Id": "bounds-1"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == field
    assert error["message"].startswith(f"{field}: ")
    assert limit in error["message"]
    assert error["request_id"] == response.headers["X-Request-Id"] == "bounds-1"


def test_a_scheduler_that_cannot_run_the_steps_is_a_400(image_client: httpx.Client) -> None:
    response = image_client.post(
        "/v1/images", json={"prompt": "a", "scheduler": "lcm", "steps": 60}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "steps"
    assert "lcm" in response.json()["error"]["message"]


@pytest.fixture(scope="module")
def limited(tiny_image_path: Path) -> Iterator[httpx.Client]:
    with serve_image(
        image_max_queue=1,
        image_max_batch_size=2,
        image_max_side=48,
        image_max_prompt_length=20,
        image_batch_wait_ms=3000,
        image_batch_quiet_ms=0,
    ) as client:
        yield client


@pytest.mark.parametrize(
    ("body", "param", "limit"),
    [
        ({"prompt": "x" * 21}, "prompt", "the limit is 20 (ARTICLEFORGE_IMAGE_MAX_PROMPT_LENGTH)"),
        ({"negative_prompt": "x" * 21}, "negative_prompt", "the limit is 20"),
        ({"width": 64}, "width", "width must be <= 48 (ARTICLEFORGE_IMAGE_MAX_SIDE), got 64"),
        ({"n": 3}, "n", "n must be <= 2 (ARTICLEFORGE_IMAGE_MAX_BATCH_SIZE), got 3"),
        ({"seed": 2**32 - 1, "n": 2}, "seed", "seed + n - 1 must be <= 4294967295"),
    ],
)
def test_configured_limits_are_400s_that_name_the_setting(
    limited: httpx.Client, body: dict[str, Any], param: str, limit: str
) -> None:
    response = limited.post("/v1/images", json={"prompt": "a", **SMALL, **body})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert limit in error["message"]


def test_a_full_queue_answers_429_with_retry_after(limited: httpx.Client) -> None:
    # The limited server holds each request for its 3 s batch window: while the first one
    # waits there, the queue (1 request) is full, however fast the CPU draws.
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(draw, limited, seed=1)
        deadline = time.monotonic() + 30
        while metric(limited, "articleforge_image_queue_depth") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        rejected_before = metric(limited, "articleforge_image_requests_total", status="rejected")
        response = limited.post("/v1/images", json={"prompt": "a", **SMALL})
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert response.json()["error"]["type"] == "rate_limit_error"
        assert "ARTICLEFORGE_IMAGE_MAX_QUEUE" in response.json()["error"]["message"]
        rejected = metric(limited, "articleforge_image_requests_total", status="rejected")
        assert rejected == rejected_before + 1
        assert first.result()["images"][0]["seed"] == 1  # the admitted request still completes


def test_the_safety_checker_marks_flagged_images_instead_of_blacking_them_out(
    tiny_image_path: Path,
) -> None:
    # The tiny checker (random CLIP-vision weights) is built to flag every image.
    with serve_image(image_safety_checker=True) as client:
        flagged_before = metric(client, "articleforge_image_nsfw_total")
        reply = client.post("/v1/images", json={"prompt": "a", **SMALL, "n": 2, "seed": 5})
        assert reply.status_code == 200
        images = reply.json()["images"]
        assert [(i["nsfw"], i["b64_png"], i["seed"]) for i in images] == [
            (True, None, 5),
            (True, None, 6),
        ]
        assert metric(client, "articleforge_image_nsfw_total") == flagged_before + 2
        openai = client.post("/v1/images/generations", json={"prompt": "a", "size": "32x32"})
        assert openai.json()["data"] == [{"b64_json": None, "revised_prompt": None}]


def test_readyz_is_503_until_loaded_and_names_a_failed_load(tmp_path: Path) -> None:
    from services.image.app import create_app
    from services.image.config import ImageSettings

    settings = ImageSettings(image_model=str(tmp_path / "no-such-model"))
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 60
        while "still loading" in client.get("/readyz").json()["error"]["message"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get("/readyz").status_code == 503
        # One sentence: what was tried, what is missing, what to do.
        assert client.get("/readyz").json()["error"]["message"] == (
            f"image model {settings.image_model!r} could not be loaded: the folder "
            f"{settings.image_model} does not exist; set ARTICLEFORGE_IMAGE_MODEL to a model "
            "folder, a Hugging Face id or `tiny`"
        )
        response = client.post("/v1/images", json={"prompt": "a"})
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert json.loads(response.text)["error"]["type"] == "service_unavailable"


def test_unsafe_settings_fail_with_a_sentence_that_says_what_to_change() -> None:
    from pydantic import ValidationError

    from services.image.config import ImageSettings

    with pytest.raises(ValidationError, match="use float32 or auto"):
        ImageSettings(image_device="cpu", image_dtype="float16")
