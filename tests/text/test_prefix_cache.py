"""The prefix cache on the tiny model: what a user notices of it.

* A prompt that begins like an earlier one gives the same greedy text as with the cache off,
  and its usage says how many prompt tokens came from the cache (whole KV pages, never the
  prompt's last token), in /v1/generate and in the OpenAI routes, streamed or not.
* The Prometheus counters move by those numbers.
* The five section prompts of an article, sent together, share their prefix in the very step
  they are admitted, with the texts they would have one at a time without the cache.
* A request cancelled while another shares its pages leaves the other's text unchanged; its
  pages are then held by nobody, kept for later hits, and reused.
* Under a tiny KV cache, pages are evicted (the prefix's tail first) and texts stay the same.
* A failed step fails every request that shares the pages it was to fill.

Pages are 4 tokens here, so that tiny prompts span many of them. Each test begins its prompts
with a word of its own, so that the module's engines do not carry hits from one test to the
next.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.common.errors import ArticleforgeError
from services.text.engine import TextEngine
from services.text.request import GenerationResult, RequestHandle
from services.text.schemas import Prompt, SamplingParams
from services.text.sequence import Phase, SeqState
from tests.metrics import sample
from tests.text.conftest import make_settings, ready_client

PAGE = 4
BRIEF = (
    "You are writing one section of an article about solar power for homeowners. "
    "Keep to the facts, use short paragraphs, and write in a friendly tone. "
)
SECTIONS = [
    "Section 1: how the panels work.",
    "Section 2: what they cost.",
    "Section 3: batteries for the night.",
    "Section 4: permits and the grid.",
    "Section 5: care over twenty years.",
]
PROMPT_TOKENS = "articleforge_text_prompt_tokens_total"
HIT_TOKENS = "articleforge_text_prefix_cache_hit_tokens_total"
HITS = "articleforge_text_prefix_cache_hits_total"


@pytest.fixture(scope="module")
def on(cache_dir: Path, tiny_text_path: Path) -> Iterator[TestClient]:
    settings = make_settings(cache_dir, text_kv_page_size=PAGE, text_batch_wait_ms=200)
    with ready_client(settings) as client:
        yield client


@pytest.fixture(scope="module")
def off(cache_dir: Path, tiny_text_path: Path) -> Iterator[TestClient]:
    settings = make_settings(cache_dir, text_kv_page_size=PAGE, text_prefix_cache=False)
    with ready_client(settings) as client:
        yield client


@pytest.fixture(scope="module")
def chunked(cache_dir: Path, tiny_text_path: Path) -> Iterator[TestClient]:
    """Prompt chunks of 16 tokens: a long prompt prefills over many steps."""
    settings = make_settings(
        cache_dir, text_kv_page_size=PAGE, text_prefill_chunk_tokens=16, text_batch_wait_ms=200
    )
    with ready_client(settings) as client:
        yield client


def engine_of(client: TestClient) -> TextEngine:
    engine: TextEngine = client.app.state.engine  # type: ignore[attr-defined]
    return engine


def generate(client: TestClient, prompt: str, new_tokens: int = 16) -> dict[str, Any]:
    body = {"prompt": prompt, "temperature": 0, "max_new_tokens": new_tokens}
    reply = client.post("/v1/generate", json=body)
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


def cached(reply: dict[str, Any]) -> int:
    tokens: int = reply["usage"]["prompt_tokens_details"]["cached_tokens"]
    return tokens


def ids_of(client: TestClient, prompt: str) -> list[int]:
    return engine_of(client).encode_prompt(Prompt(text=prompt))


def expected_hit(earlier: list[list[int]], ids: list[int]) -> int:
    """The page-aligned hit a prompt should find after ``earlier`` ones were computed: the
    longest common prefix with any of them, in whole pages that are full of the earlier one's
    prompt tokens, and short of this prompt's last token."""
    best = 0
    for other in earlier:
        common = 0
        for a, b in zip(other, ids, strict=False):
            if a != b:
                break
            common += 1
        best = max(best, min(common, len(other), len(ids) - 1) // PAGE * PAGE)
    return best


def metrics(client: TestClient) -> dict[str, float]:
    text = client.get("/metrics").text
    return {name: sample(text, name) for name in (PROMPT_TOKENS, HIT_TOKENS, HITS)}


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before}


def poll(what: str, done: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.002)


