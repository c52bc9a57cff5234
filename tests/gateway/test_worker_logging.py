"""What a worker writes to the console (issue 27): the jobs it runs, not RQ's routine maintenance.

RQ logs every maintenance pass at INFO, three lines every 5 s with our interval ("cleaning
registries" for each queue, then for the groups), which buried the `up` console. They are
DEBUG lines now; a job started and a job done stay at INFO, and what a pass finds (an
abandoned job) RQ reports on its own, as a warning of `rq.registry`.
"""

from __future__ import annotations

import time
from pathlib import Path

import redis
from rq import Queue

from tests.processes import running, until

ROUTINE = ("cleaning registries for queue: articles", "cleaning group registries")


def _worker_log(redis_url: str, tmp_path: Path, level: str) -> str:
    """The console of a real `articleforge worker` that ran one job and then idled through a
    few maintenance passes (one a second)."""
    connection = redis.Redis.from_url(redis_url)
    connection.flushdb()
    log = tmp_path / f"worker-{level}.log"
    env = {
        "ARTICLEFORGE_REDIS_URL": redis_url,
        "ARTICLEFORGE_LOG_LEVEL": level,
        "ARTICLEFORGE_WORKER_MAINTENANCE_INTERVAL_SECONDS": "1",
    }
    job = Queue("articles", connection=connection).enqueue("os.getpid")
    pool = f"logging-{level.lower()}"
    name = f"{pool}.1"  # the pool's one worker
    with running(["worker", "--name", pool, "--pool-size", "1"], env=env, log_path=log):
        until("the job to finish", lambda: "Job OK" in log.read_text(), timeout=60)
        time.sleep(3.5)  # three more passes
    text = log.read_text()
    # The job's start and end, at INFO.
    assert f"INFO rq.worker [-] Worker {name}: articles: os.getpid() ({job.id})" in text, text
    assert f"INFO rq.worker [-] Worker {name}: articles: Job OK ({job.id})" in text, text
    return text


def test_routine_maintenance_stays_off_the_info_console(redis_url: str, tmp_path: Path) -> None:
    text = _worker_log(redis_url, tmp_path, "INFO")
    for line in ROUTINE:
        assert line not in text, text


def test_routine_maintenance_is_there_at_debug(redis_url: str, tmp_path: Path) -> None:
    text = _worker_log(redis_url, tmp_path, "DEBUG")
    for line in ROUTINE:
        assert f"DEBUG rq.worker [-] Worker logging-debug.1: {line}" in text, text
