"""The KV-cache manager and the scheduler's use of it, without a model: the prefix cache's
hash chain, reference counts, LRU eviction and admission arithmetic.

* A page's key names its whole prefix (and the adapter); the same prefix finds the same pages.
* Shared pages are counted; a page nobody holds stays hittable until its memory is needed,
  and then the least recently used one goes first, a prefix from its tail.
* Admission counts evictable pages as room, but not the ones the request itself revives.
* Only full pages of prompt tokens are cached, never the prompt's last token, never page 0.
* Requests admitted in one step share the pages the first one's chunk computes in that step,
  and only once that chunk is planned; a failed step's pages are dropped from the table.
* Without the prefix cache, freed pages are plain free pages; a slot is page * size + offset;
  the cache is sized from the settings, never beyond every row at full context.
"""

from __future__ import annotations

import time
from typing import cast

import pytest
import torch

from services.text.decode_state import DecodeState
from services.text.kv_cache import CacheShape, KVCacheManager, size_pages
from services.text.scheduler import Scheduler
from services.text.schemas import SamplingParams
from services.text.sequence import Phase, SeqState

PAGE = 4


def manager(pages: int, prefix_cache: bool = True) -> KVCacheManager:
    """``pages`` usable pages of PAGE tokens (plus the scratch page 0), one tiny layer."""
    shape = CacheShape(layers=1, kv_heads=1, head_dim=2, dtype=torch.float32)
    return KVCacheManager(shape, pages + 1, PAGE, torch.device("cpu"), prefix_cache)


def prompt(*pages: int, extra: int = 0) -> list[int]:
    """Token ids: one full page per argument (PAGE copies of it), then ``extra`` more ids."""
    return [t for p in pages for t in [p] * PAGE] + list(range(900, 900 + extra))


def admit(kv: KVCacheManager, ids: list[int], new_tokens: int = 0, adapter: int = 0) -> list[int]:
    """What the scheduler does at admission and after planning the whole prompt."""
    keys = kv.page_keys(ids, adapter)
    hits = kv.match(ids, keys, adapter)
    pages = kv.allocate(len(ids) + new_tokens, hits)
    kv.register(pages, ids, keys, adapter, len(hits), len(keys))
    return pages


def release(kv: KVCacheManager, pages: list[int]) -> None:
    kv.free(list(pages))  # free() empties the list it is given, as a sequence's pages


def test_a_page_key_names_its_whole_prefix_and_its_adapter() -> None:
    kv = manager(8)
    first = kv.page_keys(prompt(1, 2, 3), adapter=0)
    assert kv.page_keys(prompt(1, 2, 3), adapter=0) == first  # stable
    other = kv.page_keys(prompt(7, 2, 3), adapter=0)
    assert other[1:] != first[1:]  # the same tokens after a different page: other keys
    assert kv.page_keys(prompt(1, 2, 9), adapter=0)[:2] == first[:2]  # a shared head
    assert kv.page_keys(prompt(1, 2, 3), adapter=1)[0] != first[0]  # another adapter's KV
    assert len(kv.page_keys(prompt(1, 2, extra=3), adapter=0)) == 2  # no key for a partial page
    assert manager(8, prefix_cache=False).page_keys(prompt(1, 2, 3), 0) == []


def test_shared_pages_count_references_and_a_freed_prefix_is_hit_again() -> None:
    kv = manager(16)
    a = admit(kv, prompt(1, 2, extra=3), new_tokens=4)  # 11 + 4 tokens: 4 pages, 2 hashed
    b_ids = prompt(1, 2, extra=1)
    b = admit(kv, b_ids, new_tokens=4)
    assert b[:2] == a[:2]  # B shares A's two prompt pages
    assert [kv.refcount(p) for p in a] == [2, 2, 1, 1]
    assert kv.used_pages == 4 + 2  # B's own: 9 + 4 tokens = 4 pages, 2 of them shared

    release(kv, a)
    assert [kv.refcount(p) for p in b] == [1, 1, 1, 1]
    release(kv, b)
    assert kv.used_pages == 0 and kv.usage == 0
    assert kv.evictable_pages == 2  # the hashed prefix stays, nobody holds it

    keys = kv.page_keys(b_ids, 0)
    assert kv.match(b_ids, keys, 0) == b[:2]  # and a later request finds it
    assert kv.match(b_ids, keys, adapter=1) == []  # not under another adapter