def running(engine: TextEngine) -> list[SeqState]:
    assert engine.scheduler is not None
    return list(engine.scheduler.running)


def assert_nothing_held(engine: TextEngine) -> None:
    """Every page's reference count is back to zero (the engine thread retires a cancelled
    request at its next step)."""
    kv = engine.kv
    assert kv is not None
    poll("pages are still held", lambda: kv.used_pages == 0 and not running(engine))
    assert all(kv.refcount(page) == 0 for page in range(kv.num_pages))


# --- hits, their report, the counters ------------------------------------------------------------


def test_a_prompt_sharing_a_prefix_gets_the_same_greedy_text_and_reports_its_hit(
    on: TestClient, off: TestClient
) -> None:
    first, second = (f"Alpha. {BRIEF}{s}" for s in SECTIONS[:2])
    first_ids, second_ids = ids_of(on, first), ids_of(on, second)
    hit = expected_hit([first_ids], second_ids)
    assert hit >= 12 * PAGE  # the brief spans a dozen pages

    before = metrics(on)
    replies = [generate(on, first), generate(on, second)]
    assert moved(before, metrics(on)) == {
        PROMPT_TOKENS: len(first_ids) + len(second_ids),
        HIT_TOKENS: hit,
        HITS: 1,
    }
    assert [cached(r) for r in replies] == [0, hit]
    assert [r["usage"]["prompt_tokens"] for r in replies] == [len(first_ids), len(second_ids)]

    # The same prompt again finds all of itself but the page that holds its last token.
    again = generate(on, second)
    assert cached(again) == (len(second_ids) - 1) // PAGE * PAGE

    before = metrics(off)
    references = [generate(off, first), generate(off, second)]
    assert [cached(r) for r in references] == [0, 0]  # ARTICLEFORGE_TEXT_PREFIX_CACHE=false
    assert moved(before, metrics(off))[HIT_TOKENS] == 0
    assert [r["text"] for r in [*replies, again]] == [
        r["text"] for r in [*references, references[1]]
    ]


