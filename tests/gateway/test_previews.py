"""Image previews in article events: each image's latest step preview reaches the events
stream, throttled per image, and is gone once the image (and the article) is done. Real text and
image services on tiny models (started once for the module, a preview on every step), the real
pipeline jobs run by an in-process RQ worker, and a redis-server of the module's own."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image
from rq import Queue

from services.common.tiny import build_tiny_image
from services.gateway import jobs
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from services.gateway.previews import PreviewThrottle
from services.gateway.worker import InProcessWorker
from tests.gateway.test_promises import _sse
from tests.processes import free_port, serve_all
from tests.redis_server import OwnRedis

KEY = "sk-previews"
STEPS = 6
SIZE = 64
BODY: dict[str, Any] = {
    "topic": "The future of solar power",
    "target_words": 100,
    "sections": 1,
    "images": {"count": 2, "steps": STEPS, "size": f"{SIZE}x{SIZE}", "seed": 3},
    "text": {"seed": 7},
}
DATA_URL = "data:image/png;base64,"


@pytest.fixture(scope="module")
def own_redis() -> Iterator[OwnRedis]:
    with OwnRedis(free_port()) as server:
        yield server


@pytest.fixture(scope="module")
def services(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Text and image services (their URL settings); the image service previews every step."""
    ports = {"text": free_port(), "image": free_port()}
    urls = {
        "ARTICLEFORGE_TEXT_URL": f"http://127.0.0.1:{ports['text']}",
        "ARTICLEFORGE_IMAGE_URL": f"http://127.0.0.1:{ports['image']}",
    }
    env = {
        "ARTICLEFORGE_CACHE_DIR": str(cache_dir),
        "ARTICLEFORGE_IMAGE_PREVIEW_EVERY": "1",
        **urls,
    }
    with ExitStack() as stack:
        serve_all(stack, ("text", "image"), ports, env, tmp_path_factory.mktemp("logs"))
        yield urls


@pytest.fixture()
def gateway(
    own_redis: OwnRedis,
    services: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Any]:
    """``gateway(**env)``: the gateway app on settings from the environment plus ``env``; the
    in-process worker's jobs read the same environment."""
    connection = redis.Redis.from_url(own_redis.url)
    connection.flushdb()
    opened: list[TestClient] = []

    def make(**env: str) -> TestClient:
        values = {
            "ARTICLEFORGE_REDIS_URL": own_redis.url,
            "ARTICLEFORGE_DATA_DIR": str(tmp_path / "data"),
            "ARTICLEFORGE_API_KEYS": KEY,
            "ARTICLEFORGE_RATE_LIMIT_PER_MINUTE": "0",
            **services,
            **env,
        }
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        jobs.settings.cache_clear()
        client = TestClient(create_app(GatewaySettings(_env_file=None)))  # type: ignore[call-arg]
        client.__enter__()
        client.headers["Authorization"] = f"Bearer {KEY}"
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)
    jobs.settings.cache_clear()
    connection.flushdb()


def _finished(client: TestClient, connection: redis.Redis) -> tuple[str, list[dict[str, Any]]]:
    """Submits BODY, runs every job in this process, returns the id and the events stream."""
    accepted = client.post("/v1/articles", json=BODY)
    assert accepted.status_code == 202, accepted.text
    article_id = accepted.json()["id"]
    queues = [Queue(name, connection=connection) for name in (jobs.ARTICLES_QUEUE, "images")]
    InProcessWorker(queues, connection=connection).work(burst=True)
    events = _sse(client.get(f"/v1/articles/{article_id}/events").text)
    assert events[-1]["event"] == "succeeded", events[-1]
    return article_id, [json.loads(e["data"]) for e in events]


def _preview_size(cache_dir: Path) -> int:
    """A preview has the latents' size: the image's side over the VAE's scale factor (8 for
    SD 1.5, 2 for the tiny VAE's two blocks)."""
    vae = json.loads((build_tiny_image(cache_dir) / "vae" / "config.json").read_text())
    return SIZE // 2 ** (len(vae["block_out_channels"]) - 1)