def test_the_least_recently_used_pages_are_evicted_first_and_a_prefix_from_its_tail() -> None:
    kv = manager(6)
    x_ids, y_ids = prompt(1, 2, extra=1), prompt(3, 4, extra=1)
    x = admit(kv, x_ids)  # 3 pages, the first 2 hashed
    y = admit(kv, y_ids)
    release(kv, x)  # X's prefix is the older one
    release(kv, y)
    assert kv.evictable_pages == 4 and kv.used_pages == 0

    z = kv.allocate(3 * PAGE)  # 2 plain free pages, then one evicted: X's tail
    assert x[1] in z and x[0] not in z
    assert kv.match(x_ids, kv.page_keys(x_ids, 0), 0) == x[:1]  # X's head is still there
    assert kv.match(y_ids, kv.page_keys(y_ids, 0), 0) == y[:2]
    assert not kv.is_hashed(x[1])

    # A hit makes a prefix recent again: Y was freed after X, but X is used once more.
    release(kv, z)
    w = admit(kv, x_ids)  # hits X's head, computes its second page again (a new page)
    assert w[0] == x[0] and kv.refcount(x[0]) == 1
    release(kv, w)
    taken = kv.allocate(4 * PAGE)  # 2 plain free pages, then Y's two (the oldest)
    assert set(y[:2]) <= set(taken)
    assert kv.match(y_ids, kv.page_keys(y_ids, 0), 0) == []
    assert kv.match(x_ids, kv.page_keys(x_ids, 0), 0) == w[:2]


def test_admission_counts_evictable_pages_but_not_the_ones_it_revives() -> None:
    kv = manager(4)
    ids = prompt(1, 2, extra=1)
    release(kv, admit(kv, ids))  # 2 hashed pages evictable, 2 plain free
    hits = kv.match(ids, kv.page_keys(ids, 0), 0)
    assert len(hits) == 2

    assert kv.can_allocate(4 * PAGE)  # fits only by evicting both
    assert kv.can_allocate(4 * PAGE, hits)  # 2 hits + 2 free pages
    # 2 hits + 3 new pages: the 2 evictable pages it revives are no room for the other 3.
    assert not kv.can_allocate(5 * PAGE, hits)
    with pytest.raises(RuntimeError, match="3 pages asked"):
        kv.allocate(5 * PAGE, hits)

    pages = kv.allocate(4 * PAGE, hits)
    assert pages[:2] == hits and kv.used_pages == 4 and kv.evictable_pages == 0
    release(kv, pages)
    everything = kv.allocate(4 * PAGE)  # evicts both hashed pages
    assert sorted(everything) == [1, 2, 3, 4]  # never page 0
    assert kv.match(ids, kv.page_keys(ids, 0), 0) == []


def test_page_zero_is_never_handed_out_even_through_evictions() -> None:
    kv = manager(3)
    for first in range(10):
        pages = admit(kv, prompt(first, first + 100, extra=1))
        assert 0 not in pages
        release(kv, pages)


def test_the_prompts_last_token_and_partial_pages_are_never_cached() -> None:
    kv = manager(16)
    exact = prompt(1, 2)  # exactly two pages
    release(kv, admit(kv, exact))
    assert kv.evictable_pages == 2  # both full prompt pages are hashed...
    # ...but the same prompt hits only the first: its last token must run for its logits.
    assert len(kv.match(exact, kv.page_keys(exact, 0), 0)) == 1
    longer = prompt(1, 2, extra=1)
    assert len(kv.match(longer, kv.page_keys(longer, 0), 0)) == 2

    partial = prompt(5, extra=3)  # one full page and 3 tokens
    pages = admit(kv, partial, new_tokens=8)
    assert [kv.is_hashed(p) for p in pages] == [True, False, False, False]  # decode: never


def test_without_the_prefix_cache_pages_are_handed_out_and_back_and_never_shared() -> None:
    kv = manager(6, prefix_cache=False)
    assert kv.capacity_tokens == 6 * PAGE and kv.page_keys(prompt(1, 2), 0) == []
    first = kv.allocate(2 * PAGE + 1)  # three pages: the last one holds a single token
    second = kv.allocate(PAGE)
    assert len(first) == 3 and len(second) == 1 and not set(first) & set(second)
    assert 0 not in first + second and kv.used_pages == 4
    assert all(kv.refcount(p) == 1 for p in first + second)
    assert kv.slot(first, 0) == first[0] * PAGE and kv.slot(first, 9) == first[2] * PAGE + 1
    assert not kv.can_allocate(3 * PAGE) and kv.can_allocate(2 * PAGE)
    with pytest.raises(RuntimeError, match="3 pages asked, 2 free"):
        kv.allocate(3 * PAGE)

    kv.free(first)
    assert first == [] and kv.used_pages == 1 and kv.evictable_pages == 0
    assert kv.can_allocate(5 * PAGE) and not kv.can_allocate(5 * PAGE + 1)


