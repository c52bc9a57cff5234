"""`articleforge serve image` as a real process, called with the official `openai` package."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from tests.processes import free_port, running

pytestmark = pytest.mark.e2e


def test_the_openai_sdk_draws_through_serve_image(cache_dir: Path, tmp_path: Path) -> None:
    from openai import OpenAI

    from services.common.tiny import build_tiny_image

    build_tiny_image(cache_dir)  # once, here, rather than inside the server's start-up
    port = free_port()
    env = {"ARTICLEFORGE_IMAGE_MODEL": "tiny", "ARTICLEFORGE_IMAGE_DEFAULT_STEPS": "2"}
    with running(
        ["serve", "image", "--port", str(port)],
        env=env,
        ready_url=f"http://127.0.0.1:{port}/readyz",
        log_path=tmp_path / "image.log",
    ):
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        reply = client.images.generate(
            model="tiny",
            prompt="a lighthouse at dusk",
            n=2,
            size="32x32",  # type: ignore[arg-type]
            response_format="b64_json",
            extra_body={"seed": 5},
        )
        assert reply.data is not None and len(reply.data) == 2
        for k, item in enumerate(reply.data):
            assert item.b64_json is not None
            with Image.open(io.BytesIO(base64.b64decode(item.b64_json))) as image:
                assert image.size == (32, 32)
                assert f"Seed: {5 + k}," in image.info["parameters"]
