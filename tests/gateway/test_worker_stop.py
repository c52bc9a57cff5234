"""A worker stops in about a second, however busy the machine (``worker.PromptStop``).

RQ 3.0's command thread blocks up to 60 s per read, and redis-py 8 joins it on stop; when the
thread re-enters its read before the stop flag is set, a worker's end hangs until that read
times out. A busy machine makes that likely: three threads spinning in this process give the
race its chance at every stop. RQ's own ``SimpleWorker`` hangs within a few bursts here (one
measured: 60 s on its second); ours never waits more than a read of ``COMMAND_POLL_SECONDS``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis
from rq import Queue

from services.gateway.worker import (
    COMMAND_POLL_SECONDS,
    ArticleQueue,
    ArticleWorker,
    InProcessWorker,
)


@pytest.fixture
def busy() -> Iterator[None]:
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(10_000))

    threads = [threading.Thread(target=spin, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    yield
    stop.set()
    for thread in threads:
        thread.join()


@pytest.mark.parametrize("worker_class", [InProcessWorker, ArticleWorker])
def test_a_burst_worker_on_a_busy_machine_ends_within_seconds(
    worker_class: type, redis_db: redis.Redis, busy: None
) -> None:
    queue_class = ArticleQueue if worker_class is ArticleWorker else Queue
    queue = queue_class("stop-test", connection=redis_db)
    longest = 0.0
    for _ in range(8):
        started = time.monotonic()
        worker_class([queue], connection=redis_db).work(burst=True)
        longest = max(longest, time.monotonic() - started)
    # each burst: register, one empty pop, stop the command thread (one short read at most)
    assert longest < 10 * COMMAND_POLL_SECONDS, longest
