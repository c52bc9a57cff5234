"""Publishing through the real processes: `articleforge serve gateway` and `articleforge worker`
(RQ's scheduler included) against the real WordPress. The site goes down before the publish
and comes back while it is being retried: the retry, queued by the worker's scheduler after
ARTICLEFORGE_PUBLISH_RETRY_INTERVALS, publishes the post; the status says what happened."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.processes import free_port, running
from tests.publish.conftest import KEY, drain, written_article
from tests.publish.wordpress_site import WordPressSite

pytestmark = pytest.mark.e2e


@pytest.fixture()
def env_extra() -> dict[str, str]:
    return {
        "ARTICLEFORGE_PUBLISH_RETRY_INTERVALS": "2,2,2",
        "ARTICLEFORGE_PUBLISH_TIMEOUT_SECONDS": "5",
    }


@pytest.fixture()
def gateway(env: dict[str, str], tmp_path: Path) -> Iterator[httpx.Client]:
    port = free_port()
    with ExitStack() as stack:
        stack.enter_context(
            running(
                ["serve", "gateway", "--port", str(port)],
                env=env,
                ready_url=f"http://127.0.0.1:{port}/readyz",
                log_path=tmp_path / "gateway.log",
            )
        )
        stack.enter_context(running(["worker"], env=env, log_path=tmp_path / "worker.log"))
        yield stack.enter_context(
            httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {KEY}"},
                timeout=10,
            )
        )


def wait_for(
    client: httpx.Client, article_id: str, done: Callable[[dict[str, Any]], bool], seconds: float
) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        state = client.get(f"/v1/articles/{article_id}").json()["publish"].get("wordpress", {})
        if done(state):
            return dict(state)
        assert time.monotonic() < deadline, f"publish state stuck at {state}"
        time.sleep(0.2)


def test_a_publish_retried_by_the_worker_lands_once_the_site_is_back(
    env: dict[str, str],
    connection: redis.Redis,
    site: WordPressSite,
    gateway: httpx.Client,
) -> None:
    article_id = written_article(
        connection,
        {
            "topic": "The future of solar power",
            "sections": 3,
            "images": {"count": 2, "size": "256x256"},
        },
    )
    drain(connection)  # assembled here; the processes do the publishing
    assert gateway.get(f"/v1/articles/{article_id}").json()["status"] == "succeeded"

    site.stop_server()
    try:
        accepted = gateway.post(
            f"/v1/articles/{article_id}/publish", json={"target": "wordpress", "status": "publish"}
        )
        assert accepted.status_code == 202, accepted.text
        waiting = wait_for(
            gateway, article_id, lambda s: s.get("error") is not None and s["attempts"] >= 1, 15
        )
        assert waiting["state"] in ("queued", "publishing"), waiting
        assert waiting["error"]["type"] == "cms_unavailable"
        assert "retries left" in waiting["error"]["message"]
        # Asking again meanwhile queues nothing: the same publish, still under way.
        again = gateway.post(f"/v1/articles/{article_id}/publish", json={"target": "wordpress"})
        assert again.status_code == 202 and again.json()["status"] == "publish"
    finally:
        site.start_server()
    published = wait_for(gateway, article_id, lambda s: s["state"] in ("published", "failed"), 20)
    assert published["state"] == "published", published
    assert 2 <= published["attempts"] <= 4 and published["error"] is None
    with site.api() as api:
        post = api.get(f"/wp/v2/posts/{published['post_id']}", params={"context": "edit"}).json()
        assert post["status"] == "publish" and post["featured_media"] == int(
            published["featured_media"]
        )
        # The marker that finds a post whose creation answer was lost finds this one only.
        found = api.get(
            "/wp/v2/posts",
            params={"search": f"articleforge:{article_id}", "status": "publish,draft"},
        ).json()
    assert post["link"] == published["url"]
    assert article_id in post["content"]["raw"]
    assert [p["id"] for p in found] == [post["id"]]
