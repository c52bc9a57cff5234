"""How a model service starts: load in the background, then serve.

The lifespan starts loading and yields at once, so `/healthz` answers during a long load (a 7B
model, a compiled UNet); `/readyz` and the model routes answer 503 until the engine is up, and
name the error if loading failed. On shutdown the engine's thread is stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

from fastapi import FastAPI, Request

from services.common.errors import NotReady
from services.common.model_source import Kind, load_problem

logger = logging.getLogger(__name__)


class Engine(Protocol):
    def shutdown(self) -> None: ...


def engine_lifespan(
    kind: Kind, model: str, start: Callable[[], Awaitable[Engine]]
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A lifespan that runs ``start()`` (load + warm-up) in the background."""

    async def load(app: FastAPI) -> None:
        try:
            app.state.engine = await start()
            logger.info("%s model %s: ready", kind, model)
        except Exception as exc:
            problem = load_problem(kind, model, exc)
            if problem is None:  # no known cause: the traceback is worth reading
                logger.exception("%s model %s: failed to load", kind, model)
                problem = f"the {kind} model failed to load: {exc}"
            else:
                logger.error("%s", problem)
            app.state.load_error = problem

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = None
        app.state.load_error = None
        loading = asyncio.create_task(load(app))
        yield
        if not loading.done():
            loading.cancel()
        if app.state.engine is not None:
            app.state.engine.shutdown()

    return lifespan


def not_ready_reason(app: FastAPI, kind: str) -> str | None:
    """None once the engine is up; otherwise why not (for /readyz)."""
    if getattr(app.state, "engine", None) is not None:
        return None
    return str(getattr(app.state, "load_error", None) or f"the {kind} model is still loading")


def running_engine(request: Request, kind: str) -> Any:
    """The engine, or a 503 that says it is loading (or why it failed)."""
    reason = not_ready_reason(request.app, kind)
    if reason is not None:
        raise NotReady(reason, headers={"Retry-After": "5"})
    return request.app.state.engine
