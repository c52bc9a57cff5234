"""One live stack for the studio's tests: text, image and gateway servers and two workers, all
real processes on tiny models, with a redis-server of the package's own (so nothing collides
with the databases of the shared Redis). Started once for every test under tests/ui."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest

from services.ui.launch import HEALTH_PATH, streamlit_command
from tests.processes import free_port, running, until
from tests.redis_server import OwnRedis

API_KEY = "sk-studio-tests"
# Slow enough on tiny models for a poll to catch an image mid-way: each image runs many steps
# at 256x256, the image service sends a preview every 5 steps, and the gateway keeps one every
# 200 ms. Tiny models are fast, so only the request's own parameters slow them down.
DRAWN = {"count": 2, "size": "64x64", "steps": 40, "seed": 11, "scheduler": "euler"}


@dataclass
class UIStack:
    gateway: str
    text: str
    image: str
    logs: Path

    def env(self) -> dict[str, str]:
        """The studio's settings for this stack."""
        return {
            "ARTICLEFORGE_UI_GATEWAY_URL": self.gateway,
            "ARTICLEFORGE_UI_API_KEY": API_KEY,
            "ARTICLEFORGE_UI_TEXT_URL": self.text,
            "ARTICLEFORGE_UI_IMAGE_URL": self.image,
            "ARTICLEFORGE_UI_POLL_SECONDS": "0.3",
        }

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.gateway, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
        )


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture()
def studio(ui_stack: UIStack, monkeypatch: pytest.MonkeyPatch) -> UIStack:
    """The studio's settings point at the stack (AppTest runs the app in this process)."""
    for name, value in ui_stack.env().items():
        monkeypatch.setenv(name, value)
    return ui_stack


@pytest.fixture(scope="package")
def ui_stack(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIStack]:
    redis_server = OwnRedis(free_port())
    redis_server.start()
    tmp = tmp_path_factory.mktemp("studio")
    logs = tmp / "logs"
    logs.mkdir()
    ports = {name: free_port() for name in ("text", "image", "gateway")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    env = {
        "ARTICLEFORGE_CACHE_DIR": str(cache_dir),
        "ARTICLEFORGE_REDIS_URL": redis_server.url,
        "ARTICLEFORGE_TEXT_URL": urls["text"],
        "ARTICLEFORGE_IMAGE_URL": urls["image"],
        "ARTICLEFORGE_PUBLIC_URL": urls["gateway"],
        "ARTICLEFORGE_DATA_DIR": str(tmp / "data"),
        "ARTICLEFORGE_API_KEYS": API_KEY,
        "ARTICLEFORGE_RATE_LIMIT_PER_MINUTE": "0",
        "ARTICLEFORGE_PREVIEW_INTERVAL_MS": "200",
        # URL sources served by the tests' own http.server on 127.0.0.1 (test_sources.py).
        "ARTICLEFORGE_SOURCES_ALLOW_NETWORKS": "127.0.0.1/32",
        # Three torch processes on two cores: one thread each, or their threads fight.
        "OMP_NUM_THREADS": "1",
    }
    try:
        with ExitStack() as stack:
            # All three at once (each is ready on its own), which halves the start-up.
            for name in ("text", "image", "gateway"):
                stack.enter_context(
                    running(
                        ["serve", name, "--port", str(ports[name])],
                        env=env,
                        log_path=logs / f"{name}.log",
                    )
                )
            for name in ("text", "image", "gateway"):
                until(f"the {name} service to be ready", partial(_ready, urls[name]), timeout=180)
            for name in ("w0", "w1"):
                stack.enter_context(
                    running(["worker", "--name", name], env=env, log_path=logs / f"{name}.log")
                )
            yield UIStack(urls["gateway"], urls["text"], urls["image"], logs)
    finally:
        redis_server.stop()


@pytest.fixture(scope="package")
def studio_url(ui_stack: UIStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    env = {**os.environ, **ui_stack.env(), "ARTICLEFORGE_UI_POLL_SECONDS": "0.5"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            streamlit_command("127.0.0.1", port), env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
                try:
                    if httpx.get(url + HEALTH_PATH, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "streamlit did not start in 60 s"
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def finished_article(stack: UIStack, topic: str, seed: int) -> str:
    """A small illustrated article (one section, one 64x64 image), made through the API and
    waited for, for the studio to open."""
    body = {
        "topic": topic,
        "sections": 1,
        "target_words": 100,
        "images": {"count": 1, "size": "64x64", "steps": 2, "seed": seed},
    }
    with stack.client() as client:
        accepted = client.post("/v1/articles", json=body)
        assert accepted.status_code == 202, accepted.text
        article_id = str(accepted.json()["id"])

        def succeeded() -> bool:
            status = client.get(f"/v1/articles/{article_id}").json()
            assert status["status"] != "failed", status.get("error")
            return bool(status["status"] == "succeeded")

        until("the article to succeed", succeeded, timeout=120)
    return article_id
