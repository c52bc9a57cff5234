"""Concurrent compatible requests share pipeline calls, and their images do not change."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.image.conftest import draw, metric, pixels, serve_image

CALLS = "articleforge_image_batch_size_count"
IMAGES_IN_CALLS = "articleforge_image_batch_size_sum"


def test_concurrent_compatible_requests_run_together_and_match_running_alone(
    tiny_image_path: Path, image_client: httpx.Client
) -> None:
    # A long wait window so that four requests sent at once surely meet, even on a busy CPU.
    with serve_image(
        image_batch_wait_ms=1500, image_batch_quiet_ms=0, image_max_batch_size=8
    ) as client:
        bodies: list[dict[str, Any]] = [
            {"prompt": "a red fox", "seed": 1},
            {"prompt": "a blue house by the sea", "negative_prompt": "people", "seed": 2},
            {"prompt": "a green field", "seed": 3, "n": 2},
            {"prompt": "a yellow boat", "seed": 4},
        ]
        # Same size and steps as the others but another scheduler: it must not join them.
        odd = {"prompt": "a grey cat", "seed": 5, "scheduler": "euler"}
        calls, images = metric(client, CALLS), metric(client, IMAGES_IN_CALLS)
        with ThreadPoolExecutor(len(bodies) + 1) as pool:
            futures = [pool.submit(draw, client, **body) for body in [*bodies, odd]]
            replies = [future.result() for future in futures]
        calls_made = metric(client, CALLS) - calls
        assert metric(client, IMAGES_IN_CALLS) - images == 6
        assert calls_made < len(bodies) + 1  # fewer pipeline calls than requests
        assert calls_made >= 2  # the euler request ran in its own call
        assert replies[-1]["timings"]["batch_size"] == 1
        assert all(reply["timings"]["batch_size"] > 1 for reply in replies[:-1])

        # The same requests one at a time, on the default server (same model, no wait window).
        for body, reply in zip(bodies, replies, strict=False):
            alone = draw(image_client, **body)
            assert alone["timings"]["batch_size"] == len(alone["images"])
            for batched, single in zip(reply["images"], alone["images"], strict=True):
                assert batched["seed"] == single["seed"]
                # Another batch shape may reorder float sums in CPU kernels (~1e-6 before
                # rounding to 8 bits): at most one level on a pixel.
                a, b = pixels(batched["b64_png"]), pixels(single["b64_png"])
                assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
