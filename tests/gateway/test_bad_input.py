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
