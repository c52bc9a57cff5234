"""The text engine: one thread drives the scheduler, the model runner and the sampler.

Requests are tokenized and checked on the caller's side (``prepare``, ``request.py``),
admitted against the queue bound (``submit``), then handed to the engine thread. Every step the
thread takes in new requests, drops cancelled ones (their KV pages are free at once), asks the
scheduler for the step (which requests join, which prompt chunks run, which rows decode), runs
it through the model runner, samples every row's token in one batched call, and pushes each
row's new text to its caller. Requests join and leave between any two steps.

The parts, one file each: ``scheduler.py``, ``kv_cache.py``, ``model_runner.py`` (with the lean
Llama of ``llama.py`` and the attention of ``attention.py``; it also picks the runner, sizes the
cache and captures the graphs), ``token_sampler.py``; ``sequence.py`` holds the state that flows
between them, ``decode_state.py`` a request's text and stop strings.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence as Seq
from typing import Any

import torch

from services.common.errors import ArticleforgeError
from services.text import metrics
from services.text.config import TextSettings
from services.text.device import to_host_async
from services.text.kv_cache import KVCacheManager
from services.text.loading import LoadedModel
from services.text.model_runner import NativeRunner, Runner, build_runner, warmup_waves
from services.text.perplexity import PerplexityJob, prepare_job, run_job
from services.text.request import (
    Admission,
    GenerationRequest,
    RequestChecks,
    RequestHandle,
)
from services.text.scheduler import Scheduler, StepPlan
from services.text.schemas import Prompt, SamplingParams
from services.text.sequence import Phase, SeqState
from services.text.token_sampler import Sampler

logger = logging.getLogger(__name__)


class WarmupFailed(RuntimeError):
    """A warm-up step failed: the engine would fail every request the same way, so it never
    reports ready (and warm-up does not wait for a phase that the step will never reach)."""


class TextEngine:
    def __init__(self, settings: TextSettings, loaded: LoadedModel) -> None:
        self.settings = settings
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.eos_ids = loaded.eos_ids
        self.adapters = loaded.adapter_order  # unmerged adapters by index; 0 is the base model
        self.context = loaded.context_window
        self.checks = RequestChecks(settings, loaded, self.context)
        self.admission = Admission(settings.text_max_queue)
        self._work: queue.Queue[RequestHandle | PerplexityJob | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        # The parts, built by warmup() (on a worker thread: it allocates and captures).
        self.runner: Runner
        self.kv: KVCacheManager
        self.scheduler: Scheduler
        self.sampler: Sampler
        self._warm = False
        self._last = torch.zeros(0, dtype=torch.int64)  # per sampler row: its latest token
        self._pending: tuple[list[SeqState], torch.Tensor, Any] | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def warmup(self) -> None:
        """Builds the runner (which sizes the KV cache and captures the decode graphs), then
        runs warm-up traffic end to end, all before the engine thread starts."""
        started = time.monotonic()
        settings, rows = self.settings, self.settings.text_max_batch_size
        self.runner, self.kv, vocab = build_runner(settings, self.loaded)
        self.checks.kv_capacity = self.kv.capacity_tokens
        native = isinstance(self.runner, NativeRunner)
        if settings.text_prefix_cache and not native:
            logger.info("text engine: prefix cache off (HF runner: a cache per request)")
        self.scheduler = Scheduler(self.kv, rows, settings.text_prefill_chunk_tokens)
        self.sampler = Sampler(rows, vocab, self.loaded.device)
        self._last = torch.zeros(rows, dtype=torch.int64, device=self.loaded.device)
        chunk = settings.text_prefill_chunk_tokens
        for wave, phase in warmup_waves(self.runner, self.kv, self.loaded, chunk):
            self._drive(wave, phase)
        metrics.KV_CAPACITY.set(self.kv.capacity_tokens)
        self._warm = True
        logger.info(
            "text engine: %s runner, %d rows, %d KV tokens, ready in %.1fs",
            "native" if native else "hf",
            rows,
            self.kv.capacity_tokens,
            time.monotonic() - started,
        )

    def _drive(self, seqs: list[SeqState], until: Phase) -> None:
        """Steps until every one of ``seqs`` (added if still new) reaches ``until``."""
        for seq in seqs:
            if seq.phase is Phase.WAITING and seq not in self.scheduler.waiting:
                self.scheduler.add(seq)
        drain = until is Phase.DONE  # and hand out the last step's tokens
        while any(s.phase is not until for s in seqs) or (drain and self._pending is not None):
            self._step()

    def start(self) -> None:
        """Starts the engine thread (warming up first, on this thread, if nobody has)."""
        if not self._warm:
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
        return self.checks.resolve_model(name)

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        return self.checks.encode_prompt(prompt)

    def prepare(
        self,
        prompt: Prompt,
        params: SamplingParams,
        model: str | None,
        request_id: str,
        max_param: str = "max_new_tokens",
    ) -> GenerationRequest:
        """Tokenizes and checks a request; raises the 4xx errors before anything is queued."""
        return self.checks.prepare(prompt, params, model, request_id, max_param)

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Admits a prepared request, or raises 429 when the queue is full."""
        self.admission.admit()
        handle = RequestHandle(self, request)
        self._work.put(handle)
        return handle

    def release(self, handle: RequestHandle, status: str) -> None:
        self.admission.release(handle, status)

    def prepare_perplexity(
        self, texts: Seq[str], contexts: Seq[str] | None, model: str | None
    ) -> tuple[str, PerplexityJob]:
        name, adapter = self.resolve_model(model)
        return name, prepare_job(self.tokenizer, self.context, adapter, texts, contexts)

    async def perplexity(self, job: PerplexityJob) -> list[tuple[float, int]]:
        self._work.put(job)
        return await asyncio.wrap_future(job.future)

    # --- the engine thread ---------------------------------------------------------------------

    def _loop(self) -> None:
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
        deadline = None
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._work.get(timeout=wait) if block else self._work.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self._stopping = True
                return
            if isinstance(item, PerplexityJob):
                run_job(item, self.runner, self.adapters)  # between two steps, on this thread
                continue
            self._add(item)
            if block and deadline is None:
                deadline = time.monotonic() + self.settings.text_batch_wait_ms / 1000
            if len(self.scheduler.waiting) >= self.settings.text_max_batch_size:
                return

    def _add(self, handle: RequestHandle) -> None:
        adapter = self.adapters.index(handle.request.adapter)
        self.scheduler.add(
            SeqState.of(handle, handle.request, adapter, self.tokenizer, self.eos_ids)
        )

    def _drop_cancelled(self) -> None:
        for seq in [*self.scheduler.waiting, *self.scheduler.running]:
            if seq.handle is not None and seq.handle.cancelled.is_set():
                if seq.phase is Phase.WAITING:
                    self.admission.left_queue(1)
                self._retire(seq)
                self._gauges()

    def _retire(self, seq: SeqState) -> None:
        """Frees everything a request holds: pages, sampler row, runner state."""
        self.scheduler.finish(seq)
        self.sampler.release(seq.row)
        seq.row = -1
        self.runner.release(seq)

    def _fail_pending(self) -> None:
        error = ArticleforgeError("the text service is shutting down")
        for seq in [*self.scheduler.waiting, *self.scheduler.running]:
            if seq.handle is not None:
                seq.handle.fail(error)
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, RequestHandle):
                item.fail(error)

    def _step(self) -> None:
        """One engine step, pipelined one deep: schedule step t, launch it on the device, and
        while it runs hand out the tokens of step t-1 (detokenize, stop strings, push).

        Nothing the scheduler or the runner needs depends on token values: each decode row
        reads its input token from the device (``_last``, per sampler row), and a row that
        turns out to have stopped at t-1 costs one discarded token at t.
        """
        step_start = time.monotonic()
        plan = self.scheduler.schedule()
        for seq in plan.admitted:
            seq.row = self.sampler.acquire(seq.prompt_ids)
            seq.started = step_start
        if plan.admitted:
            self.admission.scheduled(plan.admitted)
        launched = None
        if not plan.empty:
            try:
                launched = self._launch(plan)
            except Exception as exc:  # a failed step fails its requests, not the engine
                rows = len(plan.decode) + len(plan.prefill)
                if not self._warm:
                    raise WarmupFailed(f"a warm-up step of {rows} rows failed: {exc}") from exc
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
        self._gauges()

    def _gauges(self) -> None:
        metrics.RUNNING.set(len(self.scheduler.running))
        metrics.KV_USAGE.set(self.kv.usage)

    def _launch(self, plan: StepPlan) -> tuple[list[SeqState], torch.Tensor, Any] | None:
        """Runs the step on the device and starts copying its tokens to the host."""
        logits = self.runner.run(plan, self._last)
        rows = plan.sampled
        if not rows:
            return None
        tokens, done = to_host_async(self.sampler.draw(logits, rows, self._last))
        return rows, tokens, done

    def _hand_out(self, rows: list[SeqState], tokens: torch.Tensor, done: Any) -> None:
        """The host side of a finished step: new text to each caller, finished requests out."""
        if done is not None:
            done.synchronize()  # the step's one device-to-host copy
        now = time.monotonic()
        values = tokens.tolist()
        metrics.GENERATED_TOKENS.inc(len(values))
        for seq, token in zip(rows, values, strict=True):
            if seq.phase is Phase.DONE:
                continue  # stopped or cancelled while this token was being made
            if seq.first_token_at is None and seq.handle is not None:
                metrics.TIME_TO_FIRST_TOKEN.observe(now - seq.arrival)
            delta = seq.take(token, now)
            cancelled = seq.handle is not None and seq.handle.cancelled.is_set()
            if delta and seq.handle is not None and not cancelled:
                seq.handle.push("update", delta)
            if seq.state.finish_reason is not None:
                self._retire(seq)
                if seq.handle is not None and not cancelled:
                    seq.handle.finish(seq, now)

    def _fail(self, plan: StepPlan, exc: Exception) -> None:
        """Fails the step's rows, and every request that shares a page this step was to fill
        (its keys are dropped first: the page holds garbage)."""
        self.kv.forget(plan.hashed)
        rows = [*plan.decode, *(c.seq for c in plan.prefill)]
        rows += self.scheduler.holders(plan.hashed)
        for seq in dict.fromkeys(rows):
            if seq.phase is Phase.DONE:
                continue
            self._retire(seq)
            if seq.handle is not None and not seq.handle.cancelled.is_set():
                seq.handle.fail(ArticleforgeError(f"generation failed: {exc}"))
