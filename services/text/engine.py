"""The text engine: one thread owns the model and decodes waiting requests together.

Requests are tokenized and checked on the caller's side (``prepare``), admitted against the
queue bound (``submit``), then picked up by the engine thread, which gathers every request
waiting at that moment (up to ``max_batch_size``) and decodes them as one left-padded batch with
a shared KV cache. Each row keeps its own sampling parameters, seed and stop rules; finished or
cancelled rows leave the batch at once. Tokens flow back to the asyncio side per step.

This is the seam for the GPU path: ``_decode_batch`` is the only code that touches the model.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import secrets
import threading
import time
import warnings
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from services.common.errors import ArticleforgeError, InvalidRequest, NotFound, Overloaded
from services.common.handles import EngineHandle
from services.text import metrics
from services.text.config import TextSettings
from services.text.loading import BASE_ADAPTER, LoadedModel
from services.text.perplexity import encode_scored, mean_nll
from services.text.sampling import DecodeState, FinishReason
from services.text.schemas import MAX_SEED, Prompt, SamplingParams, Usage

logger = logging.getLogger(__name__)

# transformers >= 5.2x renames `past_key_values` to `cache`; the old name works on every
# version we support (>= 5.17), so keep it and silence the notice.
warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated.*", category=FutureWarning)


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


class RequestHandle(EngineHandle[GenerationResult]):
    """A generation request's handle: ``stream()`` yields text deltas."""

    def __init__(self, engine: TextEngine, request: GenerationRequest) -> None:
        super().__init__(engine)
        self.request = request

    def stream(self) -> AsyncIterator[str]:
        return self.updates()


@dataclass
class _PerplexityJob:
    adapter: str
    sequences: list[tuple[list[int], int]]  # token ids, and how many lead tokens are context
    future: Future[list[tuple[float, int]]] = field(default_factory=Future)


