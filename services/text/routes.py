"""Native routes: /v1/generate, /v1/perplexity."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from services.common.http import ERROR_RESPONSES, cancel_on_disconnect, request_id_of, sse_error
from services.text.deps import EngineDep
from services.text.request import GenerationResult, RequestHandle
from services.text.schemas import (
    GenerateRequest,
    GenerateResponse,
    PerplexityRequest,
    PerplexityResponse,
    PerplexityResult,
    usage_out,
)

router = APIRouter(prefix="/v1", tags=["text"], responses=ERROR_RESPONSES)


def generate_response(result: GenerationResult) -> GenerateResponse:
    return GenerateResponse.model_validate(
        {
            "text": result.text,
            "finish_reason": result.finish_reason,
            "model": result.model,
            "seed": result.seed,
            "usage": usage_out(result.usage),
            "timings": {
                "queue_seconds": result.queue_seconds,
                "time_to_first_token_seconds": result.time_to_first_token_seconds,
                "total_seconds": result.total_seconds,
                "tokens_per_second": result.tokens_per_second,
            },
        }
    )


@router.post(
    "/generate",
    response_model=GenerateResponse,
    summary="Generate text from a prompt or chat messages.",
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "JSON, or SSE `token`/`result` events with `stream: true`.",
        }
    },
)
async def generate(body: GenerateRequest, request: Request, engine: EngineDep) -> Any:
    # Tokenizing a long prompt takes a while: in a worker thread, so /healthz and the other
    # requests keep being answered meanwhile.
    prepared = await run_in_threadpool(
        engine.prepare,
        body.to_prompt(),
        body.to_sampling_params(),
        body.model,
        request_id_of(request),
    )
    handle = engine.submit(prepared)
    if body.stream:
        return EventSourceResponse(_stream_generate(handle, request))
    result = await cancel_on_disconnect(request, handle.wait(), handle.cancel)
    if result is None:
        return Response(status_code=499)
    return generate_response(result)


async def _stream_generate(
    handle: RequestHandle, request: Request
) -> AsyncIterator[dict[str, str]]:
    try:
        async for delta in handle.stream():
            yield {"event": "token", "data": json.dumps({"text": delta})}
        assert handle.result is not None
        yield {"event": "result", "data": generate_response(handle.result).model_dump_json()}
    except Exception as exc:
        yield sse_error(exc, request, "generation failed")
    finally:
        handle.cancel()  # no-op when finished; frees its queue place if the client left early


@router.post(
    "/perplexity",
    response_model=PerplexityResponse,
    summary="Perplexity of each text (optionally conditioned on a context that is not scored).",
)
async def perplexity(body: PerplexityRequest, engine: EngineDep) -> PerplexityResponse:
    name, job = await run_in_threadpool(
        engine.prepare_perplexity, body.texts, body.contexts, body.model
    )
    scores = await engine.perplexity(job)
    return PerplexityResponse(
        model=name,
        results=[
            PerplexityResult(perplexity=math.exp(nll), mean_nll=nll, tokens=tokens)
            for nll, tokens in scores
        ],
    )
