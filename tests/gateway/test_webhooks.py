"""Webhook delivery through RQ: a failed article is announced, and a failed delivery retried."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
from fastapi.testclient import TestClient
from rq import Queue
from standardwebhooks import Webhook

from services.gateway import jobs
from services.gateway.worker import InProcessWorker


class FlakyReceiver(BaseHTTPRequestHandler):
    """Answers 503 to the first delivery and 204 after that."""

    calls: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["content-length"]))
        self.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(503 if len(self.calls) == 1 else 204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def receiver() -> Iterator[str]:
    FlakyReceiver.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def test_failed_article_is_announced_and_delivery_retried(
    gateway_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    receiver: str,
    redis_db: redis.Redis,
) -> None:
    monkeypatch.setenv("ARTICLEFORGE_WEBHOOK_ALLOW_PRIVATE", "true")
    monkeypatch.setenv("ARTICLEFORGE_WEBHOOK_RETRY_INTERVALS", "0,0")  # retry at once
    jobs.settings.cache_clear()
    from tests.gateway.conftest import KEY, make_client

    with make_client() as client:
        client.headers["Authorization"] = f"Bearer {KEY}"
        article_id = client.post(
            "/v1/articles",
            json={
                "topic": "Solar power",
                "images": {"count": 0},
                "webhook": {"url": receiver},
            },
        ).json()["id"]
        # The text service is down (see gateway_env), so the outline fails the article.
        InProcessWorker(
            [Queue(jobs.ARTICLES_QUEUE, connection=redis_db)], connection=redis_db
        ).work(burst=True)
        status = _status(client, article_id)

    assert status["status"] == "failed"
    assert len(FlakyReceiver.calls) == 2  # 503, then delivered on the retry
    (first_headers, _), (headers, body) = FlakyReceiver.calls
    assert first_headers["webhook-id"] == headers["webhook-id"]  # receivers can de-duplicate
    secret = jobs.settings().resolved_webhook_secret()
    event = Webhook(secret).verify(body, headers)
    assert event["type"] == "article.failed"
    assert event["data"]["id"] == article_id
    assert event["data"]["error"]["stage"] == "outline"
    assert json.loads(body)["data"]["status"] == "failed"


def _status(client: TestClient, article_id: str) -> dict:
    return dict(client.get(f"/v1/articles/{article_id}").json())


def test_the_gateways_default_webhook_url_gets_articles_that_name_none(
    gateway_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    receiver: str,
    redis_db: redis.Redis,
) -> None:
    """ARTICLEFORGE_WEBHOOK_DEFAULT_URL: a request without `webhook` is announced there; a
    request with its own URL is announced at its own, not at the default."""
    monkeypatch.setenv("ARTICLEFORGE_WEBHOOK_ALLOW_PRIVATE", "true")
    monkeypatch.setenv("ARTICLEFORGE_WEBHOOK_RETRY_INTERVALS", "0,0")
    monkeypatch.setenv("ARTICLEFORGE_WEBHOOK_DEFAULT_URL", receiver)
    jobs.settings.cache_clear()
    from tests.gateway.conftest import KEY, make_client

    own = ThreadingHTTPServer(("127.0.0.1", 0), FlakyReceiver)
    threading.Thread(target=own.serve_forever, daemon=True).start()
    own_url = f"http://127.0.0.1:{own.server_address[1]}/own"
    try:
        with make_client() as client:
            client.headers["Authorization"] = f"Bearer {KEY}"
            plain = {"topic": "Solar power", "images": {"count": 0}}
            first = client.post("/v1/articles", json=plain).json()["id"]
            second = client.post(
                "/v1/articles", json={**plain, "webhook": {"url": own_url}}
            ).json()["id"]
            InProcessWorker(
                [Queue(jobs.ARTICLES_QUEUE, connection=redis_db)], connection=redis_db
            ).work(burst=True)
    finally:
        own.shutdown()
    # Both receivers share FlakyReceiver's log: sort the deliveries by the article they name.
    delivered = {json.loads(body)["data"]["id"]: headers for headers, body in FlakyReceiver.calls}
    assert set(delivered) == {first, second}
    paths = {json.loads(b)["data"]["id"]: h.get("host") for h, b in FlakyReceiver.calls}
    assert paths[first] == receiver.split("/")[2] and paths[second] == own_url.split("/")[2]
