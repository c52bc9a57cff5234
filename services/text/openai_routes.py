"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from services.common.http import ERROR_RESPONSES, cancel_on_disconnect, request_id_of, sse_error
from services.text.deps import EngineDep
from services.text.request import RequestHandle
from services.text.schemas import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    new_id,
    now,
    usage_out,
)

router = APIRouter(prefix="/v1", tags=["openai"], responses=ERROR_RESPONSES)
_STREAMS: dict[str, Any] = {
    "content": {"text/event-stream": {}},
    "description": "JSON, or with `stream: true` SSE chunks ending in `data: [DONE]`.",
}


@router.get("/models", response_model=ModelList, summary="Served models and adapters.")
async def list_models(engine: EngineDep) -> ModelList:
    loaded = engine.loaded
    cards = []
    for name in loaded.served:
        is_base = name == loaded.base_name
        cards.append(
            ModelCard(
                id=name,
                root=loaded.base_name,
                parent=None if is_base else loaded.base_name,
                merged=loaded.merged and not is_base,
                max_model_len=loaded.context_window,
            )
        )
    return ModelList(data=cards)


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    summary="OpenAI-compatible chat completion (streams with `stream: true`).",
    responses={200: _STREAMS},
)
async def chat_completions(body: ChatCompletionRequest, request: Request, engine: EngineDep) -> Any:
    # Rendering and tokenizing run in a worker thread, off the event loop (see routes.py).
    prepared = await run_in_threadpool(
        engine.prepare,
        body.to_prompt(),
        body.to_sampling_params(),
        body.model,
        request_id_of(request),
        max_param="max_tokens",
    )
    handle = engine.submit(prepared)
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return EventSourceResponse(_stream(handle, request, chat=True, include_usage=usage))
    result = await cancel_on_disconnect(request, handle.wait(), handle.cancel)
    if result is None:
        return Response(status_code=499)
    return ChatCompletionResponse.model_validate(
        {
            "id": new_id("chatcmpl"),
            "model": result.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.finish_reason,
                }
            ],
            "usage": usage_out(result.usage),
        }
    )


@router.post(
    "/completions",
    response_model=CompletionResponse,
    summary="OpenAI-compatible text completion (streams with `stream: true`).",
    responses={200: _STREAMS},
)
async def completions(body: CompletionRequest, request: Request, engine: EngineDep) -> Any:
    prompt = body.to_prompt()
    prepared = await run_in_threadpool(
        engine.prepare,
        prompt,
        body.to_sampling_params(),
        body.model,
        request_id_of(request),
        max_param="max_tokens",
    )
    handle = engine.submit(prepared)
    prefix = body.prompt if body.echo else ""
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return EventSourceResponse(
            _stream(handle, request, chat=False, include_usage=usage, prefix=prefix)
        )
    result = await cancel_on_disconnect(request, handle.wait(), handle.cancel)
    if result is None:
        return Response(status_code=499)
    return CompletionResponse.model_validate(
        {
            "id": new_id("cmpl"),
            "model": result.model,
            "choices": [
                {"index": 0, "text": prefix + result.text, "finish_reason": result.finish_reason}
            ],
            "usage": usage_out(result.usage),
        }
    )


async def _stream(
    handle: RequestHandle, request: Request, *, chat: bool, include_usage: bool, prefix: str = ""
) -> AsyncIterator[dict[str, str]]:
    """OpenAI's chunk format: one JSON chunk per delta, a final chunk with finish_reason,
    optionally a usage chunk, then ``data: [DONE]``."""
    chunk_id = new_id("chatcmpl" if chat else "cmpl")
    created = now()
    model = handle.request.model_name

    def chunk(delta: str | None, finish: str | None, first: bool = False) -> dict[str, str]:
        if chat:
            content: dict[str, Any] = {} if delta is None else {"content": delta}
            if first:
                content["role"] = "assistant"
            choice: dict[str, Any] = {"index": 0, "delta": content, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
        body: dict[str, Any] = {
            "id": chunk_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": [choice],
        }
        if include_usage:
            body["usage"] = None
        return {"data": json.dumps(body)}

    try:
        if chat:
            yield chunk("", None, first=True)
        elif prefix:
            yield chunk(prefix, None)
        async for delta in handle.stream():
            if delta:
                yield chunk(delta, None)
        result = handle.result
        assert result is not None
        yield chunk(None, result.finish_reason)
        if include_usage:
            last: dict[str, Any] = {
                "id": chunk_id,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage_out(result.usage),
            }
            yield {"data": json.dumps(last)}
        yield {"data": "[DONE]"}
    except Exception as exc:
        yield sse_error(exc, request, "generation failed")
    finally:
        handle.cancel()
