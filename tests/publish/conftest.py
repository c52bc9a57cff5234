"""Publishing fixtures: a Redis of the module's own, a webhook receiver, the gateway app and an
in-process RQ worker, and articles made up to their images through the store.

An article here is written the way the pipeline's jobs write it (outline, section bodies, PNGs
and image records through ``ArticleStore`` and ``jobs.keep_image``); the real ``assemble_job``
then runs on the worker, and after it the publish job, exactly as in production. Only the model
calls are skipped: publishing starts from the finished article and never calls a model.
"""

from __future__ import annotations

import base64
import io
import json
import random
import secrets
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image
from rq import Queue
from standardwebhooks import Webhook

from services.gateway import jobs
from services.gateway.app import create_app
from services.gateway.auth import key_scope
from services.gateway.config import GatewaySettings
from services.gateway.schemas import ArticleRequest
from services.gateway.worker import InProcessWorker
from tests.processes import free_port
from tests.publish.ghost_site import GhostSite, required
from tests.publish.ghost_site import missing as ghost_missing
from tests.publish.wordpress_site import WordPressSite, missing
from tests.redis_server import OwnRedis
from tests.webhook_receiver import Receiver as WebhookReceiver

KEY = "sk-publisher"
SECRET = "whsec_cHVibGlzaGluZy10ZXN0cy1zZWNyZXQtMDEyMzQ1Njc4OQ=="
BODIES = [
    "Solar panels turn sunlight into electricity. Prices fell by ninety percent in a decade.",
    "A rooftop array pays for itself in about eight years. Net metering shortens that.",
    "Batteries store the midday surplus for the evening. They are getting cheaper too.",
]


class Receiver(WebhookReceiver):
    deliveries: ClassVar[list[tuple[dict[str, str], bytes]]] = []


@pytest.fixture(scope="session")
def site() -> Iterator[WordPressSite]:
    """One real WordPress for the session (tests compare counts before and after, so they
    share it); skipped, saying why, where the packages are missing."""
    reason = missing()
    if reason:
        pytest.skip(f"no real WordPress here: {reason}")
    wordpress = WordPressSite(webhook_secret=SECRET).start()
    yield wordpress
    wordpress.stop()


@pytest.fixture(scope="module")
def own_redis() -> Iterator[OwnRedis]:
    with OwnRedis(free_port()) as server:
        yield server


@pytest.fixture(scope="module")
def hook_url() -> Iterator[str]:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    receiver.shutdown()


@pytest.fixture()
def connection(own_redis: OwnRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis.url)
    client.flushdb()
    yield client
    client.flushdb()


def base_env(own_redis: OwnRedis, data_dir: Path) -> dict[str, str]:
    return {
        "ARTICLEFORGE_REDIS_URL": own_redis.url,
        "ARTICLEFORGE_DATA_DIR": str(data_dir),
        "ARTICLEFORGE_API_KEYS": KEY,
        "ARTICLEFORGE_PUBLIC_URL": "http://testserver",
        "ARTICLEFORGE_WEBHOOK_SECRET": SECRET,
        "ARTICLEFORGE_WEBHOOK_ALLOW_PRIVATE": "true",
        "ARTICLEFORGE_WEBHOOK_RETRY_INTERVALS": "0",
        "ARTICLEFORGE_PUBLISH_RETRY_INTERVALS": "0,0",
        "ARTICLEFORGE_PUBLISH_TIMEOUT_SECONDS": "20",
    }


@pytest.fixture()
def env_extra() -> dict[str, str]:
    """Settings that a module adds to ``env``'s (it overrides this fixture)."""
    return {}


