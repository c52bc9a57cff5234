"""The engine batches concurrent requests, bounds its queue, and frees a slot on disconnect."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.metrics import sample
from tests.text.conftest import live_server, make_settings

PROMPTS = [
    "Write about solar power.",
    "Gardening in spring",
    "The history of printing runs from",
    "Coffee beans are",
    "Explain electric cars to a child, in three short paragraphs please.",
    "Music",
]


async def _generate_all(base: str, bodies: list[dict]) -> list[dict]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        responses = await asyncio.gather(*(client.post("/v1/generate", json=b) for b in bodies))
    for response in responses:
        assert response.status_code == 200, response.text
    return [r.json() for r in responses]


def test_concurrent_requests_batch_and_match_one_at_a_time(cache_dir: Path) -> None:
    settings = make_settings(cache_dir, text_batch_wait_ms=200, text_max_batch_size=8)
    # Different prompt lengths (left padding) and different max_new_tokens (rows leave early).
    bodies = [
        {"prompt": p, "temperature": 0, "max_new_tokens": 8 + 4 * i} for i, p in enumerate(PROMPTS)
    ]
    with live_server(settings) as base:
        alone = [httpx.post(f"{base}/v1/generate", json=b, timeout=60).json() for b in bodies]
        before = httpx.get(f"{base}/metrics").text
        together = asyncio.run(_generate_all(base, bodies))
        after = httpx.get(f"{base}/metrics").text

    batches = sample(after, "articleforge_text_batch_size_count") - sample(
        before, "articleforge_text_batch_size_count"
    )
    batched_rows = sample(after, "articleforge_text_batch_size_sum") - sample(
        before, "articleforge_text_batch_size_sum"
    )
    assert batched_rows == len(bodies)
    assert batches < len(bodies), f"{len(bodies)} requests ran in {batches} batches"
    assert [r["text"] for r in together] == [r["text"] for r in alone]
    # The same counts, except that the 28-token prompt now finds its first KV page (16
    # tokens) in the prefix cache, left there by its run alone.
    cached = [r["usage"].pop("prompt_tokens_details")["cached_tokens"] for r in together]
    assert cached == [16 if r["usage"]["prompt_tokens"] > 16 else 0 for r in together]
    assert sum(cached) == 16
    for r in alone:
        assert r["usage"].pop("prompt_tokens_details") == {"cached_tokens": 0}
    assert [r["usage"] for r in together] == [r["usage"] for r in alone]


def test_sampled_requests_keep_their_own_seed_in_a_batch(cache_dir: Path) -> None:
    settings = make_settings(cache_dir, text_batch_wait_ms=200)
    bodies = [
        {"prompt": PROMPTS[0], "temperature": 1.0, "top_p": 0.9, "seed": s, "max_new_tokens": 16}
        for s in (1, 2, 3)
    ]
    with live_server(settings) as base:
        alone = [httpx.post(f"{base}/v1/generate", json=b, timeout=60).json() for b in bodies]
        together = asyncio.run(_generate_all(base, bodies))
    assert [r["text"] for r in together] == [r["text"] for r in alone]
    assert len({r["text"] for r in together}) == 3


def test_full_queue_is_429_and_a_disconnect_frees_the_slot(cache_dir: Path) -> None:
    settings = make_settings(cache_dir, text_max_queue=1, text_max_new_tokens=2048)
    long_body = {
        "prompt": "Solar",
        "temperature": 1.0,
        "seed": 3,  # this seed runs ~1700 tokens before the tiny model samples EOS
        "max_new_tokens": 2000,
        "stream": True,
    }
    with live_server(settings) as base:
        before = httpx.get(f"{base}/metrics").text
        with httpx.Client(base_url=base, timeout=60) as streaming:
            with streaming.stream("POST", "/v1/generate", json=long_body) as response:
                lines = response.iter_lines()
                while not next(lines).startswith("data:"):
                    pass  # the first token arrived: the request holds the only slot
                full = httpx.post(f"{base}/v1/generate", json={"prompt": "x"}, timeout=10)
                assert full.status_code == 429
                assert full.headers["retry-after"] == "1"
                assert full.json()["error"]["type"] == "rate_limit_error"
                assert "ARTICLEFORGE_TEXT_MAX_QUEUE" in full.json()["error"]["message"]
            # leaving the `with` closes the connection mid-stream

        deadline = time.monotonic() + 20
        while True:
            retry = httpx.post(
                f"{base}/v1/generate", json={"prompt": "x", "max_new_tokens": 4}, timeout=30
            )
            if retry.status_code == 200:
                break
            assert retry.status_code == 429
            assert time.monotonic() < deadline, "the slot was never freed"
            time.sleep(0.05)
        time.sleep(0.3)
        after = httpx.get(f"{base}/metrics").text

    cancelled = sample(after, "articleforge_text_requests_total", status="cancelled") - sample(
        before, "articleforge_text_requests_total", status="cancelled"
    )
    generated = sample(after, "articleforge_text_generated_tokens_total") - sample(
        before, "articleforge_text_generated_tokens_total"
    )
    assert cancelled == 1
    # The abandoned request stopped long before its 2000 tokens.
    assert generated < 1000


def test_non_streaming_disconnect_cancels_the_request(cache_dir: Path) -> None:
    settings = make_settings(cache_dir, text_max_queue=1)
    # Seed 3 runs ~1700 tokens (seconds) before the tiny model samples EOS; the client leaves
    # after 0.3 s.
    body = {"prompt": "Solar", "temperature": 1.0, "seed": 3, "max_new_tokens": 2000}
    with live_server(settings) as base:
        before = httpx.get(f"{base}/metrics").text
        try:
            httpx.post(f"{base}/v1/generate", json=body, timeout=0.3)
        except httpx.TimeoutException:
            pass  # the client gave up and closed the connection
        deadline = time.monotonic() + 20
        while True:
            after = httpx.get(f"{base}/metrics").text
            cancelled = sample(after, "articleforge_text_requests_total", status="cancelled")
            if cancelled > sample(before, "articleforge_text_requests_total", status="cancelled"):
                break
            assert time.monotonic() < deadline, "the abandoned request was never cancelled"
            time.sleep(0.05)
        ok = httpx.post(f"{base}/v1/generate", json={"prompt": "x", "max_new_tokens": 2})
        assert ok.status_code == 200
