"""Gateway fixtures: settings on a test Redis database, a TestClient, an in-process worker."""

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

KEY = "sk-one"
OTHER_KEY = "sk-two"


def flushed_db(url: str) -> Iterator[redis.Redis]:
    """A Redis database emptied before and after a test (each module leases its own)."""
    connection = redis.Redis.from_url(url)
    connection.flushdb()
    yield connection
    connection.flushdb()


@pytest.fixture()
def redis_db(redis_url: str) -> Iterator[redis.Redis]:
    yield from flushed_db(redis_url)


@pytest.fixture()
def gateway_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, redis_db: redis.Redis
) -> dict[str, str]:
    """Environment for settings read by jobs (workers read settings from the environment)."""
    env = {
        "ARTICLEFORGE_REDIS_URL": redis_url,
        "ARTICLEFORGE_DATA_DIR": str(tmp_path / "data"),
        "ARTICLEFORGE_API_KEYS": f"{KEY},{OTHER_KEY}",
        "ARTICLEFORGE_TEXT_URL": "http://127.0.0.1:9",  # nothing listens on the discard port
        "ARTICLEFORGE_IMAGE_URL": "http://127.0.0.1:9",
        "ARTICLEFORGE_SERVICE_ATTEMPTS": "2",
        "ARTICLEFORGE_SERVICE_BACKOFF_SECONDS": "0.05",
        "ARTICLEFORGE_SERVICE_TIMEOUT_SECONDS": "2",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    jobs.settings.cache_clear()
    yield env
    jobs.settings.cache_clear()


def make_client(**overrides: Any) -> TestClient:
    settings = GatewaySettings(_env_file=None, **overrides)  # type: ignore[call-arg]
    return TestClient(create_app(settings))


@pytest.fixture()
def client(gateway_env: dict[str, str]) -> Iterator[TestClient]:
    with make_client() as c:
        c.headers["Authorization"] = f"Bearer {KEY}"
        yield c