def test_the_cache_is_sized_from_the_settings_and_never_beyond_full_context() -> None:
    shape = CacheShape(layers=2, kv_heads=2, head_dim=8, dtype=torch.float32)  # 256 B a token
    cpu = torch.device("cpu")

    def pages(cache_tokens: int | None, rows: int = 4, context: int = 1024) -> int:
        return size_pages(shape, 16, rows, context, cpu, cache_tokens, 0.9, unused)

    def unused() -> None:
        raise AssertionError("no memory profile off CUDA")

    assert pages(100) == 7 + 1  # rounded up to whole pages, plus the scratch page
    assert pages(10_000, rows=2, context=64) == 2 * 4 + 1  # more would be waste
    assert pages(None) == 4 * 64 + 1  # 1 GiB would be more than 4 rows at full context
    assert pages(None, rows=512, context=65536) == 2**30 // 256 // 16 + 1  # 1 GiB off CUDA


# --- the scheduler ------------------------------------------------------------------------------


def sequence(ids: list[int], new_tokens: int = 4) -> SeqState:
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0)
    state = cast(DecodeState, None)  # the scheduler never reads the decoder's state
    return SeqState(None, ids, params, new_tokens, 0, 0, state, time.monotonic())


def test_requests_admitted_in_one_step_share_the_pages_planned_in_it() -> None:
    kv = manager(64)
    scheduler = Scheduler(kv, max_rows=8, chunk_tokens=2 * PAGE + 2)
    shared = prompt(1, 2, 3, 4)
    a, b = sequence([*shared, 50]), sequence([*shared, 60, 61])
    scheduler.add(a)
    scheduler.add(b)

    plan = scheduler.schedule()
    assert plan.admitted == [a, b]
    # A's chunk of 10 tokens fills its first two pages; B takes them in the same step, but not
    # A's third and fourth page, which no plan computes yet. B gets no budget this step.
    assert [(c.seq, c.start, c.length) for c in plan.prefill] == [(a, 0, 10)]
    assert b.pages[:2] == a.pages[:2] and b.pages[2] != a.pages[2]
    assert b.num_cached == b.cached_tokens == 2 * PAGE
    assert plan.hashed == a.pages[:2]

    scheduler.advance(plan)
    plan = scheduler.schedule()  # A's rest (7 tokens), then 3 of B's from its hit on
    assert [(c.seq, c.start, c.length) for c in plan.prefill] == [(a, 10, 7), (b, 8, 3)]
    assert plan.hashed == a.pages[2:4]
    scheduler.advance(plan)
    plan = scheduler.schedule()  # B's rest fills its own third and fourth page...
    assert [(c.seq, c.start, c.length) for c in plan.prefill] == [(b, 11, 7)]
    assert plan.hashed == []  # ...which stay private: A's pages hold that prefix already
    assert not kv.is_hashed(b.pages[2]) and not kv.is_hashed(b.pages[3])
    scheduler.advance(plan)
    assert a.phase is b.phase is Phase.DECODE
    assert [(s, s.pages) for s in scheduler.schedule().decode] == [(a, a.pages), (b, b.pages)]
    assert sum(kv.is_hashed(p) for p in {*a.pages, *b.pages}) == 4  # no decode page hashed


def test_a_failed_steps_pages_are_dropped_and_every_request_sharing_them_is_found() -> None:
    kv = manager(64)
    scheduler = Scheduler(kv, max_rows=8, chunk_tokens=9)
    shared = prompt(1, 2)
    a, b = sequence([*shared, 50]), sequence([*shared, 60])
    scheduler.add(a)
    scheduler.add(b)
    plan = scheduler.schedule()  # A's whole prompt; B hits its pages but gets no budget
    assert [c.seq for c in plan.prefill] == [a]
    assert b.pages[:2] == a.pages[:2] == plan.hashed

    # The step failed (the engine's _fail does this): the keys go, and every running request
    # that holds one of the pages is found, not only the step's rows.
    kv.forget(plan.hashed)
    assert scheduler.holders(plan.hashed) == [a, b]
    for seq in (a, b):
        scheduler.finish(seq)
    assert kv.used_pages == 0 and kv.evictable_pages == 0  # garbage is not kept for hits
    c = sequence([*shared, 70])
    scheduler.add(c)
    scheduler.schedule()
    assert c.cached_tokens == 0 and c.phase is Phase.PREFILL
