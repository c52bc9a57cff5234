"""A Redis that fails half-way through POST /v1/articles, on a redis-server of the test's own:
the gateway connects as an ACL user that may do everything except push onto a list, so the
article record is written and then RQ's enqueue is refused, a real Redis error at the worst
moment. Nothing may stay half-made: no record stuck `queued`, no Idempotency-Key that replays
an article that was never queued. A 429 must not keep the key either."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from services.gateway.store import ArticleStore
from tests.processes import free_port
from tests.redis_server import OwnRedis

KEY = "sk-half-made"
BODY = {"topic": "Half-made articles", "images": {"count": 0}}


@pytest.fixture()
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis(free_port())
    server.start()
    admin = redis.Redis.from_url(server.url)
    admin.execute_command("ACL", "SETUSER", "gateway", "on", ">gw-pass", "~*", "&*", "+@all")
    yield server
    server.stop()


def _client(server: OwnRedis, tmp_path: Path, **overrides: object) -> TestClient:
    settings = GatewaySettings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=f"redis://gateway:gw-pass@127.0.0.1:{server.port}/0",
        data_dir=tmp_path / "data",
        api_keys=KEY,
        **overrides,
    )
    client = TestClient(create_app(settings))
    client.headers["Authorization"] = f"Bearer {KEY}"
    return client


def test_a_redis_error_mid_create_leaves_nothing_half_made(
    own_redis: OwnRedis, tmp_path: Path
) -> None:
    admin = redis.Redis.from_url(own_redis.url)
    admin.execute_command("ACL", "SETUSER", "gateway", "-rpush", "-lpush")
    with _client(own_redis, tmp_path) as client:
        refused = client.post("/v1/articles", json=BODY, headers={"Idempotency-Key": "post-1"})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["type"] == "service_unavailable"
        # The record was written before the enqueue failed: it is failed, not stuck `queued`.
        (article_id,) = [m.decode() for m in admin.zrange(ArticleStore.INDEX, 0, -1)]
        listed = client.get("/v1/articles").json()["data"]
        assert [(a["id"], a["status"]) for a in listed] == [(article_id, "failed")]
        assert "could not be queued" in listed[0]["error"]["message"]
        assert admin.scard(ArticleStore.ACTIVE) == 0  # it holds no place in the queue bound

        admin.execute_command("ACL", "SETUSER", "gateway", "+rpush", "+lpush")
        retried = client.post("/v1/articles", json=BODY, headers={"Idempotency-Key": "post-1"})
        assert retried.status_code == 202 and "idempotent-replayed" not in retried.headers
        assert retried.json()["id"] != article_id
        assert client.get(f"/v1/articles/{retried.json()['id']}").json()["status"] == "queued"


def test_a_429_does_not_keep_the_idempotency_key(own_redis: OwnRedis, tmp_path: Path) -> None:
    with _client(own_redis, tmp_path, max_active_articles=1) as client:
        first = client.post("/v1/articles", json=BODY)
        full = client.post("/v1/articles", json=BODY, headers={"Idempotency-Key": "post-2"})
        assert full.status_code == 429
        client.delete(f"/v1/articles/{first.json()['id']}")
        again = client.post("/v1/articles", json=BODY, headers={"Idempotency-Key": "post-2"})
        assert again.status_code == 202 and "idempotent-replayed" not in again.headers
        assert client.get(f"/v1/articles/{again.json()['id']}").status_code == 200
