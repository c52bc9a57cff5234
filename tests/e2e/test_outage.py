"""Outages, as real processes: the whole stack on a Redis of its own (a redis-server started here
on a free port, so the test can freeze it, kill it and bring it back), and a gateway that is
killed mid-article and started again.

What a CMS would notice: the gateway stays alive (/healthz), answers 503 in the error shape
within a bounded time, keeps serving finished articles from disk to their owner, and recovers by
itself once Redis is back; a gateway restart loses no accepted article.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import free_port, running, serve_all
from tests.redis_server import OwnRedis

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
logger = logging.getLogger(__name__)

KEY, OTHER_KEY = "sk-outage-owner", "sk-outage-other"
SOCKET_TIMEOUT = 2.0  # the default ARTICLEFORGE_REDIS_SOCKET_TIMEOUT_SECONDS
SMALL = {"topic": "Rain gardens", "sections": 1, "target_words": 100, "images": {"count": 0}}


@dataclass
class Stack:
    redis: OwnRedis
    env: dict[str, str]
    logs: Path
    port: int = field(default_factory=free_port)
    _gateway: AbstractContextManager[subprocess.Popen[bytes]] | None = None
    _gateway_proc: subprocess.Popen[bytes] | None = None
    _starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_gateway(self) -> None:
        self._starts += 1
        self._gateway = running(
            ["serve", "gateway", "--port", str(self.port)],
            env=self.env,
            ready_url=f"{self.url}/readyz",
            log_path=self.logs / f"gateway{self._starts}.log",
        )
        self._gateway_proc = self._gateway.__enter__()

    def kill_gateway(self) -> None:
        assert self._gateway is not None and self._gateway_proc is not None
        self._gateway_proc.kill()  # SIGKILL: no shutdown handler runs
        self._gateway_proc.wait()
        self._gateway.__exit__(None, None, None)
        self._gateway = self._gateway_proc = None

    def client(self, key: str = KEY) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )


@pytest.fixture(scope="module")
def stack(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("outage-logs")
    own = OwnRedis(free_port())
    own.start()
    ports = {name: free_port() for name in ("text", "image")}
    env = {
        "ARTICLEFORGE_CACHE_DIR": str(cache_dir),
        "ARTICLEFORGE_REDIS_URL": own.url,
        "ARTICLEFORGE_TEXT_URL": f"http://127.0.0.1:{ports['text']}",
        "ARTICLEFORGE_IMAGE_URL": f"http://127.0.0.1:{ports['image']}",
        "ARTICLEFORGE_DATA_DIR": str(tmp_path_factory.mktemp("outage-data")),
        "ARTICLEFORGE_API_KEYS": f"{KEY},{OTHER_KEY}",
        "ARTICLEFORGE_SERVICE_ATTEMPTS": "2",
        "ARTICLEFORGE_SERVICE_BACKOFF_SECONDS": "0.2",
    }
    result = Stack(redis=own, env=env, logs=logs)
    env["ARTICLEFORGE_PUBLIC_URL"] = result.url
    with ExitStack() as processes:
        processes.callback(own.stop)
        serve_all(processes, ("text", "image"), ports, env, logs)
        processes.enter_context(
            running(["worker", "--name", "outage-0"], env=env, log_path=logs / "worker.log")
        )
        result.start_gateway()
        processes.callback(lambda: result._gateway and result._gateway.__exit__(None, None, None))
        yield result


def _wait(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``check()`` holds."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


def _finish(client: httpx.Client, body: dict[str, Any], timeout: float = 120) -> str:
    article_id: str = client.post("/v1/articles", json=body).json()["id"]
    _wait(
        lambda: client.get(f"/v1/articles/{article_id}").json()["status"] == "succeeded",
        timeout,
        f"article {article_id} succeeded",
    )
    return article_id


def _timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def _timed_call(call: Callable[[], None]) -> tuple[None, float]:
    started = time.monotonic()
    call()
    return None, time.monotonic() - started


def _events_until_end(client: httpx.Client, article_id: str, out: list[tuple[str, str]]) -> None:
    with client.stream("GET", f"/v1/articles/{article_id}/events", timeout=60) as response:
        event = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                out.append((event, line.split(":", 1)[1]))
    out.append(("closed", str(time.monotonic())))


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["type"] == "service_unavailable" and error["request_id"]
    assert response.headers["retry-after"]


def test_a_gateway_restart_mid_article_loses_nothing(stack: Stack) -> None:
    client = stack.client()
    running_id = client.post(
        "/v1/articles", json={**SMALL, "sections": 2, "images": {"count": 1, "steps": 10}}
    ).json()["id"]
    _wait(
        lambda: client.get(f"/v1/articles/{running_id}").json()["status"] != "queued",
        60,
        "the first article started",
    )
    queued_id = client.post("/v1/articles", json=SMALL).json()["id"]
    at_kill = client.get(f"/v1/articles/{running_id}").json()["status"]
    stack.kill_gateway()
    assert at_kill in ("writing", "illustrating", "assembling")  # killed mid-article
    time.sleep(2)  # the workers go on without the gateway
    _, restart_seconds = _timed_call(stack.start_gateway)
    client = stack.client()
    for article_id in (running_id, queued_id):
        status = client.get(f"/v1/articles/{article_id}")
        assert status.status_code == 200 and status.json()["id"] == article_id
    logger.info("gateway restart: ready %.2f s after start; status readable", restart_seconds)
    with client.stream("GET", f"/v1/articles/{running_id}/events", timeout=120) as events:
        lines = [line for line in events.iter_lines() if line.startswith("event:")]
    assert lines[-1] == "event: succeeded"
    done = client.get(f"/v1/articles/{running_id}").json()
    assert len(done["article"]["images"]) == 1 and len(done["article"]["sections"]) == 2
    _wait(
        lambda: client.get(f"/v1/articles/{queued_id}").json()["status"] == "succeeded",
        60,
        "the article queued just before the kill succeeded",
    )


def test_a_frozen_redis_is_a_bounded_503_and_healthz_stays_live(stack: Stack) -> None:
    client, other = stack.client(), stack.client(OTHER_KEY)
    finished = _finish(client, SMALL)
    busy = client.post("/v1/articles", json={**SMALL, "sections": 3, "target_words": 600}).json()
    _wait(
        lambda: client.get(f"/v1/articles/{busy['id']}").json()["status"] == "writing",
        60,
        "an article is being written",
    )
    events: list[tuple[str, str]] = []
    follower = threading.Thread(target=_events_until_end, args=(client, busy["id"], events))
    follower.start()
    _wait(lambda: bool(events), 10, "the first progress event")
    stack.redis.signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        noticed = _wait(
            lambda: client.get("/readyz").status_code == 503, 10, "/readyz reported the freeze"
        )
        # Requests that wait on Redis must not stall the event loop: /healthz answers at once
        # while several of them hang on the frozen server.
        hung: list[float] = []
        waiting = [
            threading.Thread(
                target=lambda: hung.append(_timed(lambda: client.get("/v1/articles"))[1])
            )
            for _ in range(4)
        ]
        for thread in waiting:
            thread.start()
        health = [_timed(lambda: client.get("/healthz"))[1] for _ in range(20)]
        for thread in waiting:
            thread.join()
        created, create_seconds = _timed(lambda: client.post("/v1/articles", json=SMALL))
        _assert_unavailable(created)
        served, disk_seconds = _timed(lambda: client.get(f"/v1/articles/{finished}"))
        assert served.status_code == 200 and served.json()["status"] == "succeeded"
        assert other.get(f"/v1/articles/{finished}").status_code == 503  # not the owner
        ready, ready_seconds = _timed(lambda: client.get("/readyz"))
        _assert_unavailable(ready)
        scraped, metrics_seconds = _timed(lambda: client.get("/metrics"))
        assert scraped.status_code == 200  # the gauges keep their last values
        # An events stream that has started cannot turn into a 503: it ends with an `error`
        # event in the error shape instead of hanging.
        follower.join(timeout=15)
        assert events[-1][0] == "closed" and events[-2][0] == "error", events[-3:]
        assert json.loads(events[-2][1])["error"]["type"] == "service_unavailable"
        stream_seconds = float(events[-1][1]) - frozen_at
    finally:
        stack.redis.signal(signal.SIGCONT)
    recovered = _wait(
        lambda: client.post("/v1/articles", json=SMALL).status_code == 202, 30, "recovery"
    )
    logger.info(
        "frozen Redis: /readyz 503 after %.2f s; /healthz max %.3f s; 503 after %.2f s; "
        "GET list max %.2f s; finished article from disk %.3f s; /readyz %.3f s; "
        "/metrics %.2f s; events stream ended with an error event %.2f s after the freeze; "
        "recovered %.2f s after SIGCONT",
        noticed,
        max(health),
        create_seconds,
        max(hung),
        disk_seconds,
        ready_seconds,
        metrics_seconds,
        stream_seconds,
        recovered,
    )
    assert stream_seconds < SOCKET_TIMEOUT + 2 and metrics_seconds < SOCKET_TIMEOUT + 1.5
    assert max(health) < 0.5
    assert SOCKET_TIMEOUT * 0.8 < create_seconds < SOCKET_TIMEOUT + 1.5
    assert max(hung) < SOCKET_TIMEOUT + 1.5
    assert disk_seconds < 0.5 and ready_seconds < 0.5
    assert recovered < 5
    _finish(client, SMALL, timeout=60)  # the whole system works again
    # The article being written through the freeze is not lost: its stage runs again.
    _wait(
        lambda: client.get(f"/v1/articles/{busy['id']}").json()["status"] == "succeeded",
        90,
        "the article written through the freeze succeeded",
    )


def test_redis_down_serves_disk_copies_and_recovers_when_it_returns(stack: Stack) -> None:
    client, other = stack.client(), stack.client(OTHER_KEY)
    finished = _finish(client, SMALL)
    stack.redis.stop()  # no persistence: it comes back empty, as after losing its data
    try:
        noticed = _wait(lambda: client.get("/readyz").status_code == 503, 10, "/readyz said so")
        created, create_seconds = _timed(lambda: client.post("/v1/articles", json=SMALL))
        _assert_unavailable(created)
        listed, list_seconds = _timed(lambda: client.get("/v1/articles"))
        _assert_unavailable(listed)
        served, disk_seconds = _timed(lambda: client.get(f"/v1/articles/{finished}"))
        assert served.status_code == 200 and served.json()["article"]["id"] == finished
        assert other.get(f"/v1/articles/{finished}").status_code == 503
        with client.stream("GET", f"/v1/articles/{finished}/events") as events:
            assert "event: succeeded" in list(events.iter_lines())
        health = max(_timed(lambda: client.get("/healthz"))[1] for _ in range(10))
    finally:
        stack.redis.start()
    back = time.monotonic()
    _wait(lambda: client.post("/v1/articles", json=SMALL).status_code == 202, 30, "recovery")
    recovered = time.monotonic() - back
    logger.info(
        "Redis down: /readyz 503 after %.2f s; 503 after %.3f s (list %.3f s); "
        "finished article from disk %.3f s; /healthz max %.3f s; "
        "recovered %.2f s after it returned",
        noticed,
        create_seconds,
        list_seconds,
        disk_seconds,
        health,
        recovered,
    )
    assert create_seconds < 1 and list_seconds < 1 and disk_seconds < 0.5 and health < 0.5
    assert recovered < 5
    # Redis came back empty: the disk copy still answers its owner, and only its owner.
    assert client.get(f"/v1/articles/{finished}").status_code == 200
    assert other.get(f"/v1/articles/{finished}").status_code == 404
    _finish(client, SMALL, timeout=90)  # the worker reconnected by itself
