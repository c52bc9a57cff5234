"""The settings base that every service's ``Settings`` class extends.

All configuration is environment variables with the ``ARTICLEFORGE_`` prefix (or a ``.env``
file in the working folder). Nothing outside a ``config.py`` reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "ARTICLEFORGE_"
# 1 MiB: a gateway article request or an image prompt is a few KB of JSON.
DEFAULT_MAX_BODY_BYTES = 1 << 20


class CommonSettings(BaseSettings):
    """Settings every process shares."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", protected_namespaces=()
    )

    # Where the `tiny` models are built and cached (also the default home of other caches).
    cache_dir: Path = Field(default=Path("~/.cache/articleforge"))
    # Root logger level for the process.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Largest request body accepted, in bytes; a bigger one is answered 413 before it is read
    # whole (a declared Content-Length is refused up front, a chunked body as it passes the
    # limit). The text service raises the default for long prompts and perplexity batches.
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)

    def resolved_cache_dir(self) -> Path:
        return self.cache_dir.expanduser()
