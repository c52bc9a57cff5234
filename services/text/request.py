"""The request side of the engine: a request checked before it is queued, the queue bound,
and the result.

``RequestChecks.prepare`` tokenizes a prompt and checks it against every limit (the served
models, the input limit, the context window, ``max_new_tokens``, the KV cache), raising the 4xx
errors on the caller's thread before anything reaches the engine thread. What it returns carries
every limit resolved: the model's adapter, the token budget, the seed. ``Admission`` counts the
requests admitted and not yet released against ``ARTICLEFORGE_TEXT_MAX_QUEUE``.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jinja2 import TemplateError

from services.common.errors import InvalidRequest, NotFound, Overloaded
from services.common.handles import EngineHandle, Releases
from services.text import metrics
from services.text.config import TextSettings
from services.text.decode_state import FinishReason
from services.text.loading import LoadedModel
from services.text.schemas import MAX_SEED, Prompt, SamplingParams, Usage

if TYPE_CHECKING:
    from services.text.sequence import SeqState

logger = logging.getLogger(__name__)


@dataclass
class GenerationRequest:
    """A prepared request: tokenized, checked, with every limit resolved."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    max_new_tokens: int
    seed: int
    model_name: str
    adapter: str
    arrival: float = field(default_factory=time.monotonic)


@dataclass
class GenerationResult:
    text: str
    finish_reason: FinishReason
    usage: Usage
    seed: int
    model: str
    queue_seconds: float
    time_to_first_token_seconds: float
    total_seconds: float
    tokens_per_second: float

    @classmethod
    def of(cls, request: GenerationRequest, seq: SeqState, end: float) -> GenerationResult:
        """The result of a request that finished at ``end``."""
        started = seq.started or end
        assert seq.state.finish_reason is not None
        return cls(
            text=seq.state.text,
            finish_reason=seq.state.finish_reason,
            usage=Usage(seq.prompt_len, seq.state.completion_tokens, seq.cached_tokens),
            seed=request.seed,
            model=request.model_name,
            queue_seconds=started - request.arrival,
            time_to_first_token_seconds=(seq.first_token_at or end) - request.arrival,
            total_seconds=end - request.arrival,
            tokens_per_second=seq.state.completion_tokens / max(end - started, 1e-9),
        )


class RequestHandle(EngineHandle[GenerationResult]):
    """A generation request's handle: ``stream()`` yields text deltas."""

    def __init__(self, engine: Releases, request: GenerationRequest) -> None:
        super().__init__(engine)
        self.request = request

    def stream(self) -> AsyncIterator[str]:
        return self.updates()

    def finish(self, seq: SeqState, end: float) -> None:
        """Ends the request with its result (from the engine thread, once it has stopped)."""
        request = self.request
        result = GenerationResult.of(request, seq, end)
        self.push("done", result)
        self.engine.release(self, "success")
        logger.info(
            "request %s: %d+%d tokens (%d prompt tokens from the prefix cache), %s, %.2fs "
            "(%d prefill chunks)",
            request.request_id,
            result.usage.prompt_tokens,
            result.usage.completion_tokens,
            result.usage.cached_tokens,
            result.finish_reason,
            result.total_seconds,
            seq.prefill_chunks,
        )

    def fail(self, error: Exception) -> None:
        """Ends the request with ``error`` (from the engine thread)."""
        self.push("error", error)
        self.engine.release(self, "error")


