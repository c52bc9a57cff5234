"""The worker's own recovery parts on the real RQ and Redis: heartbeat TTLs in seconds, and the
supervisor for a job that a dying worker had popped but not yet registered."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.exceptions import AbandonedJobError
from rq.job import Job, JobStatus

from services.gateway import jobs
from services.gateway.config import GatewaySettings
from services.gateway.schemas import ArticleRequest
from services.gateway.store import ArticleStore
from services.gateway.worker import (
    ArticleQueue,
    ArticleWorker,
    article_worker,
    on_horse_killed,
    requeue_lost_jobs,
)


@pytest.fixture()
def connection(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    connection.flushdb()
    yield connection
    connection.flushdb()


def _article(connection: redis.Redis, redis_url: str, tmp_path: Path) -> tuple[str, list[str]]:
    config = GatewaySettings(_env_file=None, redis_url=redis_url, data_dir=tmp_path)  # type: ignore[call-arg]
    store = ArticleStore(connection, tmp_path)
    request = ArticleRequest(topic="Solar power", sections=1, images={"count": 1})
    article_id = "art_" + "ab" * 12
    store.create(article_id, {"request": request.model_dump(mode="json"), "images_total": 1})
    ids = jobs.enqueue_article(store, config, article_id, request, "req-1")
    # What the sections and image prompts stages queue once the image's prompt exists.
    store.put(article_id, **{"image_prompt:0": "a solar panel"})
    jobs.enqueue_image(store, config, article_id, 0)
    jobs.enqueue_assemble(store, config, article_id)
    return article_id, ids


def test_stage_jobs_carry_a_retry_and_the_documented_stage(
    connection: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    article_id, ids = _article(connection, redis_url, tmp_path)
    assert ids[3] == f"{article_id}-image-0"
    for job_id in ids:
        job = Job.fetch(job_id, connection=connection)
        assert job.retries_left == 3 and job.enqueue_at_front_on_retry
    assert Job.fetch(ids[3], connection=connection).meta["stage"] == "images"


def test_a_job_popped_by_a_worker_that_died_is_queued_again_once(
    connection: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    article_id, ids = _article(connection, redis_url, tmp_path)
    queues = [ArticleQueue(name, connection=connection) for name in ("articles", "images")]
    # What a worker does first (BLPOP), and then it dies before registering the job.
    job, _ = ArticleQueue.dequeue_any(queues, None, connection=connection)  # type: ignore[misc]
    assert job.id == f"{article_id}-outline"
    assert Queue("articles", connection=connection).job_ids == []
    assert job.get_status() == JobStatus.QUEUED  # and no registry knows it

    assert requeue_lost_jobs(connection, lost_after=0.3) == []  # first sight: maybe in flight
    time.sleep(0.4)
    assert requeue_lost_jobs(connection, lost_after=0.3) == [job.id]
    assert Queue("articles", connection=connection).job_ids == [job.id]
    time.sleep(0.4)
    assert requeue_lost_jobs(connection, lost_after=0.3) == []  # on its queue: left alone
    assert Queue("articles", connection=connection).job_ids == [job.id]


def test_heartbeats_outlive_a_missed_beat_by_the_grace_not_by_60_s(
    connection: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    _, ids = _article(connection, redis_url, tmp_path)
    config = GatewaySettings(_env_file=None, redis_url=redis_url)  # type: ignore[call-arg]
    worker = article_worker(["articles", "images"], connection, config, name="hb")
    assert isinstance(worker, ArticleWorker)
    job = Job.fetch(ids[0], connection=connection)
    # monitoring interval 5 s + grace 15 s, and never beyond the job's own timeout
    assert worker.get_heartbeat_ttl(job) == 20
    assert worker.get_heartbeat_ttl(job, working_time=config.job_timeout_seconds - 2) == 17
    assert worker.dequeue_timeout == 5  # an idle worker runs maintenance every 5 s
    assert worker.job_monitoring_interval == 5 and worker.maintenance_interval == 5


def test_a_stage_fails_the_article_only_when_no_retry_follows(
    connection: redis.Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARTICLEFORGE_DATA_DIR", str(tmp_path))
    jobs.settings.cache_clear()
    article_id, ids = _article(connection, redis_url, tmp_path)
    store = ArticleStore(connection, tmp_path)
    image = Job.fetch(ids[3], connection=connection)
    lost = AbandonedJobError()

    jobs.on_stage_failure(image, connection, AbandonedJobError, lost, None)  # RQ re-runs it
    on_horse_killed(image, 0, 9, None)
    assert store.status(article_id) == "queued"

    image.retries_left = 0  # the last retry died as well
    on_horse_killed(image, 0, 9, None)
    status = store.fields(article_id)
    assert status["status"] == "failed"
    error = json.loads(status["error"])
    assert error["type"] == "worker_lost" and error["stage"] == "images"
    assert "died 4 times" in error["message"]
    # What was left of the article is cancelled, not run.
    assert Job.fetch(ids[-1], connection=connection).get_status() == JobStatus.CANCELED
    jobs.settings.cache_clear()


def test_an_exception_is_final_even_with_retries_left(
    connection: redis.Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARTICLEFORGE_DATA_DIR", str(tmp_path))
    jobs.settings.cache_clear()
    article_id, ids = _article(connection, redis_url, tmp_path)
    outline = Job.fetch(ids[0], connection=connection)
    jobs.on_stage_failure(outline, connection, ValueError, ValueError("bad"), None)
    assert outline.retries_left == 0  # RQ reads it right after the callback: no re-run
    error = json.loads(ArticleStore(connection, tmp_path).fields(article_id)["error"])
    assert error == {"type": "internal_error", "message": "bad", "stage": "outline"}
    jobs.settings.cache_clear()


def test_a_grace_shorter_than_a_heartbeat_is_refused_at_start_up() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="WORKER_HEARTBEAT_GRACE_SECONDS .* at least"):
        GatewaySettings(
            _env_file=None,  # type: ignore[call-arg]
            worker_heartbeat_grace_seconds=5,
            worker_job_monitoring_interval_seconds=10,
        )
