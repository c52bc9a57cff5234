"""The text engine: one thread drives the scheduler, the model runner and the sampler.

Requests are tokenized and checked on the caller's side (``prepare``), admitted against the
queue bound (``submit``), then handed to the engine thread. Every step the thread takes in new
requests, drops cancelled ones (their KV pages are free at once), asks the scheduler for the
step (which requests join, which prompt chunks run, which rows decode), runs it through the
model runner, samples every row's token in one batched call, and pushes each row's new text to
its caller. Requests join and leave between any two steps.

The parts, one file each: ``scheduler.py``, ``kv_cache.py``, ``model_runner.py`` (with the lean
Llama of ``llama.py`` and the attention of ``attention.py``), ``sampler.py``; ``sequence.py``
holds the state that flows between them.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import secrets
import threading
import time
from collections.abc import AsyncIterator
from collections.abc import Sequence as Seq
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from jinja2 import TemplateError

from services.common.errors import ArticleforgeError, InvalidRequest, NotFound, Overloaded
from services.common.handles import EngineHandle
from services.text import metrics
from services.text.config import TextSettings
from services.text.kv_cache import CacheShape, KVCacheManager, pages_from_memory
from services.text.llama import LeanLlama, StepInputs, Unsupported
from services.text.loading import BASE_ADAPTER, LoadedModel
from services.text.model_runner import HFRunner, NativeRunner
from services.text.perplexity import encode_scored
from services.text.sampler import Sampler
from services.text.sampling import DecodeState, FinishReason
from services.text.scheduler import Scheduler, StepPlan
from services.text.schemas import MAX_SEED, Prompt, SamplingParams, Usage
from services.text.sequence import Phase, Sequence

logger = logging.getLogger(__name__)


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
        # Unmerged adapters, by index: 0 is the base model, k the k-th adapter.
        self.adapters = [BASE_ADAPTER] + list(
            dict.fromkeys(a for a in loaded.served.values() if a != BASE_ADAPTER)
        )
        self.context = loaded.context_window
        self.runner: NativeRunner | HFRunner | None = None  # built by warmup()
        self.kv: KVCacheManager | None = None
        self.scheduler: Scheduler | None = None
        self.sampler: Sampler | None = None
        self._last = torch.zeros(0, dtype=torch.int64)
        self._pending: tuple[list[Sequence], torch.Tensor, Any] | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def warmup(self) -> None:
        """Builds the runner, sizes and allocates the KV cache, captures the decode graphs,
        and runs one small request end to end, all before the engine thread starts."""
        started = time.monotonic()
        settings, loaded = self.settings, self.loaded
        device = loaded.device
        rows = settings.text_max_batch_size
        lora = len(self.adapters) > 1
        model: LeanLlama | None = None
        if settings.text_runner != "hf":
            try:
                fp8 = settings.text_quantization == "fp8"
                model = LeanLlama(loaded.model, self.adapters[1:], self.context, fp8)
            except Unsupported as exc:
                if settings.text_quantization == "fp8":
                    raise ValueError(
                        f"ARTICLEFORGE_TEXT_QUANTIZATION=fp8 runs in the native runner only, "
                        f"which cannot run this model: {exc}; use none or nf4"
                    ) from exc
                if settings.text_runner == "native":
                    raise ValueError(
                        f"ARTICLEFORGE_TEXT_RUNNER=native cannot run this model: {exc}; use "
                        "ARTICLEFORGE_TEXT_RUNNER=auto or hf"
                    ) from exc
                logger.info("text engine: %s needs the HF model code (%s)", loaded.base_name, exc)
        if model is not None:
            shape = CacheShape(len(model.layers), model.kv_heads, model.head_dim, model.dtype)
            pages = self._cache_pages(model, shape)
            self.kv = KVCacheManager(
                shape, pages, settings.text_kv_page_size, device, settings.text_prefix_cache
            )
            self.runner = NativeRunner(model, self.kv, rows, self.context, lora)
            vocab = model.vocab
        else:
            shape = CacheShape(0, 0, 0, torch.float32)  # accounting only; HF keeps the tensors
            pages = self._cache_pages(None, shape)
            self.kv = KVCacheManager(shape, pages, settings.text_kv_page_size, device)
            if settings.text_prefix_cache:
                logger.info("text engine: prefix cache off (HF runner: a cache per request)")
            names = self.adapters if lora else None
            self.runner = HFRunner(loaded.model, device, names)
            vocab = int(loaded.model.config.vocab_size)
        self.scheduler = Scheduler(self.kv, rows, settings.text_prefill_chunk_tokens)
        self.sampler = Sampler(rows, vocab, device)
        self._last = torch.zeros(rows, dtype=torch.int64, device=device)  # per sampler slot
        if (
            device.type == "cuda"
            and settings.text_cuda_graphs
            and isinstance(self.runner, NativeRunner)
        ):
            try:
                self.runner.capture()
            except Exception:  # e.g. a quantized kernel that cannot be captured
                logger.exception("text engine: CUDA graph capture failed; decode runs eagerly")
                self.runner.drop_graphs()
        self._run_warmup_request()
        metrics.KV_CAPACITY.set(self.kv.capacity_tokens)
        logger.info(
            "text engine: %s runner, %d rows, %d KV tokens, ready in %.1fs",
            "native" if model is not None else "hf",
            rows,
            self.kv.capacity_tokens,
            time.monotonic() - started,
        )

    def _cache_pages(self, model: LeanLlama | None, shape: CacheShape) -> int:
        settings = self.settings
        page = settings.text_kv_page_size
        rows = settings.text_max_batch_size
        most = rows * -(-self.context // page) + 1  # more than every row at full context is waste
        if settings.text_kv_cache_tokens is not None:
            return min(most, -(-settings.text_kv_cache_tokens // page) + 1)
        device = self.loaded.device
        if device.type == "cuda" and model is not None:
            # Measure a full-size step's activations before giving the rest to the cache.
            torch.cuda.reset_peak_memory_stats(device)
            n = min(settings.text_prefill_chunk_tokens, self.context)
            ids = torch.randint(0, model.vocab, (n,), device=device)
            model.forward(
                ids, torch.arange(n, device=device), StepInputs(slots=None), None, None, None
            )
            torch.cuda.synchronize(device)
            pages = pages_from_memory(shape, page, device, settings.text_gpu_memory_utilization)
            return min(most, pages)
        per_token = max(1, shape.bytes_per_token)
        return min(most, max(2, (2**30 // per_token) // page + 1))

    def _warmup_sequence(self, ids: list[int], new_tokens: int) -> Sequence:
        params = SamplingParams(max_new_tokens=new_tokens, temperature=0.7, top_p=0.9)
        return Sequence(
            handle=None,
            prompt_ids=ids,
            params=params,
            max_new_tokens=new_tokens,
            seed=0,
            adapter_index=0,
            state=DecodeState(self.tokenizer, ids, params, new_tokens, self.eos_ids),
            arrival=time.monotonic(),
        )

    def _run_warmup_request(self) -> None:
        """One request end to end, then the shapes of first real traffic: prompt chunks
        beside decoding rows (mixed steps), a prompt longer than a chunk, and a prompt whose
        prefix is cached (prefill attention over cached pages), so that their one-off costs
        (kernel specializations, library plans, allocator growth) are paid before /readyz."""
        assert self.scheduler is not None and self.kv is not None
        seq = self._warmup_sequence(list(self.tokenizer("warm up").input_ids), 2)
        self.scheduler.add(seq)
        while seq.phase is not Phase.DONE or self._pending is not None:
            self._step()
        chunk = self.settings.text_prefill_chunk_tokens
        longest = min(self.context - 8, chunk + 16, self.kv.capacity_tokens // 4 - 8)
        if longest < 32 or not isinstance(self.runner, NativeRunner):
            return
        vocab = self.runner.model.vocab
        gen = torch.Generator().manual_seed(0)

        def ids(n: int) -> list[int]:
            return torch.randint(3, vocab, (n,), generator=gen).tolist()

        stream = self._warmup_sequence(ids(8), 8)
        self.scheduler.add(stream)
        while stream.phase is not Phase.DECODE:
            self._step()
        shared = ids(longest // 2)
        burst = [
            self._warmup_sequence(shared + ids(longest // 4), 4),
            self._warmup_sequence(ids(longest), 4),
            self._warmup_sequence(shared + ids(longest // 8), 4),  # a hit on the first's pages
        ]
        for seq in burst:
            self.scheduler.add(seq)
        while any(s.phase is not Phase.DONE for s in [stream, *burst]) or self._pending:
            self._step()

    def start(self) -> None:
        """Starts the engine thread (warming up first, on this thread, if nobody has)."""
        if self.runner is None:
            self.warmup()
        self._thread = threading.Thread(target=self._loop, name="text-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stopping = True
        self._work.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)

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
        try:
            rendered = self.tokenizer.apply_chat_template(
                prompt.messages, tokenize=False, add_generation_prompt=True
            )
        except TemplateError as exc:  # e.g. Llama-2's template: roles must alternate
            raise InvalidRequest(
                f"the model's chat template refuses these messages: {exc}", param=prompt.param
            ) from exc
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
        if not ids:
            raise InvalidRequest(
                f"{prompt.param} renders to an empty prompt (0 tokens); give some text to "
                "continue, or at least one user message",
                param=prompt.param,
            )
        limit = self.settings.text_max_input_tokens
        if len(ids) > limit:
            raise InvalidRequest(
                f"the prompt is {len(ids)} tokens long; the limit is {limit} tokens "
                "(ARTICLEFORGE_TEXT_MAX_INPUT_TOKENS)",
                param=prompt.param,
            )
        context = self.context
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
        capacity = self.kv.capacity_tokens if self.kv is not None else None
        if capacity is not None and len(ids) + max_new > capacity:
            raise InvalidRequest(
                f"the prompt ({len(ids)} tokens) plus {max_param} ({max_new}) needs more KV "
                f"cache than this service holds ({capacity} tokens, "
                "ARTICLEFORGE_TEXT_KV_CACHE_TOKENS / ARTICLEFORGE_TEXT_GPU_MEMORY_UTILIZATION)",
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
        self, texts: Seq[str], contexts: Seq[str] | None, model: str | None
    ) -> tuple[str, _PerplexityJob]:
        name, adapter = self.resolve_model(model)
        sequences = []
        for i, text in enumerate(texts):
            ids, lead = encode_scored(self.tokenizer, text, contexts[i] if contexts else None)
            if len(ids) <= lead:
                raise InvalidRequest(f"texts[{i}] has no tokens to score", param=f"texts.{i}")
            if len(ids) > self.context:
                raise InvalidRequest(
                    f"texts[{i}] is {len(ids)} tokens long with its context; the model's "
                    f"context window is {self.context} tokens",
                    param=f"texts.{i}",
                )
            sequences.append((ids, lead))
        return name, _PerplexityJob(adapter, sequences)

    async def perplexity(self, job: _PerplexityJob) -> list[tuple[float, int]]:
        self._work.put(job)
        return await asyncio.wrap_future(job.future)

    # --- the engine thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        assert self.scheduler is not None
        while not self._stopping:
            self._intake(block=not self.scheduler.busy and self._pending is None)
            if self._stopping:
                break
            self._drop_cancelled()
            if self.scheduler.busy or self._pending is not None:
                self._step()
        self._fail_pending()

    def _intake(self, block: bool) -> None:
        """Takes in what callers sent; when idle, waits for a request and briefly for company."""
        assert self.scheduler is not None
        deadline = None
        while True:
            try:
                if block and deadline is None:
                    item = self._work.get()
                elif block and deadline is not None:
                    item = self._work.get(timeout=max(0.0, deadline - time.monotonic()))
                else:
                    item = self._work.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self._stopping = True
                return
            if isinstance(item, _PerplexityJob):
                self._run_perplexity(item)
                continue
            self._add(item)
            if block and deadline is None:
                deadline = time.monotonic() + self.settings.text_batch_wait_ms / 1000
            if len(self.scheduler.waiting) >= self.settings.text_max_batch_size:
                return

    def _add(self, handle: RequestHandle) -> None:
        assert self.scheduler is not None
        request = handle.request
        seq = Sequence(
            handle=handle,
            prompt_ids=request.prompt_ids,
            params=request.params,
            max_new_tokens=request.max_new_tokens,
            seed=request.seed,
            adapter_index=self.adapters.index(request.adapter),
            state=DecodeState(
                self.tokenizer,
                request.prompt_ids,
                request.params,
                request.max_new_tokens,
                self.eos_ids,
            ),
            arrival=request.arrival,
        )
        self.scheduler.add(seq)

    def _drop_cancelled(self) -> None:
        assert self.scheduler is not None
        for seq in [*self.scheduler.waiting, *self.scheduler.running]:
            if seq.handle is not None and seq.handle.cancelled.is_set():
                if seq.phase is Phase.WAITING:
                    self._left_queue(1)
                self._retire(seq)
                metrics.RUNNING.set(len(self.scheduler.running))
                metrics.KV_USAGE.set(self.scheduler.kv.usage)

    def _left_queue(self, count: int) -> None:
        with self._lock:
            self._waiting -= count
            metrics.QUEUE_DEPTH.set(self._waiting)

    def _retire(self, seq: Sequence) -> None:
        """Frees everything a request holds: pages, sampler slot, runner state."""
        assert self.scheduler is not None and self.sampler is not None and self.runner is not None
        self.scheduler.finish(seq)
        self.sampler.release(seq.slot)
        seq.slot = -1
        self.runner.release(seq)

    def _fail_pending(self) -> None:
        error = ArticleforgeError("the text service is shutting down")
        if self.scheduler is not None:
            for seq in [*self.scheduler.waiting, *self.scheduler.running]:
                if seq.handle is not None:
                    seq.handle.push("error", error)
                    self.release(seq.handle, "error")
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, RequestHandle):
                item.push("error", error)
                self.release(item, "error")

    def _step(self) -> None:
        """One engine step, pipelined one deep: schedule step t, launch it on the device, and
        while it runs hand out the tokens of step t-1 (detokenize, stop strings, push).

        Nothing the scheduler or the runner needs depends on token values: each decode row
        reads its input token from the device (``_last``, per sampler slot), and a row that
        turns out to have stopped at t-1 costs one discarded token at t.
        """
        assert self.scheduler is not None and self.sampler is not None and self.runner is not None
        step_start = time.monotonic()
        plan = self.scheduler.schedule()
        for seq in plan.admitted:
            seq.slot = self.sampler.acquire(seq.prompt_ids)
            seq.started = step_start
        if plan.admitted:
            metrics.BATCH_SIZE.observe(len(plan.admitted))
            self._left_queue(sum(1 for s in plan.admitted if s.handle is not None))
            for seq in plan.admitted:
                if seq.handle is not None:
                    metrics.PROMPT_TOKENS.inc(seq.prompt_len)
                    if seq.cached_tokens:
                        metrics.PREFIX_CACHE_HIT_TOKENS.inc(seq.cached_tokens)
                        metrics.PREFIX_CACHE_HITS.inc()
        launched = None
        if not plan.empty:
            try:
                launched = self._launch(plan)
            except Exception as exc:  # a failed step fails its requests, not the engine
                rows = len(plan.decode) + len(plan.prefill)
                logger.exception("text step of %d rows failed", rows)
                self._fail(plan, exc)
            self.scheduler.advance(plan)
            metrics.PREFILL_CHUNKS.inc(len(plan.prefill))
        pending, self._pending = self._pending, launched
        if pending is not None:
            self._hand_out(*pending)
        elif plan.empty:
            time.sleep(0.001)  # the head of the queue waits for KV pages to free up
            return
        if not plan.empty:  # a hand-out alone (the last step's tokens) is no step
            kind = "mixed" if plan.prefill else "decode"
            metrics.STEP_SECONDS.labels(kind).observe(time.monotonic() - step_start)
        metrics.RUNNING.set(len(self.scheduler.running))
        metrics.KV_USAGE.set(self.scheduler.kv.usage)

    def _launch(self, plan: StepPlan) -> tuple[list[Sequence], torch.Tensor, Any] | None:
        """Runs the step on the device and starts copying its tokens to the host."""
        assert self.sampler is not None and self.runner is not None
        logits = self.runner.run(plan, self._last)
        rows = plan.sampled
        if not rows:
            return None
        batch = self.sampler.batch(
            [s.params for s in rows],
            [s.slot for s in rows],
            [s.seed for s in rows],
            [s.sampled for s in rows],
        )
        for seq in rows:
            seq.sampled += 1
        tokens = self.sampler.sample(logits, batch)
        self.sampler.record(batch.slots, tokens)
        self._last[batch.slots] = tokens
        if tokens.device.type != "cuda":
            return rows, tokens, None
        host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        host.copy_(tokens, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return rows, host, done

    def _hand_out(self, rows: list[Sequence], tokens: torch.Tensor, done: Any) -> None:
        """The host side of a finished step: new text to each caller, finished requests out."""
        if done is not None:
            done.synchronize()  # the step's one device-to-host copy
        now = time.monotonic()
        values = tokens.tolist()
        metrics.GENERATED_TOKENS.inc(len(values))
        for seq, token in zip(rows, values, strict=True):
            if seq.phase is Phase.DONE:
                continue  # stopped or cancelled while this token was being made
            seq.output_ids.append(token)
            if seq.first_token_at is None:
                seq.first_token_at = now
                if seq.handle is not None:
                    metrics.TIME_TO_FIRST_TOKEN.observe(now - seq.arrival)
            delta = seq.state.append(token)
            cancelled = seq.handle is not None and seq.handle.cancelled.is_set()
            if delta and seq.handle is not None and not cancelled:
                seq.handle.push("update", delta)
            if seq.state.finish_reason is not None:
                self._retire(seq)
                if seq.handle is not None and not cancelled:
                    self._finish(seq, now)

    def _fail(self, plan: StepPlan, exc: Exception) -> None:
        """Fails the step's rows, and every request that shares a page this step was to fill
        (its keys are dropped first: the page holds garbage)."""
        assert self.scheduler is not None
        self.scheduler.kv.forget(plan.hashed)
        rows = [*plan.decode, *(c.seq for c in plan.prefill)]
        rows += self.scheduler.holders(plan.hashed)
        for seq in dict.fromkeys(rows):
            if seq.phase is Phase.DONE:
                continue
            self._retire(seq)
            if seq.handle is not None and not seq.handle.cancelled.is_set():
                seq.handle.push("error", ArticleforgeError(f"generation failed: {exc}"))
                self.release(seq.handle, "error")

    def _finish(self, seq: Sequence, end: float) -> None:
        handle = seq.handle
        request = handle.request
        started = seq.started or end
        assert seq.state.finish_reason is not None
        result = GenerationResult(
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
        handle.push("done", result)
        self.release(handle, "success")
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

    def _run_perplexity(self, job: _PerplexityJob) -> None:
        if job.future.cancelled():
            return
        assert self.runner is not None
        try:
            index = self.adapters.index(job.adapter)
            results = [
                (self.runner.score(ids, lead, index), len(ids) - lead)
                for ids, lead in job.sequences
            ]
            job.future.set_result(results)
        except Exception as exc:
            logger.exception("perplexity job failed")
            job.future.set_exception(exc)
