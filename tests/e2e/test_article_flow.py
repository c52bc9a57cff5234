"""The whole system as real processes: text, image, gateway and two workers, on tiny models and
the real Redis. One article with two images and a webhook, followed over SSE to the end."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import nh3
import pytest
from PIL import Image
from standardwebhooks import Webhook

from services.gateway.assemble import xhtml
from tests.processes import free_port, running, serve_all
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.e2e

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
API_KEY = "sk-test-1"


@dataclass
class Stack:
    gateway: str
    env: dict[str, str]
    hooks: list[tuple[dict[str, str], bytes]]
    hook_url: str
    data_dir: Path


class _Receiver(Receiver):
    deliveries: ClassVar[list[tuple[dict[str, str], bytes]]] = []


@pytest.fixture(scope="module")
def stack(
    cache_dir: Path, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("logs")
    data_dir = tmp_path_factory.mktemp("data")
    ports = {name: free_port() for name in ("text", "image", "gateway")}
    env = {
        "ARTICLEFORGE_CACHE_DIR": str(cache_dir),
        "ARTICLEFORGE_REDIS_URL": redis_url,
        "ARTICLEFORGE_TEXT_URL": f"http://127.0.0.1:{ports['text']}",
        "ARTICLEFORGE_IMAGE_URL": f"http://127.0.0.1:{ports['image']}",
        "ARTICLEFORGE_PUBLIC_URL": f"http://127.0.0.1:{ports['gateway']}",
        "ARTICLEFORGE_DATA_DIR": str(data_dir),
        "ARTICLEFORGE_API_KEYS": API_KEY,
        "ARTICLEFORGE_WEBHOOK_SECRET": SECRET,
        "ARTICLEFORGE_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver listens on loopback
        "ARTICLEFORGE_SERVICE_ATTEMPTS": "2",
        "ARTICLEFORGE_SERVICE_BACKOFF_SECONDS": "0.2",
    }
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    with ExitStack() as stack:
        serve_all(stack, ("text", "image", "gateway"), ports, env, logs)
        for n in range(2):
            stack.enter_context(
                running(["worker", "--name", f"e2e-{n}"], env=env, log_path=logs / f"worker{n}.log")
            )
        yield Stack(
            gateway=f"http://127.0.0.1:{ports['gateway']}",
            env=env,
            hooks=_Receiver.deliveries,
            hook_url=f"http://127.0.0.1:{receiver.server_address[1]}/hook",
            data_dir=data_dir,
        )
    receiver.shutdown()


def _follow(client: httpx.Client, article_id: str) -> tuple[list[dict], str, dict]:
    progress, final_event, final = [], "", {}
    with client.stream("GET", f"/v1/articles/{article_id}/events", timeout=300) as response:
        assert response.status_code == 200
        event = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = json.loads(line.split(":", 1)[1])
                if event == "progress":
                    progress.append(data)
                else:
                    final_event, final = event, data
    return progress, final_event, final


def _wait_for_hook(stack: Stack, article_id: str) -> tuple[dict[str, str], bytes]:
    """The webhook is sent by a job queued after `succeeded`; give it a few seconds."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for headers, raw in stack.hooks:
            if json.loads(raw)["data"]["id"] == article_id:
                return headers, raw
        time.sleep(0.1)
    raise AssertionError(f"no webhook for {article_id}")


