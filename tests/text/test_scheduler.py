"""The scheduler on its own, over a small real KV cache and no model (the prefix cache's part
is in ``test_kv_cache.py``):

* Waiting requests are admitted in arrival order, while a batch row is free and the cache has
  pages for the whole request; the head of the queue that does not fit blocks those behind it.
* A step carries every decoding row plus at most ``chunk_tokens`` prompt tokens: a long prompt
  is prefilled over several steps, running requests' chunks first, and a row whose last token
  is still on the device gets no new decode row.
* ``finish`` takes a request out, waiting or running, and its pages are free at once.
"""

from __future__ import annotations

import time
from typing import cast

import torch

from services.text.decode_state import DecodeState
from services.text.kv_cache import CacheShape, KVCacheManager
from services.text.scheduler import Scheduler, StepPlan
from services.text.schemas import SamplingParams
from services.text.sequence import Phase, SeqState

PAGE = 4


def manager(pages: int) -> KVCacheManager:
    """``pages`` usable pages of PAGE tokens (plus the scratch page 0), no prefix cache."""
    shape = CacheShape(layers=1, kv_heads=1, head_dim=2, dtype=torch.float32)
    return KVCacheManager(shape, pages + 1, PAGE, torch.device("cpu"))


def request(prompt_len: int, new_tokens: int = 4) -> SeqState:
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0)
    state = cast(DecodeState, None)  # the scheduler never reads the decoder's state
    ids = list(range(10, 10 + prompt_len))
    return SeqState(None, ids, params, new_tokens, 0, 0, state, time.monotonic())


def chunks(plan: StepPlan) -> list[tuple[SeqState, int, int]]:
    return [(c.seq, c.start, c.length) for c in plan.prefill]


def test_requests_are_admitted_in_arrival_order_and_the_head_blocks_the_rest() -> None:
    kv = manager(4)  # 16 tokens
    scheduler = Scheduler(kv, max_rows=8, chunk_tokens=64)
    a, b, c = request(8, 4), request(4, 4), request(2, 2)  # 3, 2 and 1 pages
    for seq in (a, b, c):
        scheduler.add(seq)

    plan = scheduler.schedule()
    # B does not fit in the one page left; C would, but does not overtake it.
    assert plan.admitted == [a] and list(scheduler.waiting) == [b, c]
    assert len(a.pages) == 3 and kv.used_pages == 3
    assert b.phase is c.phase is Phase.WAITING and b.pages == c.pages == []

    scheduler.advance(plan)
    assert scheduler.schedule().admitted == []  # still no room: A decodes alone
    scheduler.finish(a)
    assert a.phase is Phase.DONE and a.pages == [] and kv.used_pages == 0

    plan = scheduler.schedule()
    assert plan.admitted == [b, c] and not scheduler.waiting
    assert scheduler.running == [b, c]
    assert kv.used_pages == 3 and not set(b.pages) & set(c.pages)


def test_no_more_requests_run_than_there_are_batch_rows() -> None:
    kv = manager(32)
    scheduler = Scheduler(kv, max_rows=2, chunk_tokens=64)
    seqs = [request(3) for _ in range(3)]
    for seq in seqs:
        scheduler.add(seq)

    plan = scheduler.schedule()
    assert plan.admitted == seqs[:2] and list(scheduler.waiting) == seqs[2:]
    scheduler.advance(plan)
    scheduler.finish(seqs[0])
    plan = scheduler.schedule()
    assert plan.admitted == [seqs[2]]
    assert plan.decode == [seqs[1]] and chunks(plan) == [(seqs[2], 0, 3)]


def test_long_prompts_are_prefilled_in_chunks_beside_decoding_rows() -> None:
    kv = manager(32)
    scheduler = Scheduler(kv, max_rows=8, chunk_tokens=8)
    a, b = request(20), request(5)
    scheduler.add(a)
    scheduler.add(b)

    steps = []
    while not (a.phase is Phase.DECODE and b.phase is Phase.DECODE):
        plan = scheduler.schedule()
        assert sum(length for _, _, length in chunks(plan)) <= 8
        steps.append((chunks(plan), plan.decode, plan.sampled))
        scheduler.advance(plan)

    assert steps == [
        ([(a, 0, 8)], [], []),  # B is admitted (its pages are reserved) but gets no budget
        ([(a, 8, 8)], [], []),  # a running request's chunk comes first
        ([(a, 16, 4), (b, 0, 4)], [], [a]),  # A's prompt completes: its first token
        ([(b, 4, 1)], [a], [a, b]),  # decode rows first, then prompts that complete
    ]
    assert (a.num_cached, b.num_cached) == (21, 5)
    assert (a.prefill_chunks, b.prefill_chunks) == (3, 2)


def test_a_row_whose_last_token_is_on_the_way_gets_no_decode_row() -> None:
    kv = manager(8)
    scheduler = Scheduler(kv, max_rows=8, chunk_tokens=64)
    a = request(3, new_tokens=2)
    scheduler.add(a)
    plan = scheduler.schedule()
    assert plan.sampled == [a]
    a.sampled += 1  # the engine asks the sampler for one token per sampled row
    scheduler.advance(plan)
    plan = scheduler.schedule()
    assert plan.decode == [a]
    a.sampled += 1
    scheduler.advance(plan)
    plan = scheduler.schedule()  # both tokens are asked for: nothing left to run for A
    assert plan.empty and scheduler.busy  # A stays until the engine sees its last token


def test_finishing_a_waiting_or_running_request_frees_its_pages_at_once() -> None:
    kv = manager(4)
    scheduler = Scheduler(kv, max_rows=8, chunk_tokens=64)
    running, waiting = request(8, 4), request(8, 4)
    scheduler.add(running)
    scheduler.add(waiting)
    scheduler.advance(scheduler.schedule())
    assert kv.used_pages == 3 and list(scheduler.waiting) == [waiting]

    scheduler.finish(waiting)  # cancelled while queued
    assert not scheduler.waiting and waiting.phase is Phase.DONE
    scheduler.finish(running)
    assert not scheduler.running and not scheduler.busy
    assert kv.used_pages == 0 and kv.usage == 0.0
    assert kv.can_allocate(kv.capacity_tokens)
