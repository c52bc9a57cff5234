"""Text and image backends over the OpenAI API, for model servers that articleforge does not run
(ARTICLEFORGE_TEXT_BACKEND=openai, ARTICLEFORGE_IMAGE_BACKEND=openai).

The pipeline speaks /v1/generate and /v1/images (``pipeline.TextBackend``, ``ImageBackend``);
these classes translate its requests into `POST /chat/completions` (streamed, so tokens still
feed progress) and `POST /images/generations` (``b64_json``), and the replies back into what the
pipeline reads. The OpenAI API has no step progress: an image's progress says so
(``progress.images[].step_progress`` is false) instead of inventing steps.
"""

from __future__ import annotations

import base64
import logging
import struct
from collections.abc import Callable
from typing import Any

import httpx

from services.gateway.clients import ServiceClient, ServiceRejected
from services.gateway.pipeline import OnStep

logger = logging.getLogger(__name__)

# /v1/generate fields with an OpenAI chat counterpart of the same meaning. top_k and
# repetition_penalty have none (vLLM and SGLang accept them as extensions; OpenAI refuses them),
# so they are sent only when a caller sets them.
_SAME_NAME = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")
_EXTENSIONS = ("top_k", "repetition_penalty")


def chat_body(body: dict[str, Any], model: str, include_usage: bool) -> dict[str, Any]:
    """The /v1/generate request ``body`` as an OpenAI chat completion request."""
    messages: list[dict[str, Any]] = list(body.get("messages") or [])
    if body.get("prompt") is not None:
        messages = [{"role": "user", "content": body["prompt"]}]
    if body.get("system") is not None:
        messages.insert(0, {"role": "system", "content": body["system"]})
    chat: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
    if body.get("max_new_tokens") is not None:
        chat["max_tokens"] = body["max_new_tokens"]
    for name in _SAME_NAME:
        if body.get(name) is not None:
            chat[name] = body[name]
    for name in _EXTENSIONS:
        if body.get(name) not in (None, 0, 1.0):  # their "off" values need not be sent
            chat[name] = body[name]
    if body.get("stop"):
        chat["stop"] = body["stop"]
    if include_usage:
        chat["stream_options"] = {"include_usage": True}
    return chat


class _Reply:
    """Collects one streamed chat completion: text, finish reason, model and usage."""

    def __init__(
        self,
        on_delta: Callable[[str], None] | None,
        on_text: Callable[[str], None] | None = None,
    ) -> None:
        self.on_delta = on_delta
        self.on_text = on_text
        self.parts: list[str] = []
        self.chunks = 0  # content chunks, the token count when the server sends no usage
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.usage: dict[str, Any] | None = None

    def __call__(self, chunk: dict[str, Any]) -> None:
        self.model = chunk.get("model") or self.model
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = (choice.get("delta") or {}).get("content")
            if delta:
                self.parts.append(delta)
                self.chunks += 1
                if self.on_delta is not None:
                    self.on_delta(delta)
                if self.on_text is not None:
                    self.on_text("".join(self.parts))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def result(self, seed: int | None) -> dict[str, Any]:
        usage = self.usage or {}
        return {
            "text": "".join(self.parts),
            "finish_reason": self.finish_reason or "stop",
            "model": self.model,
            "seed": seed,
            "usage": {
                "prompt_tokens": int(usage.get("prompt_tokens") or 0),
                # A chunk carries one token or more, so the count never overstates.
                "completion_tokens": int(usage.get("completion_tokens") or self.chunks),
            },
            "usage_reported": self.usage is not None,
        }


