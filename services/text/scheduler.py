"""The scheduler: every step, which requests join, which prompt chunks run, which rows decode.

Continuous batching in the shape of vLLM v1 and nano-vllm:
* Waiting requests are admitted in arrival order while a batch row is free and the KV cache
  has pages for the whole request (prompt plus ``max_new_tokens``). A request that does not
  fit waits; it is never failed for lack of cache, and nothing is preempted.
* Every step carries one token for each decoding row, plus up to ``chunk_tokens`` prompt tokens
  of admitted requests (a long prompt runs over several steps). So a running stream waits at
  most one chunk's worth of prefill between two of its tokens, and a new request's prefill
  starts at the next step, without waiting for anyone to finish.

With the prefix cache on (``ARTICLEFORGE_TEXT_PREFIX_CACHE``, the default; pages and hash
chain in ``kv_cache.py``; only full pages of prompt tokens are cached, never generated ones),
a step is planned in two passes. First the rows of running requests: decode rows, and prompt
chunks, each chunk registering (hashing) the full prompt pages it completes. Then waiting
requests are admitted one by one; each is matched against the cache's table, which by then
holds the pages planned in this very step, so the five section prompts of one article that
arrive together share their common prefix at once: the lean forward writes every token's K/V
of a layer before any attention of that layer runs, so a chunk may read pages that another
chunk of the same step writes. A page becomes hittable only once the chunk that computes it
is in a plan. An admitted request's prefill starts after its hit (``num_cached``), and the
hit needs no new pages; the engine counts hits in
``articleforge_text_prefix_cache_hit_tokens_total`` and ``..._hits_total``. If the step
fails, ``StepPlan.hashed`` names the pages whose keys must be dropped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from services.text.kv_cache import KVCacheManager
from services.text.sequence import Phase, SeqState


@dataclass
class Chunk:
    seq: SeqState
    start: int
    length: int

    @property
    def completes_prompt(self) -> bool:
        return self.start + self.length == self.seq.prompt_len


@dataclass
class StepPlan:
    decode: list[SeqState] = field(default_factory=list)
    prefill: list[Chunk] = field(default_factory=list)
    admitted: list[SeqState] = field(default_factory=list)
    hashed: list[int] = field(default_factory=list)  # pages this step fills and made hittable

    @property
    def sampled(self) -> list[SeqState]:
        """Rows that get a new token this step: decoders, then prompts that complete."""
        return self.decode + [c.seq for c in self.prefill if c.completes_prompt]

    @property
    def empty(self) -> bool:
        return not self.decode and not self.prefill


class Scheduler:
    def __init__(self, kv: KVCacheManager, max_rows: int, chunk_tokens: int) -> None:
        self.kv = kv
        self.max_rows = max_rows
        self.chunk_tokens = chunk_tokens
        self.waiting: deque[SeqState] = deque()
        self.running: list[SeqState] = []  # admitted, in admission order

    def add(self, seq: SeqState) -> None:
        self.waiting.append(seq)

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        budget = self.chunk_tokens
        for seq in self.running:
            if seq.phase is Phase.DECODE:
                if seq.sampled < seq.max_new_tokens:  # else its last token is on the way
                    plan.decode.append(seq)
            elif seq.phase is Phase.PREFILL and budget > 0:
                budget -= self._plan_chunk(plan, seq, budget)
        while self.waiting and len(self.running) < self.max_rows:
            seq = self.waiting[0]
            if seq.page_keys is None:
                seq.page_keys = self.kv.page_keys(seq.prompt_ids, seq.adapter_index)
            hits = self.kv.match(seq.prompt_ids, seq.page_keys, seq.adapter_index)
            if not self.kv.can_allocate(seq.reserved_tokens, hits):
                break  # first come, first served: later requests do not overtake it
            self.waiting.popleft()
            seq.pages = self.kv.allocate(seq.reserved_tokens, hits)
            seq.num_cached = seq.cached_tokens = len(hits) * self.kv.page_size
            seq.hashed_pages = len(hits)
            seq.phase = Phase.PREFILL
            self.running.append(seq)
            plan.admitted.append(seq)
            if budget > 0:
                budget -= self._plan_chunk(plan, seq, budget)
        return plan

    def _plan_chunk(self, plan: StepPlan, seq: SeqState, budget: int) -> int:
        """Plans the next prompt chunk of ``seq`` and hashes the full pages it completes."""
        length = min(seq.remaining_prompt, budget)
        plan.prefill.append(Chunk(seq, seq.num_cached, length))
        full = min(len(seq.page_keys or ()), (seq.num_cached + length) // self.kv.page_size)
        if full > seq.hashed_pages:
            assert seq.page_keys is not None
            plan.hashed += self.kv.register(
                seq.pages, seq.prompt_ids, seq.page_keys, seq.adapter_index, seq.hashed_pages, full
            )
            seq.hashed_pages = full
        return length

    def advance(self, plan: StepPlan) -> None:
        """After the step ran: the cache holds one more token per row, and the chunks."""
        for seq in plan.decode:
            seq.num_cached += 1
        for chunk in plan.prefill:
            chunk.seq.num_cached += chunk.length
            chunk.seq.prefill_chunks += 1
            if chunk.completes_prompt and chunk.seq.phase is Phase.PREFILL:
                chunk.seq.phase = Phase.DECODE

    def holders(self, pages: list[int]) -> list[SeqState]:
        """Running requests that hold any of ``pages``."""
        wanted = set(pages)
        return [seq for seq in self.running if wanted.intersection(seq.pages)]

    def finish(self, seq: SeqState) -> None:
        """Takes a request out (done or cancelled) and frees its pages at once."""
        if seq.phase is Phase.WAITING:
            self.waiting.remove(seq)
        elif seq in self.running:
            self.running.remove(seq)
        self.kv.free(seq.pages)
        seq.phase = Phase.DONE