def read_sse(client: TestClient, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    events = []
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                events.append(json.loads(line[5:]))
    return events


def test_the_openai_routes_report_cached_tokens_as_openai_does(on: TestClient) -> None:
    messages = [{"role": "user", "content": f"Bravo. {BRIEF}{SECTIONS[2]}"}]
    chat = {"model": "tiny", "messages": messages, "temperature": 0, "max_tokens": 6}
    cold = on.post("/v1/chat/completions", json=chat).json()["usage"]
    assert cold["prompt_tokens_details"] == {"cached_tokens": 0}
    warm = on.post("/v1/chat/completions", json=chat).json()["usage"]
    whole = (warm["prompt_tokens"] - 1) // PAGE * PAGE
    assert whole > 0
    assert warm == {**cold, "prompt_tokens_details": {"cached_tokens": whole}}

    usage_chunks = {"stream": True, "stream_options": {"include_usage": True}}
    streamed = read_sse(on, "/v1/chat/completions", {**chat, **usage_chunks})
    assert streamed[-1]["choices"] == []
    assert streamed[-1]["usage"] == warm

    completion = {"model": "tiny", "prompt": f"Bravo. {BRIEF}", "temperature": 0, "max_tokens": 6}
    reply = on.post("/v1/completions", json=completion).json()["usage"]
    # The plain prompt is the chat prompt's text without the template around it: no hit.
    assert reply["prompt_tokens_details"] == {"cached_tokens": 0}
    whole = (reply["prompt_tokens"] - 1) // PAGE * PAGE
    streamed = read_sse(on, "/v1/completions", {**completion, **usage_chunks})
    assert streamed[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": whole}

    body = {"prompt": f"Bravo. {BRIEF}", "max_new_tokens": 4, "stream": True}
    result = read_sse(on, "/v1/generate", body)[-1]
    assert result["usage"]["prompt_tokens_details"] == {"cached_tokens": whole}


# --- the sections of one article, together -----------------------------------------------------


def submit_all(
    engine: TextEngine, prompts: list[str], new_tokens: int = 16
) -> list[GenerationResult]:
    """Submits every prompt at once (one intake: the engine waits 200 ms for company)."""

    async def together() -> list[GenerationResult]:
        handles = [
            engine.submit(
                engine.prepare(
                    Prompt(text=p),
                    SamplingParams(max_new_tokens=new_tokens, temperature=0),
                    None,
                    f"section-{i}",
                )
            )
            for i, p in enumerate(prompts)
        ]
        return list(await asyncio.gather(*(h.wait() for h in handles)))

    return asyncio.run(together())


def test_sections_sent_together_share_their_prefix_in_the_step_they_are_admitted(
    on: TestClient, off: TestClient
) -> None:
    prompts = [f"Charlie. {BRIEF}{s}" for s in SECTIONS]
    ids = [ids_of(on, p) for p in prompts]
    hits = [expected_hit(ids[:i], ids[i]) for i in range(len(ids))]
    assert hits[0] == 0 and min(hits[1:]) >= 12 * PAGE

    text = on.get("/metrics").text
    before = metrics(on)
    batches = sample(text, "articleforge_text_batch_size_count")
    results = submit_all(engine_of(on), prompts)
    text = on.get("/metrics").text
    # One step admitted all five; only the first computed the brief.
    assert sample(text, "articleforge_text_batch_size_count") - batches == 1
    assert [r.usage.cached_tokens for r in results] == hits
    assert moved(before, metrics(on)) == {
        PROMPT_TOKENS: sum(map(len, ids)),
        HIT_TOKENS: sum(hits),
        HITS: len(prompts) - 1,
    }
    alone = [generate(off, p) for p in prompts]
    assert [r.text for r in results] == [r["text"] for r in alone]
    assert_nothing_held(engine_of(on))


# --- cancels ----------------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["prefill", "decode"])
def test_a_request_cancelled_while_sharing_pages_leaves_the_others_text_unchanged(
    chunked: TestClient, off: TestClient, when: str
) -> None:
    engine = engine_of(chunked)
    lead = f"Delta {when}. {BRIEF}"
    # Prefill: a prompt of some 600 tokens, 40-odd chunks of 16. Decode: a long greedy run.
    first = lead + "Background: " + " ".join([BRIEF] * 10) if when == "prefill" else lead
    second = lead + SECTIONS[3]
    bystander = f"Echo {when}. Gardening in spring starts with the soil."

    async def scenario() -> tuple[GenerationResult, GenerationResult, int, Phase]:
        params = SamplingParams(max_new_tokens=16, temperature=0)
        long = SamplingParams(max_new_tokens=400, temperature=0)
        a = engine.submit(engine.prepare(Prompt(text=first), long, None, "a"))
        if when == "decode":
            async for _ in a.stream():  # A's first token: it decodes
                break
        else:
            await asyncio.to_thread(
                poll, "A never prefilled", lambda: any(s.num_cached >= 32 for s in running(engine))
            )
        b = engine.submit(engine.prepare(Prompt(text=second), params, None, "b"))
        await asyncio.to_thread(
            poll, "B was never admitted", lambda: any(s.handle is b for s in running(engine))
        )
        rows = {id(s.handle): s for s in running(engine)}
        assert id(a) in rows, "A finished before the cancel"
        shared = len(set(rows[id(a)].pages) & set(rows[id(b)].pages))
        phase = rows[id(a)].phase
        a.cancel()
        # A request right after the cancel takes whatever pages were freed: not B's.
        c = engine.submit(engine.prepare(Prompt(text=bystander), params, None, "c"))
        return await b.wait(), await c.wait(), shared, phase

    b_result, c_result, shared, phase = asyncio.run(scenario())
    assert phase is (Phase.PREFILL if when == "prefill" else Phase.DECODE)
    assert shared > 0, "B shares no page with A"
    assert b_result.usage.cached_tokens == shared * PAGE
    assert b_result.text == generate(off, second)["text"]
    assert c_result.text == generate(off, bystander)["text"]

    assert_nothing_held(engine)
    kv = engine.kv
    assert kv is not None and kv.evictable_pages > 0  # the prefix stays for later hits
    again = generate(chunked, second)
    assert cached(again) == (len(ids_of(chunked, second)) - 1) // PAGE * PAGE
    assert again["text"] == b_result.text


# --- eviction ---------------------------------------------------------------------------------


def test_a_tiny_cache_evicts_the_prefix_tail_first_and_keeps_the_texts(
    cache_dir: Path, off: TestClient
) -> None:
    # 16 pages of 4 tokens.
    settings = make_settings(
        cache_dir, text_kv_page_size=PAGE, text_kv_cache_tokens=64, text_batch_wait_ms=200
    )
    first = f"Foxtrot. {BRIEF[:60]}"
    other = "Golf. Wind turbines turn moving air into power; batteries keep it for the night."
    with ready_client(settings) as client:
        n_first, n_other = len(ids_of(client, first)), len(ids_of(client, other))
        assert (n_first, n_other) == (22, 27)
        # First: 22 + 8 tokens, 8 pages, 5 of them full of prompt and kept. Other: 27 + 20
        # tokens, 12 pages: the 11 plain free pages are not enough, so one kept page goes,
        # the tail of First's prefix.
        replies = [generate(client, first, 8), generate(client, other, 20)]
        assert [cached(r) for r in replies] == [0, 0]
        again = generate(client, first, 8)
        assert cached(again) == 4 * PAGE  # not 5 pages: (22 - 1) // 4

        # The sections, together: 13 to 15 pages each, so one runs at a time, finding what
        # the one before left, and evicting some of it.
        prompts = [f"Hotel. {BRIEF[:50]}{s}" for s in SECTIONS]
        results = submit_all(engine_of(client), prompts, new_tokens=24)
        assert any(r.usage.cached_tokens for r in results[1:])
        assert_nothing_held(engine_of(client))

    assert [r["text"] for r in [*replies, again]] == [
        generate(off, p, n)["text"] for p, n in ((first, 8), (other, 20), (first, 8))
    ]
    assert [r.text for r in results] == [generate(off, p, 24)["text"] for p in prompts]


# --- a failed step -------------------------------------------------------------------------------


def test_a_failed_step_fails_every_request_sharing_its_pages(
    cache_dir: Path, off: TestClient
) -> None:
    settings = make_settings(
        cache_dir, text_kv_page_size=PAGE, text_prefill_chunk_tokens=16, text_batch_wait_ms=200
    )
    prompts = [f"India. {BRIEF}{s}" for s in SECTIONS[:2]]
    with ready_client(settings) as client:
        engine = engine_of(client)
        runner = engine.runner
        assert runner is not None
        real = runner.run
        failures: list[int] = []

        def fails_once(plan: Any, last: Any) -> Any:
            if plan.prefill and not failures:  # a device fault in the sections' first step
                failures.append(len(plan.prefill))
                raise RuntimeError("injected device fault")
            return real(plan, last)

        runner.run = fails_once  # type: ignore[method-assign]
        kv = engine.kv
        assert kv is not None
        kept = kv.evictable_pages  # the warm-up request's one full page

        async def together() -> list[BaseException | GenerationResult]:
            params = SamplingParams(max_new_tokens=8, temperature=0)
            handles: list[RequestHandle] = [
                engine.submit(engine.prepare(Prompt(text=p), params, None, f"fail-{i}"))
                for i, p in enumerate(prompts)
            ]
            return list(await asyncio.gather(*(h.wait() for h in handles), return_exceptions=True))

        outcomes = asyncio.run(together())
        # The failed step had one chunk (16 tokens: the first prompt's); the second request
        # was admitted in it and took those pages from the table, so it fails too.
        assert failures == [1]
        for outcome in outcomes:
            assert isinstance(outcome, ArticleforgeError), outcome
            assert "injected device fault" in str(outcome)
        assert_nothing_held(engine)
        assert kv.evictable_pages == kept  # nothing of the failed step is kept for hits

        retry = generate(client, prompts[1], 8)
        assert cached(retry) == 0
        assert retry["text"] == generate(off, prompts[1], 8)["text"]


# --- the HF runner --------------------------------------------------------------------------------


def test_the_hf_runner_takes_nothing_from_the_cache(
    cache_dir: Path, off: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The HF runner keeps a transformers cache per request, so the pages are bookkeeping
    only: the prefix cache is off there, whatever the setting says, and the log says so."""
    prompt = f"Juliett. {BRIEF}"
    settings = make_settings(cache_dir, text_kv_page_size=PAGE, text_runner="hf")
    with caplog.at_level("INFO", logger="services.text.engine"), ready_client(settings) as client:
        replies = [generate(client, prompt, 8) for _ in range(2)]
    assert "prefix cache off" in caplog.text
    assert [cached(r) for r in replies] == [0, 0]
    assert replies[1]["text"] == replies[0]["text"] == generate(off, prompt, 8)["text"]
