"""Shared fixtures: one tiny-model cache per test session, a Redis database per test module,
free ports, real processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_db import leased_db


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where this session's tiny models are built; exported so child processes share it.

    Under pytest-xdist all workers share one folder (the parent of their own temp folders):
    tiny models are built atomically, so a race costs a second build, never a torn one.
    """
    path = os.environ.get("ARTICLEFORGE_TEST_CACHE_DIR")
    if not path:
        base = tmp_path_factory.getbasetemp()
        path = str(base.parent / "cache" if "PYTEST_XDIST_WORKER" in os.environ else base / "cache")
        Path(path).mkdir(exist_ok=True)
    old = os.environ.get("ARTICLEFORGE_CACHE_DIR")
    os.environ["ARTICLEFORGE_CACHE_DIR"] = path
    yield Path(path)
    if old is None:
        os.environ.pop("ARTICLEFORGE_CACHE_DIR", None)
    else:
        os.environ["ARTICLEFORGE_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_text_path(cache_dir: Path) -> Path:
    from services.common.tiny import build_tiny_text

    return build_tiny_text(cache_dir)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A database of the shared Redis that this module alone uses while it runs (see
    tests/redis_db.py), empty at the start and flushed at the end."""
    with leased_db() as url:
        yield url


# Under `pytest -n 2 --dist loadgroup` a group runs on one worker. Each module is a group, so
# its module-scoped services start once; tests that share a longer-lived stack form one group
# with it, so that it starts once too.
SHARED_STACKS = {"reliability_stack": "e2e-reliability-stack", "ui_stack": "ui-stack"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        names = getattr(item, "fixturenames", ())
        group = next((g for f, g in SHARED_STACKS.items() if f in names), None)
        item.add_marker(pytest.mark.xdist_group(group or item.nodeid.split("::")[0]))
