"""Shared fixtures: one tiny-model cache per test session, free ports, real processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where this session's tiny models are built; exported so child processes share it."""
    path = Path(os.environ.get("ARTICLEFORGE_TEST_CACHE_DIR") or tmp_path_factory.mktemp("cache"))
    old = os.environ.get("ARTICLEFORGE_CACHE_DIR")
    os.environ["ARTICLEFORGE_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("ARTICLEFORGE_CACHE_DIR", None)
    else:
        os.environ["ARTICLEFORGE_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_text_path(cache_dir: Path) -> Path:
    from services.common.tiny import build_tiny_text

    return build_tiny_text(cache_dir)
