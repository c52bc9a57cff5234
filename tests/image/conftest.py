"""Image-service fixtures: the tiny SD pipeline, and real HTTP servers (uvicorn in a thread).

The servers run in this process so that a test can talk HTTP to them and still share the tiny
model cache; each one loads the pipeline through the app's own lifespan.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.processes import free_port

# Small and quick: 32x32 pixels is a 16x16 latent for the tiny pipeline, 2 steps by default.
SMALL = {"width": 32, "height": 32, "steps": 2}


@pytest.fixture(scope="session")
def tiny_image_path(cache_dir: Path) -> Path:
    from services.common.tiny import build_tiny_image

    return build_tiny_image(cache_dir)


@contextmanager
def serve_image(**overrides: Any) -> Iterator[httpx.Client]:
    """Runs the image app under uvicorn on a free port; yields a client once /readyz is 200."""
    import uvicorn

    from services.image.app import create_app
    from services.image.config import ImageSettings

    settings = ImageSettings(**{"image_default_steps": 2, **overrides})
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the image server did not get ready")
            time.sleep(0.1)
        yield client
    finally:
        client.close()
        server.should_exit = True
        thread.join(timeout=60)


@pytest.fixture(scope="session")
def image_client(tiny_image_path: Path) -> Iterator[httpx.Client]:
    """The default server: tiny model, 2 default steps, a preview every 2 steps."""
    with serve_image(image_preview_every=2) as client:
        yield client


def pixels(b64_png: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(b64_png))) as image:
        return np.asarray(image.convert("RGB"))


def draw(client: httpx.Client, **body: Any) -> dict[str, Any]:
    """POST /v1/images with small defaults; asserts 200 and returns the JSON."""
    response = client.post("/v1/images", json={"prompt": "a lighthouse", **SMALL, **body})
    assert response.status_code == 200, response.text
    return dict(response.json())


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when absent), e.g. metric(c, "..._total", status="success")."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs from SSE lines."""
    event, data = "message", ""
    for line in lines:
        if line.startswith("event:"):
            event = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            data = line.partition(":")[2].strip()
        elif not line and data:
            yield event, data
            event, data = "message", ""