class OpenAIText:
    """TextBackend over an OpenAI-compatible `/chat/completions`, streamed."""

    def __init__(self, client: ServiceClient, model: str | None, include_usage: bool) -> None:
        self.client = client
        self.model = model
        self.include_usage = include_usage
        self.answered_by: str | None = None  # the model the server says answered the last call
        self._listed: list[dict[str, Any]] | None = None  # the server's /models

    async def _model(self) -> str:
        if self.model is None:
            served = (await self.models()).get("data") or []
            if not served:
                raise ServiceRejected(
                    f"the {self.client.name} server lists no model at /models; set "
                    "ARTICLEFORGE_TEXT_OPENAI_MODEL"
                )
            self.model = str(served[0]["id"])
            logger.info("%s service: using model %s", self.client.name, self.model)
        return self.model

    async def generate(
        self,
        body: dict[str, Any],
        on_delta: Callable[[str], None] | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        model = await self._model()
        chat = chat_body(body, model, self.include_usage)
        replies: list[_Reply] = []

        def start() -> _Reply:  # once per try: a retried call's text starts over
            replies.append(_Reply(on_delta, on_text))
            return replies[-1]

        await self.client.stream_data("/chat/completions", chat, start)
        result = replies[-1].result(body.get("seed"))
        result["model"] = result["model"] or model
        self.answered_by = result["model"]
        return result

    async def models(self) -> dict[str, Any]:
        """The server's /models, each card given the `root` that provenance reads (the base
        model; OpenAI and Ollama send none). A server without /models gets a card of the
        configured model."""
        if self._listed is None:
            try:
                listed = await self.client.get_json("/models")
                self._listed = [dict(c) for c in listed.get("data") or [] if "id" in c]
            except ServiceRejected:
                self._listed = []
        # Provenance reads `root` as the base model and `id` as the adapter when `parent` is
        # set. vLLM puts an adapter's path in `root` and the base's served name in `parent`,
        # so an adapter takes the root of its parent's card (the base model's id or path).
        bases = {c["id"]: c.get("root") or c["id"] for c in self._listed if not c.get("parent")}
        cards = [
            {**card, "root": bases.get(card["parent"], card["parent"])}
            if card.get("parent")
            else {**card, "root": card.get("root") or card["id"]}
            for card in self._listed
        ]
        known = {card["id"] for card in cards}
        for name in dict.fromkeys((self.model, self.answered_by)):
            if name and name not in known:
                cards.append({"id": name, "root": name, "parent": None})
        return {"object": "list", "data": cards}


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


class OpenAIImage:
    """ImageBackend over an OpenAI-compatible `/images/generations` (one image, `b64_json`).

    The reply has no step progress, so ``on_step`` is never called; no seed either, so the
    seed recorded is the one asked for (``extensions``), which reproduces the image only on a
    server that honours it (articleforge's own does)."""

    step_progress = False

    def __init__(self, client: ServiceClient, model: str | None, extensions: bool) -> None:
        self.client = client
        self.model = model
        self.extensions = extensions

    def request_body(self, body: dict[str, Any]) -> dict[str, Any]:
        request: dict[str, Any] = {"prompt": body["prompt"], "n": 1}
        # OpenAI's gpt-image models always answer b64_json and refuse the field; DALL-E and
        # the rest default to `url` without it.
        if not (self.model or "").startswith("gpt-image"):
            request["response_format"] = "b64_json"
        if "width" in body and "height" in body:  # else the server's own size
            request["size"] = f"{body['width']}x{body['height']}"
        if self.model is not None:
            request["model"] = self.model
        if self.extensions:
            for name in ("seed", "negative_prompt", "steps", "guidance_scale"):
                if body.get(name) is not None:
                    request[name] = body[name]
        return request

    async def generate(self, body: dict[str, Any], on_step: OnStep | None = None) -> dict[str, Any]:
        reply = await self.client.post_json("/images/generations", self.request_body(body))
        data = (reply.get("data") or [None])[0]
        if not isinstance(data, dict):
            raise ServiceRejected(f"the {self.client.name} server sent no image")
        if data.get("b64_json"):
            png = base64.b64decode(data["b64_json"])
        elif data.get("url"):  # a server that ignores response_format links to the file
            try:
                async with httpx.AsyncClient(timeout=self.client.timeout) as http:
                    response = await http.get(data["url"])
                    response.raise_for_status()
            except httpx.HTTPError as exc:
                raise ServiceRejected(
                    f"the {self.client.name} server's image could not be fetched: {exc}"
                ) from exc
            png = response.content
        else:  # articleforge's own sends null for an image its safety checker flagged
            return {"images": [{"b64_png": None, "nsfw": True}], "model": self.model}
        try:
            width, height = png_size(png)
        except ValueError:
            raise ServiceRejected(
                f"the {self.client.name} server sent an image that is not a PNG"
            ) from None
        image = {
            "b64_png": base64.b64encode(png).decode(),
            "seed": body.get("seed") or 0,
            "width": width,
            "height": height,
        }
        return {"images": [image], "model": self.model or reply.get("model")}
