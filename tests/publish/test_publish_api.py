"""The publishing API's contract without a CMS: what is refused before anything is queued
(an article that has not succeeded, a target the gateway has no settings for, a bad status),
the settings' own checks, and the OpenAPI document of the new route and fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from services.gateway.auth import key_scope
from services.gateway.config import GatewaySettings
from tests.publish.conftest import KEY, base_env, client_for, set_env
from tests.redis_server import OwnRedis

BODY: dict[str, Any] = {"topic": "The future of solar power", "images": {"count": 0}}


@pytest.fixture()
def env(
    own_redis: OwnRedis, connection: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    values = {
        **base_env(own_redis, tmp_path / "data"),
        "ARTICLEFORGE_PUBLISH_WORDPRESS_URL": "http://127.0.0.1:9",
        "ARTICLEFORGE_PUBLISH_WORDPRESS_USER": "editor",
        "ARTICLEFORGE_PUBLISH_WORDPRESS_APP_PASSWORD": "abcd efgh ijkl mnop",
    }
    set_env(monkeypatch, values)
    return values


@pytest.mark.parametrize("target", ["ghost", "drupal", ""])
def test_an_article_request_for_an_unconfigured_target_is_a_400_naming_the_field(
    env: dict[str, str], connection: redis.Redis, target: str
) -> None:
    with client_for() as client:
        response = client.post("/v1/articles", json={**BODY, "publish": {"target": target}})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "publish.target" and error["type"] == "invalid_request_error"
    assert "configured on this gateway (wordpress)" in error["message"]
    assert repr(target) in error["message"]
    assert connection.zcard("af:articles") == 0  # nothing was queued


def test_a_bad_post_status_is_a_422_naming_it(env: dict[str, str]) -> None:
    with client_for() as client:
        body = {**BODY, "publish": {"target": "wordpress", "status": "live"}}
        response = client.post("/v1/articles", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "publish.status"


def test_publishing_an_unfinished_article_is_a_409_and_an_unknown_one_a_404(
    env: dict[str, str], connection: redis.Redis
) -> None:
    with client_for() as client:
        created = client.post("/v1/articles", json={**BODY, "publish": {"target": "wordpress"}})
        assert created.status_code == 202, created.text
        article_id = created.json()["id"]
        busy = client.post(f"/v1/articles/{article_id}/publish", json={"target": "wordpress"})
        assert busy.status_code == 409
        assert busy.json()["error"]["param"] == "id"
        assert (
            "is queued; only a succeeded article can be published"
            in busy.json()["error"]["message"]
        )
        missing = client.post(
            "/v1/articles/art_" + "0" * 24 + "/publish", json={"target": "wordpress"}
        )
        assert missing.status_code == 404
        other = client.post(
            f"/v1/articles/{article_id}/publish",
            json={"target": "wordpress"},
            headers={"Authorization": "Bearer sk-nobody"},
        )
        assert other.status_code == 401
    # The request's own publish waits for assemble: no publish job exists yet.
    assert connection.hget(f"af:article:{article_id}", "publish:wordpress") is None
    assert connection.hget(f"af:article:{article_id}", "key").decode().strip('"') == key_scope(KEY)


def test_publishing_to_an_unconfigured_target_is_a_400_naming_it(
    env: dict[str, str], connection: redis.Redis
) -> None:
    with client_for() as client:
        article_id = client.post("/v1/articles", json=BODY).json()["id"]
        for target in ("ghost", "WordPress"):
            response = client.post(f"/v1/articles/{article_id}/publish", json={"target": target})
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["param"] == "target" and repr(target) in error["message"]
            assert "ARTICLEFORGE_PUBLISH_GHOST_URL, _ADMIN_KEY" in error["message"]


def test_settings_refuse_half_a_target_and_a_malformed_ghost_key() -> None:
    with pytest.raises(ValidationError, match="needs all of ARTICLEFORGE_PUBLISH_WORDPRESS_URL"):
        GatewaySettings(_env_file=None, publish_wordpress_url="https://blog.example.com")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="`id:secret` with a hex secret"):
        GatewaySettings(  # type: ignore[call-arg]
            _env_file=None, publish_ghost_url="https://g.example.com", publish_ghost_admin_key="x"
        )
    both = GatewaySettings(  # type: ignore[call-arg]
        _env_file=None,
        publish_wordpress_url="https://blog.example.com",
        publish_wordpress_user="editor",
        publish_wordpress_app_password="abcd efgh",
        publish_ghost_url="https://g.example.com",
        publish_ghost_admin_key="6489f0b5a2c4d1e3f7a8b9c0:" + "ab" * 32,
    )
    assert both.publish_targets() == ["wordpress", "ghost"]
    assert "ab" * 32 in both.publish_secrets() and "abcd efgh" in both.publish_secrets()


def test_the_openapi_document_describes_the_publish_route_and_fields(env: dict[str, str]) -> None:
    with client_for() as client:
        document = client.get("/openapi.json").json()
    route = document["paths"]["/v1/articles/{article_id}/publish"]["post"]
    assert set(route["responses"]) >= {"202", "400", "401", "404", "409", "422"}
    assert "not configured" not in route["responses"]["400"]["description"]
    assert "publishing target configured" in route["responses"]["400"]["description"]
    schemas = document["components"]["schemas"]
    request = schemas["ArticleRequest"]["properties"]["publish"]
    assert "article.published" in request["description"] and request["examples"]
    info = schemas["PublishInfo"]["properties"]
    for name in ("state", "post_id", "url", "media_ids", "error", "revision"):
        assert info[name]["description"], name
    assert "publish" in schemas["ArticleStatus"]["properties"]