class Admission:
    """The queue bound: requests admitted and not yet released, and how many still wait."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._admitted = 0
        self._waiting = 0

    def admit(self) -> None:
        """Counts one more request in, or raises 429 when the queue is full."""
        with self._lock:
            if self._admitted >= self.max_queue:
                metrics.REQUESTS.labels("rejected").inc()
                raise Overloaded(
                    f"the text queue is full ({self.max_queue} requests, "
                    "ARTICLEFORGE_TEXT_MAX_QUEUE); retry later",
                    retry_after=1,
                )
            self._admitted += 1
            self._waiting += 1
            metrics.QUEUE_DEPTH.set(self._waiting)

    def left_queue(self, count: int) -> None:
        """``count`` requests stopped waiting (scheduled, or cancelled while queued)."""
        with self._lock:
            self._waiting -= count
            metrics.QUEUE_DEPTH.set(self._waiting)

    def scheduled(self, seqs: list[SeqState]) -> None:
        """Requests the scheduler just admitted: out of the queue, their prompts counted."""
        metrics.BATCH_SIZE.observe(len(seqs))
        callers = [s for s in seqs if s.handle is not None]  # not warm-up traffic
        self.left_queue(len(callers))
        for seq in callers:
            metrics.PROMPT_TOKENS.inc(seq.prompt_len)
            if seq.cached_tokens:
                metrics.PREFIX_CACHE_HIT_TOKENS.inc(seq.cached_tokens)
                metrics.PREFIX_CACHE_HITS.inc()

    def release(self, handle: Any, status: str) -> None:
        """A request is over (once per handle, whoever gets there first)."""
        with self._lock:
            if handle.finalized:
                return
            handle.finalized = True
            self._admitted -= 1
        metrics.REQUESTS.labels(status).inc()


@dataclass
class RequestChecks:
    """Every limit a request is checked against, on the caller's thread."""

    settings: TextSettings
    loaded: LoadedModel
    context: int  # the model's context window, in tokens
    kv_capacity: int | None = None  # the KV cache's size in tokens, once it is allocated

    def resolve_model(self, name: str | None) -> tuple[str, str]:
        """The served model's name and its adapter; 404 for a name not served here."""
        loaded = self.loaded
        name = name or loaded.default_name
        adapter = loaded.served.get(name)
        if adapter is None:
            raise NotFound(
                f"model {name!r} is not served here; choose one of {sorted(loaded.served)}",
                param="model",
            )
        return name, adapter

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """A text prompt's token ids, or the chat template's rendering of the messages."""
        tokenizer = self.loaded.tokenizer
        if prompt.text is not None:
            return list(tokenizer(prompt.text).input_ids)
        try:
            rendered = tokenizer.apply_chat_template(
                prompt.messages, tokenize=False, add_generation_prompt=True
            )
        except TemplateError as exc:  # e.g. Llama-2's template: roles must alternate
            raise InvalidRequest(
                f"the model's chat template refuses these messages: {exc}", param=prompt.param
            ) from exc
        return list(tokenizer(rendered, add_special_tokens=False).input_ids)

    def prepare(
        self,
        prompt: Prompt,
        params: SamplingParams,
        model: str | None,
        request_id: str,
        max_param: str = "max_new_tokens",
    ) -> GenerationRequest:
        """Tokenizes and checks a request; raises the 4xx errors before anything is queued.

        ``max_param`` names the token limit as the caller's API spells it.
        """
        settings, context, kv_capacity = self.settings, self.context, self.kv_capacity
        name, adapter = self.resolve_model(model)
        ids = self.encode_prompt(prompt)
        if logger.isEnabledFor(logging.DEBUG):  # what the model is asked, to debug prompts
            logger.debug(
                "request %s: %d prompt tokens: %s",
                request_id,
                len(ids),
                self.loaded.tokenizer.decode(ids, skip_special_tokens=True),
            )
        if not ids:
            raise InvalidRequest(
                f"{prompt.param} renders to an empty prompt (0 tokens); give some text to "
                "continue, or at least one user message",
                param=prompt.param,
            )
        limit = settings.text_max_input_tokens
        if len(ids) > limit:
            raise InvalidRequest(
                f"the prompt is {len(ids)} tokens long; the limit is {limit} tokens "
                "(ARTICLEFORGE_TEXT_MAX_INPUT_TOKENS)",
                param=prompt.param,
            )
        room = context - len(ids)
        if room < 1:
            raise InvalidRequest(
                f"the prompt is {len(ids)} tokens long; the model's context window is "
                f"{context} tokens, leaving no room to generate",
                param=prompt.param,
            )
        max_new = params.max_new_tokens
        if max_new is None:
            max_new = min(settings.text_default_max_new_tokens, room)
        elif max_new > settings.text_max_new_tokens:
            raise InvalidRequest(
                f"{max_param} must be <= {settings.text_max_new_tokens}, got {max_new}",
                param=max_param,
            )
        elif max_new > room:
            raise InvalidRequest(
                f"the prompt ({len(ids)} tokens) plus {max_param} ({max_new}) exceeds the "
                f"model's context window of {context} tokens; at most {room} new tokens fit",
                param=max_param,
            )
        if kv_capacity is not None and len(ids) + max_new > kv_capacity:
            raise InvalidRequest(
                f"the prompt ({len(ids)} tokens) plus {max_param} ({max_new}) needs more KV "
                f"cache than this service holds ({kv_capacity} tokens, "
                "ARTICLEFORGE_TEXT_KV_CACHE_TOKENS / ARTICLEFORGE_TEXT_GPU_MEMORY_UTILIZATION)",
                param=max_param,
            )
        seed = params.seed if params.seed is not None else secrets.randbelow(MAX_SEED)
        return GenerationRequest(request_id, ids, params, max_new, seed, name, adapter)
