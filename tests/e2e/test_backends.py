"""Backends and replicas, as real processes: two text services and two image services (tiny
models) on their own ports, a gateway, and workers on a Redis of this module's own.

- The `openai` backends write a whole article through articleforge's own OpenAI-compatible
  routes (/v1/chat/completions streamed, /v1/images/generations), which are a real
  OpenAI-compatible server: the article succeeds, its tokens and provenance are right, and its
  images say that they have no step progress instead of inventing steps.
- With both services given as two replicas, the sections are spread over both text replicas;
  one text replica is SIGKILLed while it streams a section, and one image replica is stopped
  before the images: the article still succeeds, the broken call moved to the other replica at
  once, and every call after the stop went to the survivors.

The services start once for the module (about a minute on two cores); each test starts its own
worker, since the backends are worker settings.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import free_port, running
from tests.redis_server import OwnRedis

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAMES = ("text_a", "text_b", "image_a", "image_b")


@dataclass
class Services:
    urls: dict[str, str]
    env: dict[str, str]
    gateway: str
    logs: Path
    procs: dict[str, Any]

    @contextmanager
    def worker(self, name: str, **env: str) -> Iterator[Path]:
        """A worker with ``env`` on top of the module's, for one test; yields its log."""
        log = self.logs / f"{name}.log"
        with running(["worker", "--name", name], env={**self.env, **env}, log_path=log):
            yield log

    def metric(self, name: str, metric: str) -> float:
        """The sum of a metric's samples (all label values) on one service."""
        text = httpx.get(f"{self.urls[name]}/metrics", timeout=10).text
        pattern = rf"^{re.escape(metric)}(?:\{{[^}}]*\}})? (\S+)$"
        return sum(float(v) for v in re.findall(pattern, text, re.M))


