"""Promises of the API that issue 11 found broken, each kept and checked here: the requested
language in every prompt, unknown fields and query parameters refused, XML-valid HTML, alt text
and captions, one default for sections, resumable events, cancel as no failure, and the OpenAPI
document. The ASGI app, the real pipeline code and the real Redis (database 5)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from services.gateway import jobs
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings

REDIS_URL = "redis://127.0.0.1:6379/5"
KEY = "sk-promises"
OTHER_KEY = "sk-promises-other"


@pytest.fixture()
def redis_db() -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(REDIS_URL)
    connection.flushdb()
    yield connection
    connection.flushdb()


@pytest.fixture()
def client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_db: redis.Redis
) -> Iterator[TestClient]:
    env = {
        "ARTICLEFORGE_REDIS_URL": REDIS_URL,
        "ARTICLEFORGE_DATA_DIR": str(tmp_path / "data"),
        "ARTICLEFORGE_API_KEYS": f"{KEY},{OTHER_KEY}",
        "ARTICLEFORGE_TEXT_URL": "http://127.0.0.1:9",
        "ARTICLEFORGE_IMAGE_URL": "http://127.0.0.1:9",
        "ARTICLEFORGE_WEBHOOK_ALLOW_PRIVATE": "true",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    jobs.settings.cache_clear()
    with TestClient(create_app(GatewaySettings(_env_file=None))) as c:  # type: ignore[call-arg]
        c.headers["Authorization"] = f"Bearer {KEY}"
        yield c
    jobs.settings.cache_clear()


# --- unknown fields and query parameters ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "hint"),
    [
        ({"topic": "solar power", "image": {"count": 1}}, "image", "images"),
        ({"topic": "solar power", "images": {"cont": 1}}, "images.cont", "count"),
        ({"topic": "solar power", "text": {"seeed": 1}}, "text.seeed", "seed"),
        (
            {"topic": "solar power", "webhook": {"url": "https://a.example", "secret": "x"}},
            "webhook.secret",
            None,
        ),
    ],
)
def test_an_unknown_field_is_a_422_naming_it(
    client: TestClient, redis_db: redis.Redis, body: dict[str, Any], param: str, hint: str | None
) -> None:
    response = client.post("/v1/articles", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"].startswith(f"{param}: unknown field")
    if hint:
        assert f"did you mean `{hint}`?" in error["message"]
    assert redis_db.zcard("af:articles") == 0  # nothing was queued


def test_every_gateway_request_body_refuses_unknown_fields(client: TestClient) -> None:
    """Every request schema of the gateway's OpenAPI, nested ones included, is closed."""
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    seen: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.split("/")[-1] not in seen:
                seen.add(ref.split("/")[-1])
                walk(schemas[ref.split("/")[-1]])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for operations in spec["paths"].values():
        for operation in operations.values():
            walk(operation.get("requestBody", {}))
    assert "ArticleRequest" in seen
    open_ = [
        name
        for name in sorted(seen)
        if schemas[name].get("type") == "object"
        and "properties" in schemas[name]
        and schemas[name].get("additionalProperties") is not False
    ]
    assert not open_, f"request schemas that accept unknown fields: {open_}"


def test_the_list_filters_by_status_and_refuses_unknown_parameters(client: TestClient) -> None:
    ids = [client.post("/v1/articles", json={"topic": f"topic {k}"}).json()["id"] for k in range(5)]
    for article_id in ids[1:4]:
        assert client.delete(f"/v1/articles/{article_id}").status_code == 200
    # Another key's cancelled article never shows up.
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    theirs = client.post("/v1/articles", json={"topic": "their topic"}, headers=other).json()["id"]
    client.delete(f"/v1/articles/{theirs}", headers=other)

    cancelled = client.get("/v1/articles", params={"status": "cancelled"}).json()
    assert [a["id"] for a in cancelled["data"]] == ids[3:0:-1]
    assert {a["status"] for a in cancelled["data"]} == {"cancelled"}
    queued = client.get("/v1/articles", params={"status": "queued"}).json()
    assert [a["id"] for a in queued["data"]] == [ids[4], ids[0]]

    # Pages of a filtered list are full and continue where the last one ended.
    first = client.get("/v1/articles", params={"status": "cancelled", "limit": 2}).json()
    assert [a["id"] for a in first["data"]] == [ids[3], ids[2]]
    rest = client.get(
        "/v1/articles",
        params={"status": "cancelled", "limit": 2, "cursor": first["next_cursor"]},
    ).json()
    assert [a["id"] for a in rest["data"]] == [ids[1]] and rest["next_cursor"] is None

    bad = client.get("/v1/articles", params={"status": "done"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "status"
    typo = client.get("/v1/articles", params={"stauts": "cancelled"})
    assert typo.status_code == 422
    error = typo.json()["error"]
    assert error["param"] == "stauts"
    assert error["message"] == "stauts: unknown query parameter; did you mean `status`?"
    on_one = client.get(f"/v1/articles/{ids[0]}", params={"verbose": "1"})
    assert on_one.status_code == 422 and on_one.json()["error"]["param"] == "verbose"
