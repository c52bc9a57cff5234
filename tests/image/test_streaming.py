"""SSE progress with previews, and a client that leaves stops the pipeline."""

from __future__ import annotations

import base64
import io
import json
import time

import httpx
import numpy as np
from PIL import Image

from tests.image.conftest import SMALL, draw, metric, pixels, sse_events

STEPS = "articleforge_image_steps_total"
CANCELLED = {"status": "cancelled"}


def test_sse_streams_every_step_with_previews_then_the_result(image_client: httpx.Client) -> None:
    body = {"prompt": "a lighthouse", **SMALL, "steps": 4, "seed": 11, "stream": True}
    with image_client.stream("POST", "/v1/images", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response.iter_lines()))

    kinds = [kind for kind, _ in events]
    assert kinds == ["progress"] * 4 + ["result"]
    progress = [json.loads(data) for _, data in events[:-1]]
    assert [(p["step"], p["steps"]) for p in progress] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    # The server previews every 2 steps: a latent-sized (16x16) PNG, no VAE decode.
    assert [("preview_b64" in p) for p in progress] == [False, True, False, True]
    preview = Image.open(io.BytesIO(base64.b64decode(progress[1]["preview_b64"])))
    assert preview.size == (16, 16)

    result = json.loads(events[-1][1])
    plain = draw(image_client, steps=4, seed=11)
    assert result["images"][0]["seed"] == 11
    assert np.array_equal(
        pixels(result["images"][0]["b64_png"]), pixels(plain["images"][0]["b64_png"])
    )


def test_a_client_that_disconnects_stops_the_pipeline(image_client: httpx.Client) -> None:
    steps_before = metric(image_client, STEPS)
    cancelled_before = metric(image_client, "articleforge_image_requests_total", **CANCELLED)
    # 150 steps at the native 64x64: far longer than noticing a closed connection takes.
    body = {"prompt": "a long one", "steps": 150, "stream": True}
    with image_client.stream("POST", "/v1/images", json=body) as response:
        for kind, data in sse_events(response.iter_lines()):
            assert kind == "progress"
            assert json.loads(data)["step"] == 1
            break  # leave after the first step; closing the response drops the connection

    deadline = time.monotonic() + 60
    while (
        metric(image_client, "articleforge_image_requests_total", **CANCELLED) == cancelled_before
    ):
        assert time.monotonic() < deadline, "the server never saw the client leave"
        time.sleep(0.05)
    # Wait until no more steps run, then count them.
    ran = -1.0
    while ran != metric(image_client, STEPS) - steps_before:
        ran = metric(image_client, STEPS) - steps_before
        time.sleep(0.5)
    assert 1 <= ran < 150
    # The service is free again.
    assert draw(image_client, seed=1)["images"][0]["seed"] == 1
