"""One reliability stack for the crash-recovery and load tests, so the services start once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import Stack, stack
from tests.redis_db import leased_db


@pytest.fixture(scope="session")
def reliability_stack(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        # Two torch services on two cores: one thread each, or their OpenMP threads spin against
        # each other (measured: 40 articles in 70 s instead of 88 s).
        "OMP_NUM_THREADS": "1",
        # Enough service attempts (1 + 2 + 4 + ... s of backoff) to wait out a service restart.
        "ARTICLEFORGE_SERVICE_ATTEMPTS": "8",
    }
    path = tmp_path_factory.mktemp("reliability")
    # Session-scoped, so it outlives any module's database: it leases one of its own.
    with leased_db() as redis_url, stack(cache_dir, path, redis_url, 3, env) as s:
        yield s
