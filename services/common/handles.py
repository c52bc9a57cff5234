"""The caller's side of a request that an engine thread works on.

Both engines (text, image) own their model on one thread and serve asyncio callers. A handle
carries results across: the engine thread pushes updates (text deltas, image steps), then the
result or an error, into the caller's event loop; the caller iterates them, awaits the result,
or cancels, which frees its queue slot at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any, Generic, Protocol, TypeVar

R = TypeVar("R")


class Releases(Protocol):
    def release(self, handle: Any, status: str) -> None: ...


class EngineHandle(Generic[R]):
    def __init__(self, engine: Releases) -> None:
        self.engine = engine
        self.cancelled = threading.Event()
        self.finalized = False  # set under the engine's lock when its slot is released
        self.result: R | None = None
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    # --- called from the engine thread ---

    def push(self, kind: str, payload: Any) -> None:
        """``kind`` is `update`, `done` (payload: the result) or `error` (an exception)."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, (kind, payload))
        except RuntimeError:  # the caller's loop is gone
            self.cancel()

    # --- called from the caller's loop ---

    async def updates(self) -> AsyncIterator[Any]:
        """Yields each update; afterwards ``self.result`` holds the result."""
        while True:
            kind, payload = await self._events.get()
            if kind == "update":
                yield payload
            elif kind == "done":
                self.result = payload
                return
            else:
                raise payload

    async def wait(self) -> R:
        async for _ in self.updates():
            pass
        assert self.result is not None
        return self.result

    def cancel(self) -> None:
        """Frees the request's slot now; the engine drops its work at the next step."""
        if not self.cancelled.is_set():
            self.cancelled.set()
            self.engine.release(self, "cancelled")
