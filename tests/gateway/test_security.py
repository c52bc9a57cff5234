"""Security and outage behaviour of the gateway on its own (TestClient, the real Redis on DB 4):
owners on the disk copy, signed image URLs, inert Markdown, redacted logs, the disk copy while
Redis is unreachable, and NaN in query parameters."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
from fastapi.testclient import TestClient
from markdown_it import MarkdownIt

from services.common.logging import redact, redact_values, setup_logging
from services.gateway import assemble, jobs, pipeline, signing
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from services.gateway.schemas import ArticleRequest, Provenance
from services.gateway.store import ArticleStore
from services.gateway.views import status_view
from tests.processes import free_port

KEY, OTHER_KEY = "sk-sec-owner", "sk-sec-other"
PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 64
HOSTILE = (
    'Gardening <script>alert("x")</script> <img src=x onerror=alert(1)> '
    "[win a prize](javascript:alert(1)) & more"
)


@pytest.fixture()
def settings(tmp_path: Path, redis_url: str) -> Iterator[GatewaySettings]:
    connection = redis.Redis.from_url(redis_url)
    connection.flushdb()
    jobs.settings.cache_clear()
    yield GatewaySettings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        api_keys=f"{KEY},{OTHER_KEY}",
        public_url="http://cms-facing.example",
    )
    connection.flushdb()


def _client(settings: GatewaySettings, key: str | None = KEY) -> TestClient:
    client = TestClient(create_app(settings))
    if key:
        client.headers["Authorization"] = f"Bearer {key}"
    return client


def _finished_article(settings: GatewaySettings, client: TestClient) -> str:
    """An article created through the API, then assembled and saved the way the worker does."""
    article_id: str = client.post(
        "/v1/articles", json={"topic": HOSTILE, "images": {"count": 0}}
    ).json()["id"]
    store = ArticleStore(redis.Redis.from_url(settings.redis_url), settings.data_dir)
    fields = store.fields(article_id)
    status = status_view(article_id, {**fields, "status": "succeeded", "stage": "done"})
    store.save_article(status)
    store.transition(article_id, "succeeded", stage="done")
    return article_id


# --- owners on the disk copy ---


def test_the_disk_copy_records_its_owner_and_every_read_checks_it(
    settings: GatewaySettings,
) -> None:
    with _client(settings) as owner, _client(settings, OTHER_KEY) as other:
        article_id = _finished_article(settings, owner)
        on_disk = (settings.data_dir / "articles" / f"{article_id}.json").read_text()
        assert KEY not in on_disk  # the owner is the key's scope, never the key
        # The Redis record expires (RESULT_TTL_SECONDS): the disk copy answers, for its owner only.
        redis.Redis.from_url(settings.redis_url).delete(ArticleStore.key(article_id))
        assert owner.get(f"/v1/articles/{article_id}").json()["status"] == "succeeded"
        hidden = other.get(f"/v1/articles/{article_id}")
        assert hidden.status_code == 404 and hidden.json()["error"]["param"] == "id"
        assert other.get(f"/v1/articles/{article_id}/events").status_code == 404
        assert other.delete(f"/v1/articles/{article_id}").status_code == 404


def test_a_disk_copy_without_owner_is_readable_only_with_auth_off(
    settings: GatewaySettings,
) -> None:
    with _client(settings) as client:
        article_id = _finished_article(settings, client)
    path = settings.data_dir / "articles" / f"{article_id}.json"
    path.write_text(path.read_text().replace('"owner"', '"was_owner"'))  # an old copy
    redis.Redis.from_url(settings.redis_url).delete(ArticleStore.key(article_id))
    with _client(settings) as client:
        assert client.get(f"/v1/articles/{article_id}").status_code == 404
    with _client(settings.model_copy(update={"api_keys": ""}), key=None) as open_client:
        assert open_client.get(f"/v1/articles/{article_id}").status_code == 200


# --- signed image URLs ---


def _image(settings: GatewaySettings) -> tuple[str, str]:
    image_id = "img_" + "ab" * 12
    ArticleStore(redis.Redis.from_url(settings.redis_url), settings.data_dir).save_image(
        image_id, PNG
    )
    return image_id, signing.signed_image_url(settings, image_id)


def test_a_signed_image_url_needs_no_key_and_anything_else_does(
    settings: GatewaySettings,
) -> None:
    image_id, url = _image(settings)
    assert url.startswith(f"http://cms-facing.example/v1/images/{image_id}?signature=")
    path = urlsplit(url)
    with _client(settings, key=None) as anonymous, _client(settings) as keyed:
        embedded = anonymous.get(f"{path.path}?{path.query}")
        assert embedded.status_code == 200 and embedded.content == PNG
        assert embedded.headers["cache-control"].startswith("public, max-age=31536000")
        unsigned = anonymous.get(path.path)
        assert unsigned.status_code == 401
        assert unsigned.json()["error"]["type"] == "authentication_error"
        assert unsigned.headers["www-authenticate"] == "Bearer"
        # A signature is bound to its image: it opens no other one.
        other_id = "img_" + "cd" * 12
        ArticleStore(redis.Redis.from_url(settings.redis_url), settings.data_dir).save_image(
            other_id, PNG
        )
        borrowed = anonymous.get(f"/v1/images/{other_id}?{path.query}")
        assert borrowed.status_code == 401 and borrowed.json()["error"]["param"] == "signature"
        forged = anonymous.get(f"{path.path}?signature={'A' * 43}")
        assert forged.status_code == 401
        # Extending a URL's life breaks its signature.
        assert anonymous.get(f"{path.path}?expires=9999999999&{path.query}").status_code == 401
        assert anonymous.get(path.path, headers={"Authorization": "Bearer nope"}).status_code == 401
        by_key = keyed.get(path.path)
        assert by_key.status_code == 200  # a key is enough
        # ... but what a key fetched must not sit in a shared cache for clients without one.
        assert by_key.headers["cache-control"].startswith("private,")


def test_signed_urls_expire_when_a_ttl_is_set(settings: GatewaySettings) -> None:
    ttl = settings.model_copy(update={"image_url_ttl_seconds": 60})
    image_id, _ = _image(ttl)
    stale = urlsplit(signing.signed_image_url(ttl, image_id, now=time.time() - 120))
    fresh = urlsplit(signing.signed_image_url(ttl, image_id))
    assert parse_qs(fresh.query)["expires"][0].isdigit()
    with _client(ttl, key=None) as anonymous:
        served = anonymous.get(f"{fresh.path}?{fresh.query}")
        assert served.status_code == 200
        max_age = int(served.headers["cache-control"].split("max-age=")[1].split(",")[0])
        assert 55 <= max_age <= 60  # no cache may keep it past its expiry
        expired = anonymous.get(f"{stale.path}?{stale.query}")
        assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]


def test_the_signing_secret_is_the_servers_own(settings: GatewaySettings) -> None:
    """Webhook receivers hold the webhook secret; it must not be able to sign image URLs."""
    key = signing.signing_key(settings)
    assert key == signing.signing_key(settings)  # kept in DATA_DIR, stable across restarts
    assert key.decode() not in settings.resolved_webhook_secret()
    assert (settings.data_dir / signing.SECRET_FILE).stat().st_mode & 0o077 == 0
    fixed = settings.model_copy(update={"url_signing_secret": "s3cret-signing-key"})
    assert signing.signing_key(fixed) == b"s3cret-signing-key"


# --- Markdown from model and user text ---


def test_markdown_escapes_html_and_links_from_model_and_user_text() -> None:
    request = ArticleRequest.model_validate({"topic": HOSTILE, "sections": 1})
    outline = pipeline.fallback_outline(request)  # the title is the topic, verbatim
    # The alt text comes from the prompt: here the hostile title, as a model might echo it.
    image = assemble.image_ref(
        "img_1", "http://x/v1/images/img_1?signature=abc", outline.title, 5, 64, 64, "c"
    )
    article = assemble.assemble(
        "art_1",
        request,
        outline,
        [f"Body with {HOSTILE}\n\n<iframe src=//evil></iframe>"],
        [image, image],
        Provenance(
            text_model="tiny", adapter=None, image_model=None, parameters={}, seeds={}, timings={}
        ),
        "2026-12-01T00:00:00Z",
    )
    # A renderer that passes raw HTML through and follows any link, as many CMS plugins do.
    permissive = MarkdownIt("commonmark", {"html": True})
    permissive.validateLink = lambda url: True
    for markdown in (article.markdown, article.sections[0].markdown):
        assert "<script" not in markdown and "<img" not in markdown and "<iframe" not in markdown
        rendered = permissive.render(markdown)
        for element in ("<script", '<img src="x"', "<img src=x", "<iframe", 'href="javascript'):
            assert element not in rendered, element
        assert "&lt;script&gt;" in markdown and "\\[win a prize\\]" in markdown
    assert "![Gardening &lt;script&gt;" in article.markdown  # the alt text is escaped too
    assert "(http://x/v1/images/img_1?signature=abc)" in article.markdown  # our own image stays
    # Rendered, the escaped Markdown reads as the text did, and the HTML is still inert.
    assert '&lt;script&gt;alert("x")&lt;/script&gt;' in article.sections[0].html
    assert "[win a prize](javascript:alert(1)) &amp; more" in article.sections[0].html
    assert "<a " not in article.html and "<iframe" not in article.html


# --- logs ---


def test_log_lines_never_carry_keys_or_secrets() -> None:
    stream = io.StringIO()
    setup_logging("INFO")
    handler = logging.getLogger().handlers[-1]
    handler.setStream(stream)  # type: ignore[attr-defined]
    redact_values(["sk-very-secret-key"])
    log = logging.getLogger("test.redaction")
    log.info("client sent %s", "Authorization: Bearer sk-unlisted-token")
    log.info("key sk-very-secret-key, secret whsec_c2VjcmV0c2VjcmV0")
    log.info("Redis at redis://user:hunter2pass@redis:6379/0 is down")
    log.info("delivered to https://cms.example/hook?id=4&token=tok-abc123#x")
    log.info("image at http://gw/v1/images/img_1?expires=0&signature=c2lnbmVk-sig")
    try:
        raise RuntimeError("failed with sk-very-secret-key")
    except RuntimeError:
        log.exception("boom")
    text = stream.getvalue()
    for secret in (
        "sk-unlisted-token",
        "sk-very-secret-key",
        "c2VjcmV0c2VjcmV0",
        "hunter2pass",
        "tok-abc123",
        "c2lnbmVk-sig",
    ):
        assert secret not in text
    assert "Bearer ***" in text and "redis://user:***@redis:6379/0" in text
    assert "https://cms.example/hook?id=4&token=***#x" in text
    assert redact("an ordinary line, id art_1") == "an ordinary line, id art_1"


# --- Redis unreachable, and bad query parameters ---


def test_redis_down_serves_finished_articles_from_disk_and_503_otherwise(
    settings: GatewaySettings,
) -> None:
    with _client(settings) as client:
        article_id = _finished_article(settings, client)
        running_id = client.post("/v1/articles", json={"topic": "Still running"}).json()["id"]
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with _client(down) as client, _client(down, OTHER_KEY) as other:
        started = time.monotonic()
        served = client.get(f"/v1/articles/{article_id}")
        assert served.status_code == 200 and served.json()["status"] == "succeeded"
        assert other.get(f"/v1/articles/{article_id}").status_code == 503  # no owner, no leak
        for response in (
            client.get(f"/v1/articles/{running_id}"),
            client.post("/v1/articles", json={"topic": "During the outage"}),
            client.get("/v1/articles"),
            client.delete(f"/v1/articles/{running_id}"),
            client.get("/readyz"),
        ):
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["type"] == "service_unavailable" and error["request_id"]
        assert time.monotonic() - started < 5  # refused connections fail at once
        events = client.get(f"/v1/articles/{article_id}/events")
        assert events.status_code == 200 and "event: succeeded" in events.text


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-Infinity"])
def test_nan_or_infinity_in_a_query_parameter_is_422(settings: GatewaySettings, value: str) -> None:
    with _client(settings) as client:
        response = client.get("/v1/articles", params={"cursor": value})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "cursor"
    assert "finite" in response.json()["error"]["message"]
