"""The model runner: turns a scheduled step into one forward and returns the rows' logits.

``NativeRunner`` drives the lean Llama (``llama.py``) over the paged cache. A step with prompt
chunks runs eagerly (it is dominated by the chunk's matmuls, so launch overhead hides). A pure
decode step replays a CUDA graph captured at warm-up for the smallest batch-size bucket that
holds it; the rows are copied into the graph's static input buffers and padded rows write to
the cache's scratch page.

``HFRunner`` runs any other architecture through the transformers model, one sequence at a
time with its own ``DynamicCache``: slower, but on the same scheduler and sampler.

``build_runner`` picks one for the model and the settings (``ARTICLEFORGE_TEXT_RUNNER``), sizes
and allocates the KV cache (after a full-size forward on CUDA, so that the cache gets what the
activations leave), and captures the decode graphs, as nano-vllm's model runner does at start.

Names: a request's ``row`` is its row of the sampler's tables and of ``last`` (the latest token
per row, on the device); a ``slot`` is a flat KV-cache index; a ``block table`` is a request's
pages, padded to the graphs' full width.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from services.text.attention import KV_FP8, splits_for, triton_available
from services.text.config import TextSettings
from services.text.device import to_device
from services.text.kv_cache import CacheShape, KVCacheManager, size_pages
from services.text.llama import LeanLlama, Segment, StepInputs, Unsupported
from services.text.loading import BASE_ADAPTER, LoadedModel
from services.text.perplexity import mean_nll, nll_of
from services.text.request import GenerationRequest
from services.text.scheduler import StepPlan
from services.text.schemas import SamplingParams
from services.text.sequence import Phase, SeqState

logger = logging.getLogger(__name__)


def graph_buckets(max_rows: int) -> list[int]:
    """1, 2, 4, 8, then every 8 up to 64, then every 16: a padded row costs little."""
    sizes = [1, 2, 4, 8]
    while sizes[-1] < max_rows:
        sizes.append(sizes[-1] + (8 if sizes[-1] < 64 else 16))
    return sorted({min(s, max_rows) for s in sizes})


class NativeRunner:
    def __init__(
        self, model: LeanLlama, kv: KVCacheManager, max_rows: int, context: int, lora: bool
    ) -> None:
        self.model = model
        self.kv = kv
        self.device = model.device
        self.max_rows = max_rows
        self.max_pages = kv.pages_for(context)
        self.lora = lora
        cuda = self.device.type == "cuda"
        self.triton = cuda and triton_available()
        self.sms = (
            torch.cuda.get_device_properties(self.device).multi_processor_count if cuda else 0
        )
        self.graphs: dict[int, Any] = {}
        self._outputs: dict[int, torch.Tensor] = {}
        self._tables: dict[int, torch.Tensor] = {}  # id(seq) -> its block table
        self._bucket_for: dict[int, int] = {}  # decode rows -> the graph that holds them

    # --- building a step's inputs -------------------------------------------------------

    def _block_table(self, seq: SeqState) -> torch.Tensor:
        """The sequence's pages padded to the graphs' full table width (cached)."""
        table = self._tables.get(id(seq))
        if table is None:
            table = self._tables[id(seq)] = torch.zeros(self.max_pages, dtype=torch.int32)
            table[: len(seq.pages)] = torch.tensor(seq.pages, dtype=torch.int32)
        return table

    def release(self, seq: SeqState) -> None:
        self._tables.pop(id(seq), None)

    def _slots(self, seq: SeqState, start: int, stop: int) -> torch.Tensor:
        positions = torch.arange(start, stop)
        size = self.kv.page_size
        return self._block_table(seq)[positions // size].long() * size + positions % size

    def _splits(self, rows: int) -> int:
        return splits_for(rows, self.model.heads, self.sms) if self.triton else 0

    def run(self, plan: StepPlan, last: torch.Tensor) -> torch.Tensor:
        """Logits ``[len(plan.sampled), vocab]``, rows in ``plan.sampled`` order.

        ``last`` holds on the device, per sampler row, each request's latest token: the
        input of its decode row, which the host may not have seen yet.
        """
        if not plan.prefill and len(plan.decode) in self._bucket_for:
            return self._replay(plan.decode, last)
        ids: list[int] = []
        positions: list[torch.Tensor] = []
        slots: list[torch.Tensor] = []
        adapters: list[int] = []
        for seq in plan.decode:
            positions.append(torch.tensor([seq.num_cached]))
            slots.append(self._slots(seq, seq.num_cached, seq.num_cached + 1))
            adapters.append(seq.adapter_index)
        n = len(plan.decode)
        segments, rows = [], list(range(n))
        last_rows = torch.tensor([s.row for s in plan.decode], dtype=torch.int64)
        for chunk in plan.prefill:
            seq, start, stop = chunk.seq, chunk.start, chunk.start + chunk.length
            offset = n + len(ids)
            ids.extend(seq.prompt_ids[start:stop])
            positions.append(torch.arange(start, stop))
            slots.append(self._slots(seq, start, stop))
            adapters.extend([seq.adapter_index] * chunk.length)
            prefix = to_device(self._slots(seq, 0, stop), self.device) if start else None
            segments.append(Segment(offset, chunk.length, start, prefix))
            if chunk.completes_prompt:
                rows.append(offset + chunk.length - 1)
        inputs = StepInputs(
            slots=to_device(torch.cat(slots), self.device),
            num_decode=n,
            segments=segments,
            splits=self._splits(n),
            lora_rows=to_device(torch.tensor(adapters, dtype=torch.int64), self.device)
            if self.lora
            else None,
        )
        if n:
            # Full-width rows, as in the graphs: the Triton decode kernel is specialized on the
            # table's stride, so a width of its own per step would compile new variants.
            table = torch.stack([self._block_table(s) for s in plan.decode])
            inputs.block_tables = to_device(table, self.device)
            lengths = [s.num_cached + 1 for s in plan.decode]
            inputs.lengths = to_device(torch.tensor(lengths, dtype=torch.int32), self.device)
        tokens = to_device(torch.tensor(ids, dtype=torch.int64), self.device)
        if n:
            tokens = torch.cat([last[to_device(last_rows, self.device)], tokens])
        return self.model.forward(
            tokens,
            to_device(torch.cat(positions), self.device),
            inputs,
            self.kv.keys,
            self.kv.values,
            to_device(torch.tensor(rows, dtype=torch.int64), self.device),
        )

    # --- CUDA graphs for decode steps -----------------------------------------------------

    def capture(self) -> None:
        """Captures one decode graph per batch-size bucket (largest first, one memory pool)."""
        started = time.monotonic()
        rows, width = self.max_rows, self.max_pages
        dev = self.device
        self._ids = torch.zeros(rows, dtype=torch.int64, device=dev)
        self._rows_in = torch.zeros(rows, dtype=torch.int64, device=dev)
        self._positions = torch.zeros(rows, dtype=torch.int64, device=dev)
        self._slot_buf = torch.zeros(rows, dtype=torch.int64, device=dev)
        self._table_buf = torch.zeros((rows, width), dtype=torch.int32, device=dev)
        self._lengths = torch.ones(rows, dtype=torch.int32, device=dev)
        self._lora_buf = torch.zeros(rows, dtype=torch.int64, device=dev)
        self._empty_table = torch.zeros(width, dtype=torch.int32)
        pool = torch.cuda.graph_pool_handle()
        buckets = graph_buckets(rows)
        for size in reversed(buckets):
            inputs = self._graph_inputs(size)
            args = (self._ids[:size], self._positions[:size], inputs, self.kv.keys, self.kv.values)
            self.model.forward(*args, None)  # warm-up: compiles the Triton kernel for this shape
            torch.cuda.synchronize(dev)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._outputs[size] = self.model.forward(*args, None)
            self.graphs[size] = graph
        torch.cuda.synchronize(dev)
        for n in range(1, rows + 1):
            self._bucket_for[n] = next(b for b in buckets if b >= n)
        logger.info(
            "text engine: captured %d decode graphs (batch %s) in %.1fs",
            len(buckets),
            ",".join(map(str, buckets)),
            time.monotonic() - started,
        )

    def drop_graphs(self) -> None:
        self.graphs.clear()
        self._outputs.clear()
        self._bucket_for.clear()
        torch.cuda.synchronize(self.device)

    def _graph_inputs(self, size: int) -> StepInputs:
        return StepInputs(
            slots=self._slot_buf[:size],
            num_decode=size,
            block_tables=self._table_buf[:size],
            lengths=self._lengths[:size],
            splits=self._splits(size),
            lora_rows=self._lora_buf[:size] if self.lora else None,
        )

    def _replay(self, decode: list[SeqState], last: torch.Tensor) -> torch.Tensor:
        n = len(decode)
        size = self._bucket_for[n]
        pad = size - n  # padded rows attend to one scratch token on page 0
        host = torch.tensor(
            [
                [s.row for s in decode] + [0] * pad,
                [s.num_cached for s in decode] + [0] * pad,
                [self.kv.slot(s.pages, s.num_cached) for s in decode] + [0] * pad,
                [s.num_cached + 1 for s in decode] + [1] * pad,
                [s.adapter_index for s in decode] + [0] * pad,
            ]
        ).pin_memory()  # fresh pinned memory: the allocator reuses it only after the copy
        tables = [self._block_table(s) for s in decode] + [self._empty_table] * pad
        table = torch.stack(tables).pin_memory()
        self._rows_in[:size].copy_(host[0, :size], non_blocking=True)
        torch.index_select(last, 0, self._rows_in[:size], out=self._ids[:size])
        self._positions[:size].copy_(host[1, :size], non_blocking=True)
        self._slot_buf[:size].copy_(host[2, :size], non_blocking=True)
        self._lengths[:size].copy_(host[3, :size], non_blocking=True)
        self._lora_buf[:size].copy_(host[4, :size], non_blocking=True)
        self._table_buf[:size].copy_(table[:size], non_blocking=True)
        self.graphs[size].replay()
        return self._outputs[size][:n]

    # --- perplexity -----------------------------------------------------------------------

    @torch.inference_mode()
    def score(self, ids: list[int], lead: int, adapter_index: int) -> float:
        tensor = torch.tensor(ids, device=self.device)
        positions = torch.arange(len(ids), device=self.device)
        rows = torch.full((len(ids),), adapter_index, device=self.device) if self.lora else None
        inputs = StepInputs(slots=None, lora_rows=rows)
        return nll_of(self.model.forward(tensor, positions, inputs, None, None, None), tensor, lead)


class HFRunner:
    """Any causal LM through transformers: per-sequence caches, rows run one at a time."""

    def __init__(self, model: Any, device: torch.device, adapter_names: list[str] | None) -> None:
        self.model = model
        self.device = device
        self.adapter_names = adapter_names  # index -> peft name; None without unmerged adapters
        self._caches: dict[int, Any] = {}

    def release(self, seq: SeqState) -> None:
        self._caches.pop(id(seq), None)

    def _forward(self, seq: SeqState, ids: list[int], start: int) -> torch.Tensor:
        from transformers import DynamicCache

        cache = self._caches.get(id(seq))
        if cache is None:
            cache = self._caches[id(seq)] = DynamicCache(config=self.model.config)
        extra: dict[str, Any] = {}
        if self.adapter_names is not None:
            extra["adapter_names"] = [self.adapter_names[seq.adapter_index]]
        out = self.model(
            input_ids=torch.tensor([ids], device=self.device),
            position_ids=torch.arange(start, start + len(ids), device=self.device)[None],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **extra,
        )
        return out.logits[0, -1]

    @torch.inference_mode()
    def run(self, plan: StepPlan, last: torch.Tensor) -> torch.Tensor:
        rows_in = torch.tensor([s.row for s in plan.decode], dtype=torch.int64, device=last.device)
        inputs = last[rows_in].tolist()
        rows = [
            self._forward(s, [token], s.num_cached)
            for s, token in zip(plan.decode, inputs, strict=True)
        ]
        for chunk in plan.prefill:
            seq, stop = chunk.seq, chunk.start + chunk.length
            logits = self._forward(seq, seq.prompt_ids[chunk.start : stop], chunk.start)
            if chunk.completes_prompt:
                rows.append(logits)
        if not rows:  # only prompt chunks that leave their prompt unfinished
            return torch.empty((0, self.model.config.vocab_size), device=self.device)
        return torch.stack(rows)

    def capture(self) -> None:
        """No graphs on this path."""

    def score(self, ids: list[int], lead: int, adapter_index: int) -> float:
        extra: dict[str, Any] = {}
        if self.adapter_names is not None:
            extra["adapter_names"] = [self.adapter_names[adapter_index]]
        return mean_nll(self.model, ids, lead, self.device, **extra)


Runner = NativeRunner | HFRunner


def warmup_waves(
    runner: Runner, kv: KVCacheManager, loaded: LoadedModel, chunk: int
) -> list[tuple[list[SeqState], Phase]]:
    """The engine's warm-up traffic, in waves: the engine adds a wave's new requests and steps
    until all of the wave reach its phase. One request end to end; then (native runner, room
    permitting) a stream that decodes beside a burst of a prompt longer than a chunk and two
    that share a cached prefix, so that mixed steps and prefill attention over cached pages pay
    their one-off costs (kernel specializations, library plans, allocator growth) before
    /readyz."""

    def seq(ids: list[int], new_tokens: int) -> SeqState:
        params = SamplingParams(max_new_tokens=new_tokens, temperature=0.7, top_p=0.9)
        request = GenerationRequest("warmup", ids, params, new_tokens, 0, "", BASE_ADAPTER)
        return SeqState.of(None, request, 0, loaded.tokenizer, loaded.eos_ids)

    first = seq(list(loaded.tokenizer("warm up").input_ids), 2)
    longest = min(loaded.context_window - 8, chunk + 16, kv.capacity_tokens // 4 - 8)
    if longest < 32 or not isinstance(runner, NativeRunner):
        return [([first], Phase.DONE)]
    vocab, gen = runner.model.vocab, torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=gen).tolist()

    stream, shared = seq(ids(8), 8), ids(longest // 2)
    burst = [
        seq(shared + ids(longest // 4), 4),
        seq(ids(longest), 4),
        seq(shared + ids(longest // 8), 4),  # a hit on the first's pages
    ]
    return [([first], Phase.DONE), ([stream], Phase.DECODE), ([stream, *burst], Phase.DONE)]


def _lean_model(
    settings: TextSettings, loaded: LoadedModel, adapters: list[str], context: int
) -> LeanLlama | None:
    """The lean Llama of this model, or None where the HF code must run it."""
    if settings.text_runner == "hf":
        return None
    try:
        fp8 = settings.text_quantization == "fp8"
        return LeanLlama(loaded.model, adapters[1:], context, fp8)
    except Unsupported as exc:
        if settings.text_quantization == "fp8":
            raise ValueError(
                f"ARTICLEFORGE_TEXT_QUANTIZATION=fp8 runs in the native runner only, "
                f"which cannot run this model: {exc}; use none or nf4"
            ) from exc
        if settings.text_kv_cache_dtype == "fp8":
            raise ValueError(
                f"ARTICLEFORGE_TEXT_KV_CACHE_DTYPE=fp8 runs in the native runner only, "
                f"which cannot run this model: {exc}; use auto"
            ) from exc
        if settings.text_runner == "native":
            raise ValueError(
                f"ARTICLEFORGE_TEXT_RUNNER=native cannot run this model: {exc}; use "
                "ARTICLEFORGE_TEXT_RUNNER=auto or hf"
            ) from exc
        logger.info("text engine: %s needs the HF model code (%s)", loaded.base_name, exc)
        return None


def _profile(model: LeanLlama, tokens: int) -> None:
    """A full-size prompt step without a cache, so that the peak memory counts its activations."""
    device = model.device
    torch.cuda.reset_peak_memory_stats(device)
    ids = torch.randint(0, model.vocab, (tokens,), device=device)
    positions = torch.arange(tokens, device=device)
    model.forward(ids, positions, StepInputs(slots=None), None, None, None)
    torch.cuda.synchronize(device)


def build_runner(settings: TextSettings, loaded: LoadedModel) -> tuple[Runner, KVCacheManager, int]:
    """The runner for this model and these settings, with its KV cache sized and allocated and
    (on CUDA) its decode graphs captured; and the vocabulary size the sampler needs."""
    rows, page = settings.text_max_batch_size, settings.text_kv_page_size
    device, context, adapters = loaded.device, loaded.context_window, loaded.adapter_order
    lora = len(adapters) > 1
    model = _lean_model(settings, loaded, adapters, context)
    profile: Callable[[], None] | None = None
    if model is None:  # the HF runner: accounting only, HF keeps the tensors
        shape = CacheShape(0, 0, 0, torch.float32)
    else:
        kv_dtype = KV_FP8 if settings.text_kv_cache_dtype == "fp8" else model.dtype
        shape = CacheShape(len(model.layers), model.kv_heads, model.head_dim, kv_dtype)
        chunk = min(settings.text_prefill_chunk_tokens, context)
        profile = partial(_profile, model, chunk)
    pages = size_pages(
        shape,
        page,
        rows,
        context,
        device,
        settings.text_kv_cache_tokens,
        settings.text_gpu_memory_utilization,
        profile,
    )
    if model is None:
        kv = KVCacheManager(shape, pages, page, device)  # no prefix cache: a cache per request
        hf = HFRunner(loaded.model, device, adapters if lora else None)
        return hf, kv, int(loaded.model.config.vocab_size)
    kv = KVCacheManager(shape, pages, page, device, settings.text_prefix_cache)
    runner = NativeRunner(model, kv, rows, context, lora)
    if device.type == "cuda" and settings.text_cuda_graphs:
        try:
            runner.capture()
        except Exception:  # e.g. a quantized kernel that cannot be captured
            logger.exception("text engine: CUDA graph capture failed; decode runs eagerly")
            runner.drop_graphs()
    return runner, kv, model.vocab