@pytest.fixture(scope="module")
def services(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    logs = tmp_path_factory.mktemp("backends-logs")
    own = OwnRedis(free_port())
    own.start()
    ports = {name: free_port() for name in (*NAMES, "gateway")}
    env = {
        "ARTICLEFORGE_CACHE_DIR": str(cache_dir),
        "ARTICLEFORGE_REDIS_URL": own.url,
        "ARTICLEFORGE_DATA_DIR": str(tmp_path_factory.mktemp("backends-data")),
        "ARTICLEFORGE_PUBLIC_URL": f"http://127.0.0.1:{ports['gateway']}",
        "ARTICLEFORGE_RATE_LIMIT_PER_MINUTE": "0",
        "ARTICLEFORGE_LOG_LEVEL": "INFO",
        # Four torch services on two cores: one thread each, or they spin against each other.
        "OMP_NUM_THREADS": "1",
        # What /v1/images/generations draws with (it has no `steps`): keep it quick.
        "ARTICLEFORGE_IMAGE_DEFAULT_STEPS": "2",
        "ARTICLEFORGE_SERVICE_ATTEMPTS": "3",
        "ARTICLEFORGE_SERVICE_BACKOFF_SECONDS": "0.2",
    }
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    with ExitStack() as stack:
        stack.callback(own.stop)
        procs: dict[str, Any] = {}
        # Started side by side (each loads torch for tens of seconds), then waited for.
        for name in (*NAMES, "gateway"):
            kind = name.split("_")[0]
            procs[name] = stack.enter_context(
                running(
                    ["serve", kind, "--port", str(ports[name])],
                    env=env,
                    log_path=logs / f"{name}.log",
                )
            )
        for name in (*NAMES, "gateway"):
            _wait_ready(urls[name], procs[name], logs / f"{name}.log")
        yield Services(urls, env, urls["gateway"], logs, procs)


def _wait_ready(url: str, proc: Any, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def _wait(client: httpx.Client, article_id: str, until: Any, timeout: float = 240) -> dict:
    """Polls the article until ``until(status)``; returns that status."""
    deadline = time.monotonic() + timeout
    seen: list[dict] = []
    while time.monotonic() < deadline:
        status = client.get(f"/v1/articles/{article_id}").json()
        seen.append(status)
        if until(status):
            return status
        if status["status"] in ("failed", "cancelled"):
            raise AssertionError(f"article {article_id} ended: {status}")
        time.sleep(0.1)
    raise AssertionError(f"article {article_id} timed out at {seen[-1]}")


def _events(client: httpx.Client, article_id: str) -> list[dict]:
    """The article's progress events, followed over SSE until its final event."""
    found = []
    with client.stream("GET", f"/v1/articles/{article_id}/events", timeout=240) as response:
        event = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "progress":
                found.append(json.loads(line.split(":", 1)[1]))
    return found


def _finished(status: dict) -> bool:
    return bool(status["status"] == "succeeded")


def test_the_openai_backends_write_a_whole_article(services: Services) -> None:
    """Text through /v1/chat/completions (streamed, with usage), images through
    /v1/images/generations; the text URL is given without `/v1`, as an operator might."""
    text_calls = services.metric("text_a", "articleforge_text_requests_total")
    images_before = services.metric("image_a", "articleforge_image_images_total")
    worker = services.worker(
        "openai-worker",
        ARTICLEFORGE_TEXT_BACKEND="openai",
        ARTICLEFORGE_TEXT_URL=services.urls["text_a"],
        ARTICLEFORGE_TEXT_API_KEY="sk-any",  # articleforge's service ignores it; vLLM checks it
        ARTICLEFORGE_IMAGE_BACKEND="openai",
        ARTICLEFORGE_IMAGE_URL=services.urls["image_a"] + "/v1",
    )
    body = {
        "topic": "Rain gardens",
        "sections": 2,
        "target_words": 200,
        "images": {"count": 2, "size": "64x64"},
        "text": {"seed": 7},
    }
    with worker, httpx.Client(base_url=services.gateway, timeout=30) as client:
        article_id = client.post("/v1/articles", json=body).json()["id"]
        events = _events(client, article_id)  # every snapshot, from the first
        final = client.get(f"/v1/articles/{article_id}").json()
        png = client.get(final["article"]["images"][0]["url"])

    assert final["status"] == "succeeded", final
    # While an image is drawn its entry says that no steps will come, rather than faking them.
    drawing = [i for e in events for i in e["progress"]["images"] if i["state"] == "drawing"]
    assert drawing and all(i["step_progress"] is False for i in drawing)
    assert {(i["step"], i["steps"], i["preview"]) for i in drawing} == {(0, None, None)}
    assert all(i["step_progress"] is False for i in final["progress"]["images"])
    article = final["article"]
    assert article["provenance"]["text_model"] == "tiny"  # from the server's /v1/models
    # 1 outline + 2 sections + 2 image prompts, all answered by the chat route.
    assert services.metric("text_a", "articleforge_text_requests_total") - text_calls == 5
    assert final["progress"]["tokens"] > 0  # the usage chunks of the sections, summed
    assert services.metric("image_a", "articleforge_image_images_total") - images_before == 2
    assert [(i["width"], i["height"]) for i in article["images"]] == [(64, 64), (64, 64)]
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_the_openai_clients_map_usage_and_seeds(services: Services) -> None:
    """In-process, against the same servers: a server that sends no usage in its stream still
    gives a token count (the chunks), and the image seed goes through, so it reproduces."""
    from services.gateway.clients import ServiceClient
    from services.gateway.openai_backends import OpenAIImage, OpenAIText

    def client(name: str) -> ServiceClient:
        return ServiceClient(name, services.urls[name] + "/v1", 60, 1, 0)

    body = {"system": "Be brief.", "prompt": "Bees", "max_new_tokens": 24, "seed": 3}
    with_usage = asyncio.run(OpenAIText(client("text_a"), "tiny", True).generate(body))
    deltas: list[str] = []
    counted = asyncio.run(OpenAIText(client("text_a"), None, False).generate(body, deltas.append))
    assert with_usage["usage_reported"] and not counted["usage_reported"]
    assert counted["text"] == with_usage["text"] == "".join(deltas)  # same seed, same text
    # Without usage, the chunks are counted: never more than the tokens (the service holds
    # back a token that ends inside a character), so progress never overstates.
    assert with_usage["usage"]["completion_tokens"] == 24
    assert 0 < counted["usage"]["completion_tokens"] <= 24
    assert (counted["model"], counted["finish_reason"]) == ("tiny", "length")

    image = OpenAIImage(client("image_a"), None, extensions=True)
    draw = {"prompt": "a hive", "width": 64, "height": 64, "steps": 2, "seed": 11}
    first, again = (asyncio.run(image.generate(draw))["images"][0] for _ in range(2))
    other = asyncio.run(image.generate({**draw, "seed": 12}))["images"][0]
    assert first["b64_png"] == again["b64_png"] != other["b64_png"]
    assert (first["seed"], first["width"], first["height"]) == (11, 64, 64)


def test_replicas_survive_one_of_each_stopped_mid_article(services: Services) -> None:
    """Sections spread over both text replicas; text_b is SIGKILLed while it streams, image_b is
    stopped before the images: the article succeeds on the survivors."""
    worker = services.worker(
        "replica-worker",
        ARTICLEFORGE_TEXT_URL=f"{services.urls['text_a']},{services.urls['text_b']}",
        ARTICLEFORGE_IMAGE_URL=f"{services.urls['image_a']},{services.urls['image_b']}",
    )
    body = {
        "topic": "Urban beekeeping",
        "sections": 3,
        "target_words": 1500,  # long sections, so the kill lands while they stream
        "images": {"count": 2, "size": "64x64", "steps": 2},
        "review": "outline",  # holds the article after the outline: the stop point
    }
    with worker as log, httpx.Client(base_url=services.gateway, timeout=30) as client:
        article_id = client.post("/v1/articles", json=body).json()["id"]
        _wait(client, article_id, lambda s: s["status"] == "awaiting_review")
        assert client.post(f"/v1/articles/{article_id}/approve").status_code == 202
        # Fewest in flight: three sections at once put at least one on each replica. Kill
        # text_b the moment it decodes one, so the kill lands mid-stream.
        deadline = time.monotonic() + 60
        while services.metric("text_b", "articleforge_text_running_requests") < 1:
            assert time.monotonic() < deadline, "text_b never got a section"
            time.sleep(0.02)
        services.procs["text_b"].kill()  # SIGKILL mid-stream
        services.procs["text_b"].wait()
        services.procs["image_b"].terminate()  # a clean stop, as a rolling update would
        services.procs["image_b"].wait()
        after_stop = {
            "text_a": services.metric("text_a", "articleforge_text_requests_total"),
            "image_a": services.metric("image_a", "articleforge_image_images_total"),
        }
        final = _wait(client, article_id, _finished)

    fallbacks = final["article"]["provenance"]["fallbacks"]
    assert not [f for f in fallbacks if f.startswith("section")]  # every section was written
    lines = log.read_text(errors="replace")
    # The broken stream moved to the survivor at once, not after a backoff.
    assert f"replica {services.urls['text_b']} failed" in lines
    assert "trying another replica" in lines
    # Everything after the stop went to the survivors: the sections text_b lost (at least one,
    # re-run on text_a), the two image prompts, and both images.
    text_done = services.metric("text_a", "articleforge_text_requests_total") - after_stop["text_a"]
    assert text_done >= 1 + 2
    images = services.metric("image_a", "articleforge_image_images_total") - after_stop["image_a"]
    assert images == 2
    assert len(final["article"]["images"]) == 2
