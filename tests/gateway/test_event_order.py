"""Workers publishing for one article at once: its events never go backwards."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import redis

from services.gateway.store import ArticleStore

STEPS = 150


def test_concurrent_publishes_keep_the_percent_rising(tmp_path: Path, redis_url: str) -> None:
    """Two image jobs of one article step and publish side by side, as two workers do.

    Each job only moves its own image forward, so the record's percent only rises; a snapshot
    read before another job's step and appended after that job's own event would make the
    stream's percent fall.
    """
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    store = ArticleStore(client, tmp_path)
    article = "art_eventorder"
    key = store.key(article)
    client.hset(
        key,
        mapping={"status": "illustrating", "stage": "images", "images_total": "2", "created": "0"},
    )
    start = threading.Barrier(4)

    def image_job(index: int) -> None:
        start.wait()
        for step in range(1, STEPS + 1):
            store.image_step(article, index, step, STEPS)
            store.publish(article)

    def watcher() -> None:  # a third publisher that changes nothing (a throttled publish)
        start.wait()
        for _ in range(STEPS):
            store.publish(article)

    threads = [threading.Thread(target=image_job, args=(k,)) for k in range(2)]
    threads += [threading.Thread(target=watcher) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = store.read_events(article, "0-0", 0)
    while len(events) < 4 * STEPS:  # read_events returns at most 100 per call
        events += store.read_events(article, events[-1][0], 0)
    percents = [json.loads(data)["progress"]["percent"] for _, data in events]
    assert len(percents) == 4 * STEPS
    assert percents == sorted(percents), [
        (a, b) for a, b in zip(percents, percents[1:], strict=False) if b < a
    ][:5]
    assert percents[-1] == 95.0  # both images at their last step: the end of the images stage
    client.flushdb()
