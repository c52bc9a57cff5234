"""The image service: ``create_app()`` and its lifespan (load, warm up, start the engine)."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from services.common.http import install_common
from services.common.lifecycle import engine_lifespan, not_ready_reason
from services.image import openai_routes, routes
from services.image.config import ImageSettings
from services.image.engine import ImageEngine
from services.image.loading import load_image_pipeline

DESCRIPTION = """
Draws images with one diffusers text-to-image pipeline (Stable Diffusion 1.5, SDXL or SD-Turbo
in production, `tiny` offline). Concurrent requests with the same size, steps, scheduler and
guidance are drawn together in one pipeline call, each image with its own seed.

* `/v1/images`: the native endpoint: seeds, eight schedulers, negative prompts; SSE step
  progress with latent previews with `stream: true`. Every PNG carries its parameters in a
  `parameters` text chunk (AUTOMATIC1111 infotext), so a seed reproduces an image.
* `/v1/images/generations`: the OpenAI Images API subset (`b64_json` only).

Errors always have the shape `{"error": {"type", "message", "param", "request_id"}}`.
"""


async def start_engine(settings: ImageSettings) -> ImageEngine:
    loaded = await asyncio.to_thread(load_image_pipeline, settings)
    engine = ImageEngine(settings, loaded)
    try:
        await asyncio.wrap_future(engine.start())  # warms up on the engine's own thread
    except BaseException:
        engine.shutdown()
        raise
    return engine


def create_app(settings: ImageSettings | None = None) -> FastAPI:
    settings = settings or ImageSettings()
    app = FastAPI(
        title="articleforge image service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=engine_lifespan("image", settings.image_model, lambda: start_engine(settings)),
    )
    app.state.settings = settings
    install_common(app, is_ready=lambda app: not_ready_reason(app, "image"))
    app.include_router(routes.router)
    app.include_router(openai_routes.router)
    return app
