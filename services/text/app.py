"""The text service: ``create_app()`` and its lifespan (load, warm up, start the engine)."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from services.common.http import install_common
from services.common.lifecycle import engine_lifespan, not_ready_reason
from services.text import openai_routes, routes
from services.text.config import TextSettings
from services.text.engine import TextEngine
from services.text.loading import load_text_model

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


async def start_engine(settings: TextSettings) -> TextEngine:
    loaded = await asyncio.to_thread(load_text_model, settings)
    engine = TextEngine(settings, loaded)
    await asyncio.to_thread(engine.warmup)
    engine.start()
    return engine


def create_app(settings: TextSettings | None = None) -> FastAPI:
    settings = settings or TextSettings()
    app = FastAPI(
        title="articleforge text service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=engine_lifespan("text", settings.text_model, lambda: start_engine(settings)),
    )
    app.state.settings = settings
    install_common(app, is_ready=lambda app: not_ready_reason(app, "text"))
    app.include_router(routes.router)
    app.include_router(openai_routes.router)
    return app
