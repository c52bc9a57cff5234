"""One reliability stack for the crash-recovery and load tests, so the services start once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import Stack, stack

RELIABILITY_REDIS_DB = 2


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
    with stack(cache_dir, path, RELIABILITY_REDIS_DB, 3, env) as s:
        yield s
