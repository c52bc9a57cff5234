"""Issue 11's promises that only real processes show: a cancel is no failure in any metric and
is announced by webhook; a model that cannot load says so in one sentence (generate, serve,
/readyz, logs); `articleforge generate` and the API share one default for sections."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from tests.e2e.stack import SECRET, Stack, stack
from tests.metrics import sample

pytestmark = pytest.mark.e2e

REDIS_DB = 5


@pytest.fixture(scope="module")
def promises_stack(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack(cache_dir, tmp_path_factory.mktemp("promises"), REDIS_DB, 1) as s:
        yield s


def _wait(what: str, check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_cancel_is_no_failure_in_any_metric_and_sends_article_cancelled(
    promises_stack: Stack,
) -> None:
    s = promises_stack
    body = {
        "topic": "a long article to cancel",
        "sections": 12,
        "target_words": 4000,  # long sections: the stage is still writing when the DELETE lands
        "images": {"count": 1, "steps": 5},
        "webhook": {"url": s.hook_url},
    }
    with s.client() as client:
        article_id = client.post("/v1/articles", json=body).json()["id"]

        def writing_sections() -> bool:
            progress = client.get(f"/v1/articles/{article_id}").json()["progress"]
            return bool(progress["stage"] == "sections" and progress["tokens"] > 0)

        _wait("the sections stage to stream tokens", writing_sections)
        assert s.job(f"{article_id}-sections")["status"] == "started"
        cancelled = client.delete(f"/v1/articles/{article_id}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"

        # The running stage is stopped (its work horse killed) and filed as cancelled, as are the
        # stages that never ran; none is failed.
        _wait(
            "the stopped stage to be filed",
            lambda: s.job(f"{article_id}-sections").get("status") == "canceled",
        )
        for stage in ("image_prompts", "image-0", "assemble"):
            assert s.job(f"{article_id}-{stage}")["status"] == "canceled", stage
        assert s.redis.zcard("rq:failed:articles") == 0
        assert s.redis.zcard("rq:failed:images") == 0

        metrics = client.get("/metrics").text
        for queue in ("articles", "images"):
            assert sample(metrics, "articleforge_gateway_failed_jobs", queue=queue) == 0
        assert sample(metrics, "articleforge_gateway_cancelled_jobs", queue="articles") >= 2
        assert sample(metrics, "articleforge_gateway_cancelled_jobs", queue="images") == 1
        # The services saw a client go away, not an error.
        text_url = s.env["ARTICLEFORGE_TEXT_URL"]
        text_metrics = httpx.get(f"{text_url}/metrics").text
        assert sample(text_metrics, "articleforge_text_requests_total", status="error") == 0

    _wait("the article.cancelled webhook", lambda: s.hooks_for(article_id), timeout=30)
    (hook,) = s.hooks_for(article_id)
    assert hook["type"] == "article.cancelled"
    assert hook["webhook-id"] == f"msg_{article_id}_cancelled"
    assert hook["data"]["status"] == "cancelled" and hook["data"]["id"] == article_id
    headers, raw = next(
        (h, r) for h, r in s.deliveries if json.loads(r)["data"]["id"] == article_id
    )
    assert Webhook(SECRET).verify(raw, headers)["type"] == "article.cancelled"
