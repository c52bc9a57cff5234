"""Native route: /v1/images (JSON, or SSE progress with `stream: true`)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from services.common.errors import InvalidRequest
from services.common.http import ERROR_RESPONSES, cancel_on_disconnect, request_id_of, sse_error
from services.image.deps import EngineDep
from services.image.engine import ImageHandle, ImageResult
from services.image.schemas import (
    GeneratedImage,
    ImagesRequest,
    ImagesResponse,
    ImageTimings,
    ProgressEvent,
)

router = APIRouter(prefix="/v1", tags=["images"], responses=ERROR_RESPONSES)


def b64(png: bytes | None) -> str | None:
    return None if png is None else base64.b64encode(png).decode("ascii")


def images_response(result: ImageResult) -> ImagesResponse:
    return ImagesResponse(
        model=result.model,
        scheduler=result.scheduler,
        steps=result.steps,
        guidance_scale=result.guidance_scale,
        images=[
            GeneratedImage(
                b64_png=b64(image.png),
                seed=image.seed,
                width=image.width,
                height=image.height,
                nsfw=image.nsfw,
            )
            for image in result.images
        ],
        timings=ImageTimings(
            queue_seconds=result.queue_seconds,
            inference_seconds=result.inference_seconds,
            total_seconds=result.total_seconds,
            seconds_per_image=result.seconds_per_image,
            batch_size=result.batch_size,
        ),
    )


@router.post(
    "/images",
    response_model=ImagesResponse,
    summary="Draw images from a prompt (seeds, schedulers, negative prompt, batching).",
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "JSON, or SSE `progress` events and one `result` event with "
            "`stream: true`.",
        }
    },
)
async def create_images(body: ImagesRequest, request: Request, engine: EngineDep) -> Any:
    limit = engine.settings.image_max_steps
    if body.steps is not None and body.steps > limit:
        raise InvalidRequest(
            f"steps must be <= {limit} (ARTICLEFORGE_IMAGE_MAX_STEPS), got {body.steps}",
            param="steps",
        )
    job = engine.prepare(body.to_params(), request_id_of(request), stream=body.stream)
    handle = engine.submit(job)
    if body.stream:
        return EventSourceResponse(_stream_images(handle, request))
    result = await cancel_on_disconnect(request, handle.wait(), handle.cancel)
    if result is None:
        return Response(status_code=499)
    return images_response(result)


async def _stream_images(handle: ImageHandle, request: Request) -> AsyncIterator[dict[str, str]]:
    try:
        async for progress in handle.progress():
            event = ProgressEvent(
                step=progress.step, steps=progress.steps, preview_b64=progress.preview_b64
            )
            yield {"event": "progress", "data": event.model_dump_json(exclude_none=True)}
        assert handle.result is not None
        yield {"event": "result", "data": images_response(handle.result).model_dump_json()}
    except Exception as exc:
        yield sse_error(exc, request, "image generation failed")
    finally:
        handle.cancel()  # no-op when finished; when the client left, frees the slot and stops
