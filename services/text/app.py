"""The text service: ``create_app()`` and its lifespan (load, warm up, start the engine)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.common.http import install_common
from services.text import openai_routes, routes
from services.text.config import TextSettings
from services.text.engine import TextEngine
from services.text.loading import load_text_model

logger = logging.getLogger(__name__)

DESCRIPTION = """
Generates text with a causal LM (Llama-2-7b-chat by default in production, `tiny` offline),
optionally with PEFT adapters (the seed paper's QLoRA adapter). Concurrent requests are decoded
together in batches.

* `/v1/generate`: the native endpoint (SSE with `stream: true`).
* `/v1/chat/completions`, `/v1/completions`, `/v1/models`: OpenAI-compatible, so the OpenAI SDK
  and LangChain's `ChatOpenAI` work with `base_url=http://host:8001/v1`.
* `/v1/perplexity`: per-text perplexity, for held-out evaluation.

Errors always have the shape `{"error": {"type", "message", "param", "request_id"}}`.
"""


async def _load(app: FastAPI, settings: TextSettings) -> None:
    try:
        loaded = await asyncio.to_thread(load_text_model, settings)
        engine = TextEngine(settings, loaded)
        await asyncio.to_thread(engine.warmup)
        engine.start()
        app.state.engine = engine
        logger.info("text model %s: ready (%s)", settings.text_model, loaded.device)
    except Exception as exc:
        logger.exception("text model %s: failed to load", settings.text_model)
        app.state.load_error = f"the text model failed to load: {exc}"


def create_app(settings: TextSettings | None = None) -> FastAPI:
    settings = settings or TextSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load in the background so /healthz answers during a long (7B) load; /readyz and the
        # /v1 routes answer 503 until the engine is up.
        loading = asyncio.create_task(_load(app, settings))
        yield
        if not loading.done():
            loading.cancel()
        if app.state.engine is not None:
            app.state.engine.shutdown()

    app = FastAPI(
        title="articleforge text service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = None
    app.state.load_error = None

    def is_ready(app: FastAPI) -> str | None:
        if app.state.engine is not None:
            return None
        return str(app.state.load_error or "the text model is still loading")

    install_common(app, is_ready=is_ready)
    app.include_router(routes.router)
    app.include_router(openai_routes.router)
    return app
