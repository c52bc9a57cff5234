"""The compose stack with the CPU override, run as local processes: the same commands, the same
environment (both files merged), with the container world mapped onto this machine.

Compose's service hostnames become 127.0.0.1, the containers' fixed ports become free ports,
volume mount points become temporary folders, and the `redis` service becomes the local Redis
(its own DB). Then: every healthcheck passes (the studio's too), and an article with one image
is written.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.deploy.compose import (
    PREFIX,
    SETTINGS,
    container_port,
    environment,
    healthcheck_argv,
    project,
    urls_in,
)
from tests.processes import free_port, running

pytestmark = pytest.mark.e2e


class Localizer:
    """Rewrites container-world strings (hosts, ports, mount points) into this machine's."""

    def __init__(
        self,
        model: dict[str, Any],
        ports: dict[int, int],
        mounts: dict[str, Path],
        redis_url: str,
    ):
        self.redis_url = redis_url  # the test's own database on this machine's Redis
        self.hosts = "|".join(map(re.escape, [*model["services"], "localhost"]))
        self.ports = ports
        self.mounts = mounts

    def __call__(self, value: str) -> str:
        if value in {str(p) for p in self.ports}:  # a pinned port setting
            return str(self.ports[int(value)])
        if value == "0.0.0.0":  # bind the loopback only: this is a shared machine
            return "127.0.0.1"
        value = re.sub(r"^redis://redis:6379/\d+$", self.redis_url, value)
        value = re.sub(rf"//({self.hosts})(?=[:/])", "//127.0.0.1", value)
        value = re.sub(
            r"(?<=127\.0\.0\.1:)(\d+)\b",
            lambda m: str(self.ports.get(int(m[1]), m[1])),
            value,
        )
        for target, local in self.mounts.items():
            value = re.sub(rf"^{re.escape(target)}(?=/|$)", str(local), value)
        return value

    def env(self, service: dict[str, Any]) -> dict[str, str]:
        return {k: self(v) for k, v in environment(service).items()}

    def argv(self, argv: list[str]) -> list[str]:
        return [sys.executable if a == "python" else self(a) for a in argv]


def _healthy(argv: list[str], env: dict[str, str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(
            argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=30
        )
        if result.returncode == 0:
            return
        assert time.monotonic() < deadline, f"healthcheck {argv} failed: {result.stderr[-2000:]}"
        time.sleep(0.5)


def test_the_cpu_stack_comes_up_healthy_and_writes_an_article(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    model = project(cpu=True)
    services = model["services"]
    # Like the containers: no stray settings from this shell, no .env in the working folder.
    for var in [v for v in os.environ if v.startswith(PREFIX)]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)

    published = ("text", "image", "gateway", "ui")
    ports = {container_port(services[n]["ports"][0]): free_port() for n in published}
    mounts = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            mounts[target] = tmp_path / "volumes" / source.strip("./").replace("/", "_")
            mounts[target].mkdir(parents=True, exist_ok=True)
    local = Localizer(model, ports, mounts, redis_url)
    envs = {name: local.env(services[name]) for name in SETTINGS}
    for name in ("text", "image"):
        # The session's tiny models (compose builds them into the cache volumes at first start).
        envs[name]["ARTICLEFORGE_CACHE_DIR"] = str(cache_dir)

    redis.Redis.from_url(redis_url).flushdb()
    logs = tmp_path / "logs"
    logs.mkdir()
    with ExitStack() as stack:
        for name in ("text", "image", "gateway"):
            service = services[name]
            (ready_url,) = urls_in(local.argv(healthcheck_argv(service["healthcheck"]["test"])))
            stack.enter_context(
                running(
                    local.argv(service["command"])[1:],
                    env=envs[name],
                    ready_url=ready_url,
                    log_path=logs / f"{name}.log",
                )
            )
        stack.enter_context(
            running(
                local.argv(services["worker"]["command"])[1:],
                env=envs["worker"],
                log_path=logs / "worker.log",
            )
        )
        # The studio listens on the container's port by default; here, on the free one.
        ui_port = ports[container_port(services["ui"]["ports"][0])]
        (ui_ready,) = urls_in(local.argv(healthcheck_argv(services["ui"]["healthcheck"]["test"])))
        stack.enter_context(
            running(
                [*local.argv(services["ui"]["command"])[1:], "--port", str(ui_port)],
                env=envs["ui"],
                ready_url=ui_ready,
                log_path=logs / "ui.log",
            )
        )
        assert envs["ui"]["ARTICLEFORGE_UI_GATEWAY_URL"] == f"http://127.0.0.1:{ports[8000]}"

        for name, service in services.items():
            argv = local.argv(healthcheck_argv(service["healthcheck"]["test"]))
            if name == "redis" and shutil.which("redis-cli") is None:
                continue  # the local Redis answers anyway: every service above reached it
            _healthy(argv, envs.get(name, {}))

        gateway = f"http://127.0.0.1:{ports[8000]}"
        client = httpx.Client(base_url=gateway, timeout=30)
        body = {
            "topic": "Running articleforge with docker compose",
            "sections": 1,
            "target_words": 100,
            "images": {"count": 1, "steps": 2},
        }
        accepted = client.post("/v1/articles", json=body)
        assert accepted.status_code == 202, accepted.text
        article_id = accepted.json()["id"]
        deadline = time.monotonic() + 180
        while True:
            status = client.get(f"/v1/articles/{article_id}").json()
            if status["status"] in ("succeeded", "failed", "cancelled"):
                break
            assert time.monotonic() < deadline, f"article still {status['status']}"
            time.sleep(0.5)
        assert status["status"] == "succeeded", status.get("error")

        article = status["article"]
        assert article["provenance"]["text_model"] == "tiny"
        (image,) = article["images"]
        # The worker wrote the PNG into the shared data volume; the gateway serves it from there.
        assert image["url"].startswith(envs["gateway"]["ARTICLEFORGE_PUBLIC_URL"])
        png = httpx.get(image["url"], timeout=30)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert any((mounts["/data"] / "images").glob("*.png"))
    redis.Redis.from_url(redis_url).flushdb()
