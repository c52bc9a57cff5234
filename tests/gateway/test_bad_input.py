"""Bad input to the gateway: NaN and infinities are a 422 naming the field, never stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.gateway.config import GatewaySettings

KEY = "sk-bad-input"


@pytest.fixture()
def client(tmp_path: Path, redis_url: str) -> Iterator[TestClient]:
    connection = redis.Redis.from_url(redis_url)
    connection.flushdb()
    settings = GatewaySettings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        api_keys=KEY,
        rate_limit_per_minute=0,
    )
    with TestClient(create_app(settings)) as c:
        c.headers["Authorization"] = f"Bearer {KEY}"
        yield c
    connection.flushdb()


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(
    ("json_path", "param"),
    [
        ('"text": {{"temperature": {}}}', "text.temperature"),
        ('"text": {{"top_p": {}}}', "text.top_p"),
        ('"images": {{"guidance_scale": {}}}', "images.guidance_scale"),
        ('"metadata": {{"score": {}}}', "metadata"),
    ],
)
def test_nan_and_infinities_are_a_422_naming_the_field(
    client: TestClient, json_path: str, param: str, literal: str
) -> None:
    raw = '{"topic": "Solar power", ' + json_path.format(literal) + "}"
    response = client.post(
        "/v1/articles", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert "finite" in error["message"] or "NaN or Infinity" in error["message"]
    assert client.get("/v1/articles").json()["data"] == []  # nothing was queued


@pytest.mark.parametrize(
    ("tag", "stored"),
    [
        ("es-419", "es-419"),  # Latin American Spanish: a region of three digits
        ("zh-Hant", "zh-Hant"),  # a script subtag
        ("sr-Latn-RS", "sr-Latn-RS"),
        ("EN-us", "en-US"),  # any case in, the canonical one stored
        ("iw", "he"),  # a deprecated subtag, replaced
    ],
)
def test_bcp47_tags_are_accepted_and_stored_canonical(
    client: TestClient, tag: str, stored: str
) -> None:
    reply = client.post("/v1/articles", json={"topic": "Solar power", "language": tag})
    assert reply.status_code == 202, reply.text
    store = client.app.state.store  # type: ignore[attr-defined]
    assert store.get(reply.json()["id"], "request")["language"] == stored


@pytest.mark.parametrize(
    ("tag", "says"),
    [
        ("en_US", "subtags are joined by '-', as in 'en-US'"),
        ("english", "not a valid BCP-47 language tag (RFC 5646)"),
        ("xx-foo", "not a valid BCP-47 language tag (RFC 5646)"),
        ("", "at least 1 character"),
    ],
)
def test_a_bad_language_tag_is_a_422_naming_the_field(
    client: TestClient, tag: str, says: str
) -> None:
    reply = client.post("/v1/articles", json={"topic": "Solar power", "language": tag})
    assert reply.status_code == 422
    error = reply.json()["error"]
    assert error["param"] == "language" and says in error["message"], error