@pytest.fixture()
def env(
    site: WordPressSite,
    own_redis: OwnRedis,
    connection: redis.Redis,
    env_extra: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """The settings of a gateway and workers that publish into ``site``, with ``env_extra``,
    set for this test."""
    values = {
        **base_env(own_redis, tmp_path / "data"),
        "ARTICLEFORGE_PUBLISH_WORDPRESS_URL": site.url,
        "ARTICLEFORGE_PUBLISH_WORDPRESS_USER": site.user,
        "ARTICLEFORGE_PUBLISH_WORDPRESS_APP_PASSWORD": site.app_password,
        **env_extra,
    }
    set_env(monkeypatch, values)
    return values


def set_env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    """Workers read settings from the environment; the cached settings are dropped."""
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    Receiver.deliveries.clear()
    jobs.settings.cache_clear()


def client_for() -> TestClient:
    client = TestClient(create_app(GatewaySettings(_env_file=None)))  # type: ignore[call-arg]
    client.headers["Authorization"] = f"Bearer {KEY}"
    return client


def drain(connection: redis.Redis) -> None:
    """Runs every queued job (assemble, publish and its retries, webhooks) in this process."""
    queues = [Queue(name, connection=connection) for name in (jobs.ARTICLES_QUEUE, "images")]
    InProcessWorker(queues, connection=connection).work(burst=True)


def noise_png(seed: int, size: int = 256) -> bytes:
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def written_article(connection: redis.Redis, body: dict[str, Any]) -> str:
    """An article whose jobs wrote everything up to its images; queues its assemble job."""
    config = jobs.settings()
    store = jobs.store_for(config)
    request = ArticleRequest.model_validate(body)
    article_id = "art_" + secrets.token_hex(12)
    store.create(
        article_id,
        {
            "request": request.model_dump(mode="json"),
            "request_id": "req-publish-test",
            "key": key_scope(KEY),
            "text_seed": 7,
            "image_seed": 100,
            "images_total": request.images.count,
            "expected_tokens": 100,
        },
    )
    headings = ["Why solar now", "What it costs", "Storing the sun"][: request.sections]
    title = "The Future of Solar Power"
    store.put(
        article_id,
        outline={"title": title, "headings": headings, "fallback": False},
        sections=BODIES[: request.sections],
        text_model={"id": "tiny", "root": "tiny"},
    )
    prompts = ["a rooftop covered in solar panels at sunrise", "an electricity meter running back"]
    for k in range(request.images.count):
        png = noise_png(k)
        reply = {
            "images": [
                {
                    "b64_png": base64.b64encode(png).decode(),
                    "seed": 100 + k,
                    "width": 256,
                    "height": 256,
                }
            ],
            "model": "tiny",
        }
        image_id = jobs.claim_image_id(store, article_id, f"image_id:{k}")
        record = jobs.keep_image(
            config, store, image_id, reply, prompts[k], headings[0], request, style=None
        )
        store.image_done(article_id, k, record)
    store.put(article_id, jobs=[f"{article_id}-assemble"])
    Queue(jobs.ARTICLES_QUEUE, connection=connection).enqueue(
        jobs.assemble_job, article_id, **jobs.stage_options(config, article_id, "r", "assemble")
    )
    return article_id


def hooks(article_id: str) -> list[dict[str, Any]]:
    """Webhook deliveries for one article, each verified against the secret."""
    found = []
    for headers, raw in list(Receiver.deliveries):
        event = Webhook(SECRET).verify(raw, headers)
        if event["data"]["id"] == article_id:
            found.append({"webhook-id": headers["webhook-id"], **event})
    return found


def stored(connection: redis.Redis, article_id: str, name: str) -> Any:
    raw = connection.hget(f"af:article:{article_id}", name)
    return None if raw is None else json.loads(raw)


@pytest.fixture(scope="session")
def ghost() -> Iterator[GhostSite]:
    """One real Ghost 6 for the session (tests/publish/ghost_site.py), set up with an owner
    and an integration; skipped, saying why, where it is not installed, unless
    ARTICLEFORGE_GHOST_REQUIRED is set (CI): there a missing Ghost fails."""
    reason = ghost_missing()
    if reason:
        if required():
            pytest.fail(f"ARTICLEFORGE_GHOST_REQUIRED is set, but {reason}")
        pytest.skip(f"no real Ghost here: {reason}")
    site = GhostSite()
    try:
        site.start()
    except BaseException:
        site.stop()
        raise
    yield site
    site.stop()
