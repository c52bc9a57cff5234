"""Security, as real processes: text, image, gateway and a worker, all logging at DEBUG, on a
password-protected redis-server of the test's own. One hostile article with an image and a
webhook, then every security promise checked through the public API, and finally every
process's log searched for keys and secrets."""

from __future__ import annotations

import base64
import json
import threading
import time
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from markdown_it import MarkdownIt

from tests.processes import free_port, running, serve_all
from tests.redis_server import OwnRedis

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KEY, OTHER_KEY, WRONG_KEY = (
    "sk-sec-e2e-owner-7f3a",
    "sk-sec-e2e-other-91bc",
    "sk-sec-e2e-wrong-55d0",
)
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"e2e-security-webhook-secret-32b!").decode()
REDIS_PASSWORD = "redis-pass-e2e-3c9d"
TOPIC = (
    'Bees <script>alert("x")</script> <img src=x onerror=alert(1)> '
    "[free honey](javascript:alert(document.cookie))"
)


class _Receiver(BaseHTTPRequestHandler):
    received: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802
        self.received.append(self.rfile.read(int(self.headers["content-length"])))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _inert(markdown: str) -> None:
    """What a renderer that passes raw HTML through and follows any link would make of it."""
    permissive = MarkdownIt("commonmark", {"html": True})
    permissive.validateLink = lambda url: True
    rendered = permissive.render(markdown)
    for element in ("<script", "<img src=x", '<img src="x"', 'href="javascript'):
        assert element not in rendered, (element, rendered)


def test_security_through_a_whole_article(
    cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    logs = tmp_path_factory.mktemp("security-logs")
    data_dir = tmp_path_factory.mktemp("security-data")
    own = OwnRedis(free_port(), password=REDIS_PASSWORD)
    ports = {name: free_port() for name in ("text", "image", "gateway")}
    gateway = f"http://127.0.0.1:{ports['gateway']}"
    env = {
        "ARTICLEFORGE_CACHE_DIR": str(cache_dir),
        "ARTICLEFORGE_LOG_LEVEL": "DEBUG",
        "ARTICLEFORGE_REDIS_URL": own.url,
        "ARTICLEFORGE_TEXT_URL": f"http://127.0.0.1:{ports['text']}",
        "ARTICLEFORGE_IMAGE_URL": f"http://127.0.0.1:{ports['image']}",
        "ARTICLEFORGE_PUBLIC_URL": gateway,
        "ARTICLEFORGE_DATA_DIR": str(data_dir),
        "ARTICLEFORGE_API_KEYS": f"{KEY},{OTHER_KEY}",
        "ARTICLEFORGE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "ARTICLEFORGE_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver listens on loopback
        "ARTICLEFORGE_SERVICE_ATTEMPTS": "2",
    }
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{receiver.server_address[1]}/hook?token=cms-hook-token"
    with ExitStack() as processes:
        own.start()
        processes.callback(own.stop)
        serve_all(processes, ("text", "image", "gateway"), ports, env, logs)
        processes.enter_context(
            running(["worker", "--name", "security-0"], env=env, log_path=logs / "worker.log")
        )
        owner = httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {KEY}"})
        other = httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {OTHER_KEY}"})
        anonymous = httpx.Client(base_url=gateway)
        wrong = httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {WRONG_KEY}"})

        body = {
            "topic": TOPIC,
            "sections": 2,
            "target_words": 100,
            "images": {"count": 1, "steps": 2},
            "webhook": {"url": hook_url},
        }
        assert wrong.post("/v1/articles", json=body).status_code == 401
        article_id = owner.post("/v1/articles", json=body).json()["id"]
        assert other.get(f"/v1/articles/{article_id}").status_code == 404
        deadline = time.monotonic() + 120
        while (status := owner.get(f"/v1/articles/{article_id}").json())["status"] != "succeeded":
            assert status["status"] not in ("failed", "cancelled"), status
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        article = status["article"]

        # Markdown from model and user text is inert, like the HTML.
        _inert(article["markdown"])
        for section in article["sections"]:
            _inert(section["markdown"])
        assert "&lt;script&gt;" in article["markdown"]

        # The image URL in the article is signed: a CMS page embeds it without a key.
        url = urlsplit(article["featured_image"]["url"])
        assert "signature=" in url.query
        embedded = anonymous.get(f"{url.path}?{url.query}")
        assert embedded.status_code == 200 and embedded.headers["content-type"] == "image/png"
        for bare in (anonymous.get(url.path), anonymous.get(f"{url.path}?signature=x")):
            assert bare.status_code == 401 and bare.json()["error"]["type"] == (
                "authentication_error"
            )
        assert wrong.get(url.path).status_code == 401
        assert owner.get(url.path).status_code == 200

        # The Redis record expires; the disk copy keeps its owner, and is shown to no one else.
        redis.Redis.from_url(own.url).delete(f"af:article:{article_id}")
        assert owner.get(f"/v1/articles/{article_id}").json()["status"] == "succeeded"
        assert other.get(f"/v1/articles/{article_id}").status_code == 404
        assert anonymous.get(f"/v1/articles/{article_id}").status_code == 401

        deadline = time.monotonic() + 30
        while not _Receiver.received and time.monotonic() < deadline:
            time.sleep(0.1)
        assert json.loads(_Receiver.received[0])["data"]["id"] == article_id
        signing_secret = (data_dir / "url_signing_secret").read_text().strip()
    receiver.shutdown()

    # Every process has stopped and flushed its log: no key or secret in any of them.
    texts = {path.name: path.read_text(errors="replace") for path in logs.glob("*.log")}
    assert set(texts) == {"text.log", "image.log", "gateway.log", "worker.log"}
    assert article_id in texts["gateway.log"] and article_id in texts["worker.log"]
    secrets = {
        "api key": KEY,
        "other api key": OTHER_KEY,
        "rejected key": WRONG_KEY,
        "webhook secret": WEBHOOK_SECRET.removeprefix("whsec_"),
        "url signing secret": signing_secret,
        "redis password": REDIS_PASSWORD,
        "webhook URL token": "cms-hook-token",
        "image URL signature": url.query.split("signature=")[1],
    }
    for name, text in texts.items():
        for what, secret in secrets.items():
            assert secret not in text, f"{what} in {name}"