def test_an_article_with_two_images_end_to_end(stack: Stack) -> None:
    client = httpx.Client(
        base_url=stack.gateway, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
    )
    body = {
        "topic": "The future of solar power",
        "audience": "homeowners",
        "tone": "friendly",
        "target_words": 200,
        "sections": 3,
        "keywords": ["photovoltaics"],
        "images": {"count": 2, "steps": 3, "style": "watercolor"},
        "webhook": {"url": stack.hook_url},
        "metadata": {"cms_post_id": 42},
    }
    accepted = client.post("/v1/articles", json=body, headers={"X-Request-Id": "e2e-req-1"})
    assert accepted.status_code == 202, accepted.text
    article_id = accepted.json()["id"]
    assert accepted.json()["links"]["events"] == f"/v1/articles/{article_id}/events"

    progress, final_event, final = _follow(client, article_id)
    assert final_event == "succeeded", final
    stages = [p["progress"]["stage"] for p in progress]
    for stage in ("outline", "sections", "image_prompts", "images", "assemble"):
        assert stage in stages
    percents = [p["progress"]["percent"] for p in progress]
    assert percents == sorted(percents) and percents[-1] == 100

    status = client.get(f"/v1/articles/{article_id}").json()
    assert status["status"] == "succeeded"
    assert status["metadata"] == {"cms_post_id": 42}
    article = status["article"]
    for name in (
        "id",
        "title",
        "slug",
        "excerpt",
        "meta_description",
        "tags",
        "sections",
        "featured_image",
        "images",
        "markdown",
        "html",
        "word_count",
        "reading_time_minutes",
        "language",
        "provenance",
        "created_at",
    ):
        assert article[name] not in (None, "", []), name
    assert len(article["sections"]) == 3 and len(article["images"]) == 2
    assert article["sections"][0]["image"]["id"] == article["images"][1]["id"]
    assert article["featured_image"]["prompt"].endswith("watercolor")
    assert "photovoltaics" in article["tags"]
    # Sanitized (nothing left for a sanitizer to cut) and serialized as well-formed XML.
    assert xhtml(nh3.clean(article["html"])) == article["html"]
    provenance = article["provenance"]
    assert provenance["text_model"] == "tiny" and provenance["image_model"] == "tiny"
    assert provenance["seeds"]["images"][1] == provenance["seeds"]["images"][0] + 1

    for ref in article["images"]:
        png = httpx.get(ref["url"])
        assert png.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(png.content))
        assert image.format == "PNG" and image.size == (ref["width"], ref["height"])
        assert f"Seed: {ref['seed']}" in image.info["parameters"]

    # The article also lives on disk, so it outlives the Redis record.
    on_disk = json.loads((stack.data_dir / "articles" / f"{article_id}.json").read_text())
    assert on_disk["article"]["title"] == article["title"]

    headers, raw = _wait_for_hook(stack, article_id)
    payload = Webhook(SECRET).verify(raw, headers)  # raises if the signature is wrong
    assert payload["type"] == "article.succeeded"
    expected = base64.b64encode(
        hmac.new(
            base64.b64decode(SECRET.removeprefix("whsec_")),
            f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + raw,
            hashlib.sha256,
        ).digest()
    ).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"


def test_a_finished_article_survives_losing_its_redis_record(stack: Stack) -> None:
    import redis

    client = httpx.Client(
        base_url=stack.gateway, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
    )
    body = {
        "topic": "Composting at home",
        "sections": 1,
        "target_words": 100,
        "images": {"count": 0},
    }
    article_id = client.post("/v1/articles", json=body).json()["id"]
    assert _follow(client, article_id)[1] == "succeeded"
    redis.Redis.from_url(stack.env["ARTICLEFORGE_REDIS_URL"]).delete(f"af:article:{article_id}")
    status = client.get(f"/v1/articles/{article_id}")
    assert status.status_code == 200
    assert status.json()["status"] == "succeeded"
    assert status.json()["article"]["id"] == article_id


def test_cancel_stops_a_running_article(stack: Stack) -> None:
    client = httpx.Client(
        base_url=stack.gateway, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
    )
    body = {
        "topic": "Slow art",
        "sections": 1,
        "target_words": 100,
        "images": {"count": 2, "steps": 150},
        "webhook": {"url": stack.hook_url},
    }
    article_id = client.post("/v1/articles", json=body).json()["id"]
    with client.stream("GET", f"/v1/articles/{article_id}/events", timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data:") and '"stage":"images"' in line.replace(" ", ""):
                break
    cancelled = client.delete(f"/v1/articles/{article_id}")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    progress, final_event, final = _follow(client, article_id)
    assert final_event == "cancelled"
    time.sleep(2)  # give a job that was not stopped the time to (wrongly) finish
    status = client.get(f"/v1/articles/{article_id}").json()
    assert status["status"] == "cancelled" and status["article"] is None
    assert status["progress"]["images_done"] < 2
    assert not (stack.data_dir / "articles" / f"{article_id}.json").exists()
    # Announced once, as cancelled: never as succeeded or failed.
    deadline = time.monotonic() + 30
    while not (types := _hook_types(stack, article_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert types == ["article.cancelled"]


def _hook_types(stack: Stack, article_id: str) -> list[str]:
    hooks = [json.loads(raw) for _, raw in stack.hooks]
    return [h["type"] for h in hooks if h["data"]["id"] == article_id]
