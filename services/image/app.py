"""The image service: ``create_app()`` and its lifespan (load, warm up, start the engine)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.common.http import install_common
from services.image import openai_routes, routes
from services.image.config import ImageSettings
from services.image.engine import ImageEngine
from services.image.loading import load_image_pipeline

logger = logging.getLogger(__name__)

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


async def _load(app: FastAPI, settings: ImageSettings) -> None:
    try:
        loaded = await asyncio.to_thread(load_image_pipeline, settings)
        engine = ImageEngine(settings, loaded)
        try:
            await asyncio.wrap_future(engine.start())  # warms up on the engine's own thread
        except BaseException:
            engine.shutdown()
            raise
        app.state.engine = engine
        logger.info("image model %s: ready (%s)", settings.image_model, loaded.device)
    except Exception as exc:
        logger.exception("image model %s: failed to load", settings.image_model)
        app.state.load_error = f"the image model failed to load: {exc}"


def create_app(settings: ImageSettings | None = None) -> FastAPI:
    settings = settings or ImageSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load in the background so /healthz answers during a long (SDXL, compile) start;
        # /readyz and the /v1 routes answer 503 until the engine is up and warmed.
        loading = asyncio.create_task(_load(app, settings))
        yield
        if not loading.done():
            loading.cancel()
        if app.state.engine is not None:
            app.state.engine.shutdown()

    app = FastAPI(
        title="articleforge image service",
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
        return str(app.state.load_error or "the image model is still loading")

    install_common(app, is_ready=is_ready)
    app.include_router(routes.router)
    app.include_router(openai_routes.router)
    return app
