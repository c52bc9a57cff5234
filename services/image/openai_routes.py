"""OpenAI-compatible route: /v1/images/generations (`response_format=b64_json`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.common.http import ERROR_RESPONSES, cancel_on_disconnect, request_id_of
from services.image.deps import EngineDep
from services.image.routes import b64
from services.image.schemas import OpenAIImage, OpenAIImagesRequest, OpenAIImagesResponse

router = APIRouter(prefix="/v1", tags=["openai"], responses=ERROR_RESPONSES)


@router.post(
    "/images/generations",
    response_model=OpenAIImagesResponse,
    summary="OpenAI-compatible image generation (the `b64_json` subset).",
)
async def generations(body: OpenAIImagesRequest, request: Request, engine: EngineDep) -> Any:
    job = engine.prepare(body.to_params(), request_id_of(request), size_param="size")
    handle = engine.submit(job)
    result = await cancel_on_disconnect(request, handle.wait(), handle.cancel)
    if result is None:
        return Response(status_code=499)
    return OpenAIImagesResponse(data=[OpenAIImage(b64_json=b64(i.png)) for i in result.images])
