"""Databases of the shared Redis at 127.0.0.1:6379, leased one at a time to whoever holds them.

RQ and the article store use fixed key names, so tests cannot share a database: each test
module (through the `redis_url` fixture) and each long-lived stack leases a database number of
its own, flushes it before and after, and gives it back. A lease is an exclusive `flock` on a
file per database number, so it holds across pytest-xdist workers and across test runs on the
same machine, and the kernel drops it when the process that held it dies. Database 0 is never
leased: it is the default of `articleforge up` and of a developer's own runs.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

HOST, PORT = "127.0.0.1", 6379
LOCK_DIR = Path(tempfile.gettempdir()) / f"articleforge-test-redis-{PORT}"
# A worker holds one module's database and at most a few stacks' at a time, so a wait means
# another run is using most of the databases; give it time to finish before failing.
WAIT_SECONDS = 600.0


def url_of(number: int) -> str:
    return f"redis://{HOST}:{PORT}/{number}"


def _database_count() -> int:
    try:
        reply = redis.Redis(host=HOST, port=PORT).config_get("databases")
        return int(reply["databases"])
    except (redis.ResponseError, KeyError, ValueError):  # CONFIG may be disabled
        return 16


def _try_lease(numbers: range) -> tuple[int, int] | None:
    """The first free number and the open lock file that holds it, or None."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    for number in numbers:
        fd = os.open(LOCK_DIR / f"db{number}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return number, fd
    return None


@contextmanager
def leased_db() -> Iterator[str]:
    """Leases a database nobody else holds, empty, and yields its URL; flushes it and gives it
    back on exit. Only the holder ever flushes it (FLUSHDB, never FLUSHALL)."""
    numbers = range(1, _database_count())
    deadline = time.monotonic() + WAIT_SECONDS
    while (lease := _try_lease(numbers)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"no free Redis database on {HOST}:{PORT} after {WAIT_SECONDS:.0f} s: other test "
                f"runs hold databases 1-{numbers[-1]} (locks in {LOCK_DIR}); wait for them to end "
                "or start redis-server with more `databases`"
            )
        time.sleep(0.5)
    number, fd = lease
    url = url_of(number)
    connection = redis.Redis.from_url(url)
    try:
        connection.flushdb()
        yield url
    finally:
        try:
            connection.flushdb()
        finally:
            connection.close()
            # LOCK_UN, not only close: a process forked meanwhile (an RQ work horse) shares the
            # open file and would otherwise keep the lease while it lives.
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
