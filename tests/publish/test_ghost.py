"""Publishing into Ghost, checked against the Admin API's documented format (the live Ghost 6
of test_ghost_live.py shows what Ghost does with it; this shows the exact requests).

The token is decoded and its signature recomputed by hand from the hex secret. The requests
are those the real publish job sends, received by a small local server that answers in the
shapes Ghost documents (`{"posts": [...]}`, `{"images": [{"url", "ref"}]}`, `{"errors": [...]}`)
and records them: the image uploads, the post with `?source=html`, its featured image, alt
text, caption, tags and `custom_excerpt`, and the update that carries `updated_at`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
import threading
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import redis

from services.gateway.publish.ghost import admin_token
from tests.publish.conftest import base_env, client_for, drain, hooks, set_env, written_article
from tests.redis_server import OwnRedis

# A key in Ghost's format: a 24-hex id, a colon, a 64-hex secret (the docs' worked example).
KEY = "6489f0b5a2c4d1e3f7a8b9c0:" + "a1b2c3d4e5f60718293a4b5c6d7e8f90" * 2
KEY_ID, SECRET_HEX = KEY.split(":")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_the_admin_token_is_the_documented_jwt() -> None:
    token = admin_token(KEY, now=1764633600)
    header_part, payload_part, signature_part = token.split(".")
    assert json.loads(unb64url(header_part)) == {"alg": "HS256", "kid": KEY_ID, "typ": "JWT"}
    assert json.loads(unb64url(payload_part)) == {
        "iat": 1764633600,
        "exp": 1764633600 + 300,  # Ghost refuses tokens that live longer than 5 minutes
        "aud": "/admin/",
    }
    # HMAC-SHA256 over "header.payload" with the secret's bytes (hex-decoded, not its text).
    expected = hmac.new(
        bytes.fromhex(SECRET_HEX), f"{header_part}.{payload_part}".encode(), hashlib.sha256
    ).digest()
    assert signature_part == b64url(expected)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            token,
            SECRET_HEX.encode(),
            algorithms=["HS256"],
            audience="/admin/",
            options={"verify_exp": False},
        )
    # The worked example in docs/api.md is this very token.
    assert token in DOCS.read_text()


def test_a_fresh_token_verifies_as_ghost_would() -> None:
    token = admin_token(KEY)
    claims = jwt.decode(token, bytes.fromhex(SECRET_HEX), algorithms=["HS256"], audience="/admin/")
    assert claims["exp"] - claims["iat"] == 300
    assert jwt.get_unverified_header(token)["kid"] == KEY_ID


class FakeGhost(BaseHTTPRequestHandler):
    """Answers as Ghost's Admin API documents it, and records each request."""

    requests: list[dict[str, Any]] = []
    posts: dict[str, dict[str, Any]] = {}
    refuse_posts = False

    def _record(self) -> dict[str, Any]:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        entry = {
            "method": self.command,
            "path": parts.path,
            "query": parse_qs(parts.query),
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "raw": raw,
        }
        self.requests.append(entry)
        return entry

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self, entry: dict[str, Any]) -> bool:
        scheme, _, token = entry["headers"].get("authorization", "").partition(" ")
        try:
            jwt.decode(token, bytes.fromhex(SECRET_HEX), algorithms=["HS256"], audience="/admin/")
        except jwt.PyJWTError:
            return False
        return scheme == "Ghost" and jwt.get_unverified_header(token)["kid"] == KEY_ID

    def _handle(self) -> None:
        entry = self._record()
        if not self._authorized(entry):
            self._reply(
                401, {"errors": [{"message": "Invalid token", "type": "UnauthorizedError"}]}
            )
            return
        path = entry["path"]
        if path == "/ghost/api/admin/images/upload/" and self.command == "POST":
            n = sum(1 for r in self.requests if r["path"] == path)
            url = f"http://ghost.test/content/images/2026/12/upload-{n}.png"
            ref = parse_form(entry)["ref"][1]
            self._reply(201, {"images": [{"url": url, "ref": ref.decode()}]})
            return
        match = re.fullmatch(r"/ghost/api/admin/posts/(?:([0-9a-f]{24})/)?", path)
        if match is None:
            self._reply(
                404, {"errors": [{"message": "Resource not found", "type": "NotFoundError"}]}
            )
            return
        post_id = match[1]
        if self.command == "GET" and post_id in self.posts:
            self._reply(200, {"posts": [self.posts[post_id]]})
            return
        if self.refuse_posts:
            self._reply(
                422,
                {
                    "errors": [
                        {
                            "message": "Validation error, cannot save post.",
                            "context": "Value in [posts.title] exceeds maximum length of "
                            "255 characters.",
                            "type": "ValidationError",
                        }
                    ]
                },
            )
            return
        if self.command in ("POST", "PUT"):
            sent = json.loads(entry["raw"])["posts"][0]
            if self.command == "PUT":
                if sent.get("updated_at") != self.posts[post_id]["updated_at"]:
                    self._reply(
                        409,
                        {
                            "errors": [
                                {
                                    "message": "Saving failed! Someone else is editing this post.",
                                    "type": "UpdateCollisionError",
                                }
                            ]
                        },
                    )
                    return
            else:
                post_id = f"{len(self.posts) + 1:024x}"
            stamp = f"2026-12-02T00:00:{len(self.requests):02d}.000Z"
            self.posts[post_id] = {
                "id": post_id,
                "url": f"http://ghost.test/{sent['slug']}/",
                "updated_at": stamp,
                "tags": [
                    {"id": f"{k:024x}", "name": t["name"]} for k, t in enumerate(sent["tags"])
                ],
            }
            self._reply(201 if self.command == "POST" else 200, {"posts": [self.posts[post_id]]})
            return
        self._reply(404, {"errors": [{"message": "Post not found.", "type": "NotFoundError"}]})

    do_GET = do_POST = do_PUT = _handle  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


