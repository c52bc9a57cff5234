"""In-process backends for ``articleforge generate``: the engines, no servers, no Redis.

They speak the same dict shapes as the HTTP clients, so the pipeline stages run unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.gateway.pipeline import OnStep
from services.image.engine import ImageEngine
from services.image.routes import images_response
from services.image.schemas import ImagesRequest
from services.text.engine import TextEngine
from services.text.schemas import GenerateRequest


class LocalText:
    def __init__(self, engine: TextEngine) -> None:
        self.engine = engine

    async def generate(
        self,
        body: dict[str, Any],
        on_delta: Callable[[str], None] | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        request = GenerateRequest.model_validate(body)
        prepared = self.engine.prepare(
            request.to_prompt(), request.to_sampling_params(), request.model, "local"
        )
        handle = self.engine.submit(prepared)
        so_far = ""
        async for delta in handle.stream():
            if on_delta is not None:
                on_delta(delta)
            if on_text is not None:
                so_far += delta
                on_text(so_far)
        result = handle.result
        assert result is not None
        return {
            "text": result.text,
            "finish_reason": result.finish_reason,
            "model": result.model,
            "seed": result.seed,
        }

    def model_info(self) -> tuple[str, str | None]:
        """(base model, adapter name or None) of what writes by default."""
        loaded = self.engine.loaded
        adapter = loaded.default_name if loaded.default_name != loaded.base_name else None
        return loaded.base_name, adapter


class LocalImage:
    def __init__(self, engine: ImageEngine) -> None:
        self.engine = engine

    async def generate(self, body: dict[str, Any], on_step: OnStep | None = None) -> dict[str, Any]:
        request = ImagesRequest.model_validate(body)
        job = self.engine.prepare(request.to_params(), "local", stream=True)
        handle = self.engine.submit(job)
        async for progress in handle.progress():
            if on_step is not None:
                on_step(progress.step, progress.steps, progress.preview_b64)
        assert handle.result is not None
        return images_response(handle.result).model_dump()