def test_article_events_carry_the_latest_preview_of_each_image_throttled(
    gateway: Any, own_redis: OwnRedis, services: dict[str, str], cache_dir: Path
) -> None:
    # The image service sends a preview on every step of an image ...
    streamed = httpx.post(
        services["ARTICLEFORGE_IMAGE_URL"] + "/v1/images",
        json={
            "prompt": "solar panels",
            "steps": STEPS,
            "width": SIZE,
            "height": SIZE,
            "stream": True,
        },
        timeout=60,
    )
    sent = [json.loads(e["data"]) for e in _sse(streamed.text) if e.get("event") == "progress"]
    assert len(sent) == STEPS and all(e.get("preview_b64") for e in sent)

    # ... and with a throttle longer than the whole image, the gateway keeps only the first and
    # the last of them, each in an event.
    client = gateway(ARTICLEFORGE_PREVIEW_INTERVAL_MS="60000")
    connection = redis.Redis.from_url(own_redis.url)
    article_id, events = _finished(client, connection)
    side = _preview_size(cache_dir)
    for k in range(BODY["images"]["count"]):
        entries = [e["progress"]["images"][k] for e in events if e["progress"]["images"]]
        assert all(entry["index"] == k for entry in entries)
        drawing = [entry for entry in entries if entry["state"] == "drawing"]
        assert drawing and drawing[-1]["step"] == drawing[-1]["steps"]
        shown = {(entry["preview_step"], entry["preview"]) for entry in drawing if entry["preview"]}
        total = drawing[-1]["steps"]
        assert sorted(step for step, _ in shown) == [1, total], shown
        for _, preview in shown:
            assert preview.startswith(DATA_URL)
            picture = Image.open(io.BytesIO(base64.b64decode(preview.removeprefix(DATA_URL))))
            assert picture.format == "PNG" and picture.size == (side, side)
        # Once the image is done, its entry has the PNG's URL and no preview.
        done = [entry for entry in entries if entry["state"] == "done"]
        assert done and all(entry["preview"] is None and entry["url"] for entry in done)

    # The finished article: every image done, no preview in the status nor left in Redis.
    status = client.get(f"/v1/articles/{article_id}").json()
    assert status["status"] == "succeeded"
    images = status["progress"]["images"]
    assert [(i["state"], i["preview"], i["preview_step"]) for i in images] == [
        ("done", None, None),
        ("done", None, None),
    ]
    assert [i["url"] for i in images] == [i["url"] for i in status["article"]["images"]]
    fields = connection.hkeys(f"af:article:{article_id}")
    assert not [f for f in fields if f.startswith(b"image_preview:")]
    assert all(not i["preview"] for i in events[-1]["progress"]["images"])


def test_previews_off_leaves_them_out_but_keeps_the_step_counters(
    gateway: Any, own_redis: OwnRedis
) -> None:
    client = gateway(ARTICLEFORGE_PREVIEW_INTERVAL_MS="0")
    _, events = _finished(client, redis.Redis.from_url(own_redis.url))
    entries = [entry for e in events for entry in e["progress"]["images"]]
    assert any(entry["state"] == "drawing" and entry["step"] >= 1 for entry in entries)
    assert all(entry["preview"] is None and entry["preview_step"] is None for entry in entries)


def test_the_throttle_keeps_the_first_then_one_per_interval_and_the_last() -> None:
    now = 0.0
    throttle = PreviewThrottle(0.5, clock=lambda: now)
    kept: list[tuple[int | str, int]] = []  # (step at which it was kept, step it shows)
    for step in range(1, 19):  # a step every 0.125 s, a preview every third step
        now = step * 0.125
        got = throttle.due(step, f"png{step}" if step % 3 == 0 else None)
        if got is not None:
            kept.append((step, got[0]))
    last = throttle.flush()
    assert last is not None
    kept.append(("end", last[0]))
    # The first at once; then none sooner than 0.5 s after the one before: one held back goes
    # out on the first step past the interval (6 at step 7), a newer one replaces it (12 by 15),
    # and the one held back at the end is the image's last (18).
    assert kept == [(3, 3), (7, 6), (11, 9), (15, 15), ("end", 18)]