def parse_form(entry: dict[str, Any]) -> dict[str, tuple[dict[str, str], bytes]]:
    """multipart/form-data fields: name -> (part headers, bytes)."""
    head = f"content-type: {entry['headers']['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + entry["raw"])
    fields = {}
    for part in message.iter_parts():
        headers = {k.lower(): str(v) for k, v in part.items()}
        fields[part.get_param("name", header="content-disposition")] = (
            headers,
            part.get_payload(decode=True),
        )
    return fields


@pytest.fixture(scope="module")
def ghost_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGhost)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture()
def env(
    ghost_url: str,
    own_redis: OwnRedis,
    connection: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    values = {
        **base_env(own_redis, tmp_path / "data"),
        "ARTICLEFORGE_PUBLISH_GHOST_URL": ghost_url,
        "ARTICLEFORGE_PUBLISH_GHOST_ADMIN_KEY": KEY,
    }
    set_env(monkeypatch, values)
    FakeGhost.requests.clear()
    FakeGhost.posts.clear()
    FakeGhost.refuse_posts = False
    return values


BODY: dict[str, Any] = {
    "topic": "The future of solar power",
    "sections": 3,
    "keywords": ["photovoltaics"],
    "images": {"count": 2, "size": "256x256", "seed": 100},
    "publish": {"target": "ghost", "status": "publish"},
}


def test_the_job_sends_ghost_the_documented_requests_and_updates_the_same_post(
    env: dict[str, str], connection: redis.Redis, hook_url: str
) -> None:
    article_id = written_article(connection, {**BODY, "webhook": {"url": hook_url}})
    drain(connection)
    with client_for() as client:
        status = client.get(f"/v1/articles/{article_id}").json()
    state, article = status["publish"]["ghost"], status["article"]
    assert state["state"] == "published", state
    featured, section = article["images"]

    for request in FakeGhost.requests:
        assert request["headers"]["accept-version"] == "v5.0"
    uploads = [r for r in FakeGhost.requests if r["path"].endswith("/images/upload/")]
    assert len(uploads) == 2
    for request, image in zip(uploads, (featured, section), strict=True):
        form = parse_form(request)
        headers, png = form["file"]
        assert headers["content-type"] == "image/png"
        assert 'filename="the-future-of-solar-power-' in headers["content-disposition"]
        data = Path(env["ARTICLEFORGE_DATA_DIR"], "images", f"{image['id']}.png").read_bytes()
        assert png == data and form["ref"][1].decode() == image["id"]

    [create] = [r for r in FakeGhost.requests if r["method"] == "POST" and "/posts/" in r["path"]]
    assert create["query"] == {"source": ["html"]}
    sent = json.loads(create["raw"])["posts"][0]
    assert sent["title"] == article["title"] and sent["slug"] == article["slug"]
    assert sent["status"] == "published"
    assert sent["custom_excerpt"] == article["excerpt"]
    assert sent["feature_image"] == "http://ghost.test/content/images/2026/12/upload-1.png"
    assert sent["feature_image_alt"] == featured["alt"]
    assert sent["feature_image_caption"] == html.escape(featured["caption"], quote=False)
    assert sent["tags"] == [{"name": t} for t in article["tags"]]
    assert sent["meta_description"] == article["meta_description"]
    body = sent["html"]
    assert "<h1" not in body and "upload-1.png" not in body and "http://testserver" not in body
    assert (
        body.count("<img") == 1
        and 'src="http://ghost.test/content/images/2026/12/upload-2.png"' in body
    )
    assert (
        state["post_id"] == f"{1:024x}" and state["url"] == f"http://ghost.test/{article['slug']}/"
    )
    assert state["media_ids"][featured["id"]].endswith("upload-1.png")

    # Again, as a draft: the post is read for its updated_at and updated; nothing re-uploaded.
    FakeGhost.requests.clear()
    updated_at = FakeGhost.posts[state["post_id"]]["updated_at"]
    with client_for() as client:
        accepted = client.post(
            f"/v1/articles/{article_id}/publish", json={"target": "ghost", "status": "draft"}
        )
        assert accepted.status_code == 202, accepted.text
        drain(connection)
        again = client.get(f"/v1/articles/{article_id}").json()["publish"]["ghost"]
    assert [(r["method"], r["path"]) for r in FakeGhost.requests] == [
        ("GET", f"/ghost/api/admin/posts/{state['post_id']}/"),
        ("PUT", f"/ghost/api/admin/posts/{state['post_id']}/"),
    ]
    update = json.loads(FakeGhost.requests[1]["raw"])["posts"][0]
    assert FakeGhost.requests[1]["query"] == {"source": ["html"]}
    assert update["updated_at"] == updated_at and update["status"] == "draft"
    assert again["state"] == "published" and again["post_id"] == state["post_id"]
    assert len(FakeGhost.posts) == 1
    assert [h["type"] for h in hooks(article_id)] == [
        "article.succeeded",
        "article.published",
        "article.published",
    ]


def test_a_ghost_validation_error_fails_the_publish_with_ghosts_words(
    env: dict[str, str], connection: redis.Redis
) -> None:
    FakeGhost.refuse_posts = True
    article_id = written_article(connection, BODY)
    drain(connection)
    with client_for() as client:
        status = client.get(f"/v1/articles/{article_id}").json()
    state = status["publish"]["ghost"]
    assert status["status"] == "succeeded" and status["article"]["title"]
    assert state["state"] == "failed" and state["attempts"] == 1
    assert state["error"]["status_code"] == 422 and state["error"]["type"] == "cms_rejected"
    assert "ValidationError: Validation error, cannot save post." in state["error"]["message"]
    assert "exceeds maximum length of 255" in state["error"]["message"]
    # The images were uploaded before the refusal; publishing again reuses them.
    uploads = [r for r in FakeGhost.requests if r["path"].endswith("/images/upload/")]
    assert len(uploads) == 2 and not FakeGhost.posts
    FakeGhost.refuse_posts = False
    with client_for() as client:
        retried = client.post(f"/v1/articles/{article_id}/publish", json={"target": "ghost"})
        assert retried.status_code == 202 and retried.json()["state"] == "queued"
        drain(connection)
        done = client.get(f"/v1/articles/{article_id}").json()["publish"]["ghost"]
    assert done["state"] == "published" and done["error"] is None and len(FakeGhost.posts) == 1
    assert len([r for r in FakeGhost.requests if r["path"].endswith("/images/upload/")]) == 2