class TextEngine:
    def __init__(self, settings: TextSettings, loaded: LoadedModel) -> None:
        self.settings = settings
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self._work: queue.Queue[RequestHandle | _PerplexityJob | None] = queue.Queue()
        self._lock = threading.Lock()
        self._admitted = 0
        self._waiting = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        eos = loaded.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = eos_ids

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="text-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stopping = True
        self._work.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def warmup(self) -> None:
        """Runs one tiny request on the calling thread before the engine thread starts."""
        ids = self.tokenizer("warm up").input_ids
        params = SamplingParams(max_new_tokens=2, temperature=0.0)
        state = DecodeState(self.tokenizer, ids, params, 2, 0, self.eos_ids, self.loaded.device)
        self._forward_loop([state], [BASE_ADAPTER], lambda i, d: None, lambda i: False)

    # --- the caller's side -------------------------------------------------------------------

    def resolve_model(self, name: str | None) -> tuple[str, str]:
        name = name or self.loaded.default_name
        adapter = self.loaded.served.get(name)
        if adapter is None:
            raise NotFound(
                f"model {name!r} is not served here; choose one of {sorted(self.loaded.served)}",
                param="model",
            )
        return name, adapter

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        if prompt.text is not None:
            return list(self.tokenizer(prompt.text).input_ids)
        rendered = self.tokenizer.apply_chat_template(
            prompt.messages, tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(rendered, add_special_tokens=False).input_ids)

    def prepare(
        self,
        prompt: Prompt,
        params: SamplingParams,
        model: str | None,
        request_id: str,
        max_param: str = "max_new_tokens",
    ) -> GenerationRequest:
        """Tokenizes and checks a request; raises the 4xx errors before anything is queued."""
        name, adapter = self.resolve_model(model)
        ids = self.encode_prompt(prompt)
        limit = self.settings.text_max_input_tokens
        if len(ids) > limit:
            raise InvalidRequest(
                f"the prompt is {len(ids)} tokens long; the limit is {limit} tokens "
                "(ARTICLEFORGE_TEXT_MAX_INPUT_TOKENS)",
                param=prompt.param,
            )
        context = self.loaded.context_window
        room = context - len(ids)
        if room < 1:
            raise InvalidRequest(
                f"the prompt is {len(ids)} tokens long; the model's context window is "
                f"{context} tokens, leaving no room to generate",
                param=prompt.param,
            )
        max_new = params.max_new_tokens
        if max_new is None:
            max_new = min(self.settings.text_default_max_new_tokens, room)
        elif max_new > self.settings.text_max_new_tokens:
            raise InvalidRequest(
                f"{max_param} must be <= {self.settings.text_max_new_tokens}, got {max_new}",
                param=max_param,
            )
        elif max_new > room:
            raise InvalidRequest(
                f"the prompt ({len(ids)} tokens) plus {max_param} ({max_new}) exceeds the "
                f"model's context window of {context} tokens; at most {room} new tokens fit",
                param=max_param,
            )
        seed = params.seed if params.seed is not None else secrets.randbelow(MAX_SEED)
        return GenerationRequest(request_id, ids, params, max_new, seed, name, adapter)

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Admits a prepared request, or raises 429 when the queue is full."""
        with self._lock:
            if self._admitted >= self.settings.text_max_queue:
                metrics.REQUESTS.labels("rejected").inc()
                raise Overloaded(
                    f"the text queue is full ({self.settings.text_max_queue} requests, "
                    "ARTICLEFORGE_TEXT_MAX_QUEUE); retry later",
                    retry_after=1,
                )
            self._admitted += 1
            self._waiting += 1
            metrics.QUEUE_DEPTH.set(self._waiting)
        handle = RequestHandle(self, request)
        self._work.put(handle)
        return handle

    def release(self, handle: RequestHandle, status: str) -> None:
        with self._lock:
            if handle.finalized:
                return
            handle.finalized = True
            self._admitted -= 1
        metrics.REQUESTS.labels(status).inc()

    def prepare_perplexity(
        self, texts: Sequence[str], contexts: Sequence[str] | None, model: str | None
    ) -> tuple[str, _PerplexityJob]:
        name, adapter = self.resolve_model(model)
        sequences = []
        for i, text in enumerate(texts):
            ids, lead = encode_scored(self.tokenizer, text, contexts[i] if contexts else None)
            if len(ids) <= lead:
                raise InvalidRequest(f"texts[{i}] has no tokens to score", param=f"texts.{i}")
            if len(ids) > self.loaded.context_window:
                raise InvalidRequest(
                    f"texts[{i}] is {len(ids)} tokens long with its context; the model's "
                    f"context window is {self.loaded.context_window} tokens",
                    param=f"texts.{i}",
                )
            sequences.append((ids, lead))
        return name, _PerplexityJob(adapter, sequences)

    async def perplexity(self, job: _PerplexityJob) -> list[tuple[float, int]]:
        self._work.put(job)
        return await asyncio.wrap_future(job.future)

    # --- the engine thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping:
            item = self._work.get()
            if item is None:
                break
            if isinstance(item, _PerplexityJob):
                self._run_perplexity(item)
                continue
            batch = [item]
            deadline = time.monotonic() + self.settings.text_batch_wait_ms / 1000
            others: list[_PerplexityJob] = []
            while len(batch) < self.settings.text_max_batch_size:
                try:
                    nxt = self._work.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._stopping = True
                    break
                if isinstance(nxt, _PerplexityJob):
                    others.append(nxt)
                else:
                    batch.append(nxt)
            self._run_batch(batch)
            for job in others:
                self._run_perplexity(job)
        self._fail_pending()

    def _fail_pending(self) -> None:
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, RequestHandle):
                item.push("error", ArticleforgeError("the text service is shutting down"))
                self.release(item, "error")

    def _run_batch(self, handles: list[RequestHandle]) -> None:
        with self._lock:
            self._waiting -= len(handles)
            metrics.QUEUE_DEPTH.set(self._waiting)
        handles = [h for h in handles if not h.cancelled.is_set()]
        if not handles:
            return
        metrics.BATCH_SIZE.observe(len(handles))
        started = time.monotonic()
        first_token_at: list[float | None] = [None] * len(handles)
        states = [
            DecodeState(
                self.tokenizer,
                h.request.prompt_ids,
                h.request.params,
                h.request.max_new_tokens,
                h.request.seed,
                self.eos_ids,
                self.loaded.device,
            )
            for h in handles
        ]

        def on_delta(i: int, delta: str) -> None:
            if first_token_at[i] is None:
                at = first_token_at[i] = time.monotonic()
                metrics.TIME_TO_FIRST_TOKEN.observe(at - handles[i].request.arrival)
            metrics.GENERATED_TOKENS.inc()
            if delta:
                handles[i].push("update", delta)
            if states[i].finish_reason is not None:
                self._finish(handles[i], states[i], started, first_token_at[i])

        try:
            self._forward_loop(
                states,
                [h.request.adapter for h in handles],
                on_delta,
                lambda i: handles[i].cancelled.is_set(),
            )
        except Exception as exc:  # a failed batch fails its requests, not the engine
            logger.exception("text batch of %d failed", len(handles))
            for handle, state in zip(handles, states, strict=True):
                if state.finish_reason is None and not handle.cancelled.is_set():
                    handle.push("error", ArticleforgeError(f"generation failed: {exc}"))
                    self.release(handle, "error")

    def _finish(
        self, handle: RequestHandle, state: DecodeState, started: float, first: float | None
    ) -> None:
        end = time.monotonic()
        request = handle.request
        decode_time = max(end - started, 1e-9)
        assert state.finish_reason is not None
        result = GenerationResult(
            text=state.text,
            finish_reason=state.finish_reason,
            usage=Usage(len(request.prompt_ids), state.completion_tokens),
            seed=request.seed,
            model=request.model_name,
            queue_seconds=started - request.arrival,
            time_to_first_token_seconds=(first or end) - request.arrival,
            total_seconds=end - request.arrival,
            tokens_per_second=state.completion_tokens / decode_time,
        )
        handle.push("done", result)
        self.release(handle, "success")
        logger.info(
            "request %s: %d+%d tokens, %s, %.2fs",
            request.request_id,
            result.usage.prompt_tokens,
            result.usage.completion_tokens,
            result.finish_reason,
            result.total_seconds,
        )

    @torch.inference_mode()
    def _forward_loop(
        self,
        states: list[DecodeState],
        adapters: list[str],
        on_delta: Any,
        is_cancelled: Any,
    ) -> None:
        """Prefill the batch, then decode one token per live row per step until all finish."""
        from transformers import DynamicCache

        model = self.loaded.model
        device = self.loaded.device
        pad = self.tokenizer.pad_token_id
        width = max(len(s.prompt_ids) for s in states)
        input_ids = torch.full((len(states), width), pad, dtype=torch.long)
        mask = torch.zeros((len(states), width), dtype=torch.long)
        for row, state in enumerate(states):
            n = len(state.prompt_ids)
            input_ids[row, width - n :] = torch.tensor(state.prompt_ids)
            mask[row, width - n :] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=model.config)
        live = list(range(len(states)))  # indices into `states` of rows still in the batch

        while True:
            extra: dict[str, Any] = {}
            if self.loaded.unmerged_adapters:
                extra["adapter_names"] = [adapters[i] for i in live]
            out = model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
                **extra,
            )
            logits = out.logits[:, -1, :].float()
            keep: list[int] = []
            tokens: list[int] = []
            for row, index in enumerate(live):
                if is_cancelled(index):
                    continue
                state = states[index]
                token = state.sample(logits[row])
                on_delta(index, state.append(token))
                if state.finish_reason is None:
                    keep.append(row)
                    tokens.append(token)
            if not keep:
                return
            if len(keep) < len(live):
                rows = torch.tensor(keep, device=device)
                cache.batch_select_indices(rows)
                mask, positions = mask[rows], positions[rows]
                live = [live[row] for row in keep]
            input_ids = torch.tensor(tokens, device=device).unsqueeze(-1)
            mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=-1)
            positions = positions[:, -1:] + 1

    def _run_perplexity(self, job: _PerplexityJob) -> None:
        if job.future.cancelled():
            return
        try:
            model = self.loaded.model
            results = []
            for ids, lead in job.sequences:
                extra: dict[str, Any] = {}
                if self.loaded.unmerged_adapters:
                    extra["adapter_names"] = [job.adapter]
                nll = mean_nll(model, ids, lead, self.loaded.device, **extra)
                results.append((nll, len(ids) - lead))
            job.future.set_result(results)
        except Exception as exc:
            logger.exception("perplexity job failed")
            job.future.set_exception(exc)
