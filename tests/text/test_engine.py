"""The continuous-batching engine on the CPU: what a user notices of the scheduler and the cache.

* A request that arrives while others decode gets its answer before they finish.
* A long prompt is prefilled in chunks, and chunking does not change the text.
* A request waits for KV pages instead of failing; one that can never fit is a 400.
* A cancelled request gives its pages back at once.
* The lean Llama forward gives HF's logits, through the paged cache too, and mixes base and
  unmerged-adapter rows in one batch with merged-model logits.

The HTTP tests run a real server (``live_server``), and one reaches into its engine where the
order of events must be exact. The forward tests build the paged steps by hand, as the model
runner does, so that each step is visible; the last test runs the same through the engine.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.text import engine as engine_module
from services.text.kv_cache import CacheShape, KVCacheManager
from services.text.llama import LeanLlama, Segment, StepInputs
from services.text.loading import load_text_model
from services.text.schemas import Prompt, SamplingParams
from tests.metrics import sample
from tests.text.conftest import live_server, make_settings, ready_client, refused_readyz

# Seeds 3 and 7 run past 1500 tokens on this prompt before the tiny model samples EOS.
LONG = {"prompt": "Solar", "temperature": 1.0, "max_new_tokens": 1000, "stream": True}
LONG_SEEDS = (3, 7)
SHORT = {"prompt": "Write about solar power.", "temperature": 0, "max_new_tokens": 8}
# 99 tokens: six full chunks of 16 and a last one of 3.
LONG_PROMPT = (
    "Solar panels turn sunlight into electricity for homes and farms. "
    "Wind turbines do the same with moving air, and batteries keep the power for the night. "
    "Gardening in spring starts with the soil: dig it over, add compost, and wait for a dry week "
    "before you sow the first seeds. Water them every evening."
)


@pytest.fixture(scope="module")
def server(cache_dir: Path, tiny_text_path: Path) -> Iterator[str]:
    """A server with the default settings (a prefill chunk of 2048 tokens)."""
    with live_server(make_settings(cache_dir)) as base:
        yield base


def metrics_text(base: str) -> str:
    return httpx.get(f"{base}/metrics").text


async def stream_events(
    client: httpx.AsyncClient, body: dict[str, Any], events: list[tuple[float, str]]
) -> dict[str, Any]:
    """Streams /v1/generate, noting when each SSE event came; returns the `result` event."""
    async with client.stream("POST", "/v1/generate", json=body) as response:
        assert response.status_code == 200
        kind = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((time.monotonic(), kind))
                if kind == "result":
                    result: dict[str, Any] = json.loads(line.split(":", 1)[1])
                    return result
                assert kind == "token", line
    raise AssertionError("the stream ended without a result")


# --- continuous batching ------------------------------------------------------------------------


def test_a_request_that_arrives_while_others_decode_finishes_before_them(server: str) -> None:
    alone = httpx.post(f"{server}/v1/generate", json=SHORT, timeout=30).json()

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any], float, list[Any]]:
        events: list[list[tuple[float, str]]] = [[] for _ in LONG_SEEDS]
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            longs = [
                asyncio.create_task(stream_events(client, {**LONG, "seed": seed}, seen))
                for seed, seen in zip(LONG_SEEDS, events, strict=True)
            ]
            deadline = time.monotonic() + 30
            while not all(events):  # both long requests are decoding
                assert time.monotonic() < deadline, "the long requests never started"
                await asyncio.sleep(0.005)
            for task in longs:
                if task.done():
                    await task  # a stream that failed at once: its error, not a timeout
            response = await client.post("/v1/generate", json=SHORT)
            short_done = time.monotonic()
            assert response.status_code == 200, response.text
            results = await asyncio.gather(*longs)
        return results, response.json(), short_done, events

    longs, short, short_done, events = asyncio.run(scenario())
    # The long requests really ran long: the short one had all of their run to squeeze into.
    for result in longs:
        assert result["finish_reason"] == "length"
        assert result["usage"]["completion_tokens"] == LONG["max_new_tokens"]
    # The short one answered while both long streams were still sending tokens.
    for seen in events:
        later = [kind for at, kind in seen if at > short_done]
        assert later.count("token") > 10, "a long stream had finished before the short reply"
        assert later[-1] == "result"
    # Joining a running batch changes nothing in the answer.
    assert short["text"] == alone["text"]
    assert short["usage"] == alone["usage"]


# --- chunked prefill ----------------------------------------------------------------------------


def test_a_long_prompt_is_prefilled_in_chunks_with_the_same_text(
    cache_dir: Path, server: str
) -> None:
    bodies = [
        {"prompt": LONG_PROMPT, "temperature": 0, "max_new_tokens": 24},
        {"prompt": LONG_PROMPT, "temperature": 0.9, "seed": 5, "max_new_tokens": 24},
    ]

    def run(base: str) -> tuple[list[dict[str, Any]], float]:
        before = sample(metrics_text(base), "articleforge_text_prefill_chunks_total")
        replies = [httpx.post(f"{base}/v1/generate", json=b, timeout=30) for b in bodies]
        after = sample(metrics_text(base), "articleforge_text_prefill_chunks_total")
        for reply in replies:
            assert reply.status_code == 200, reply.text
        return [r.json() for r in replies], after - before

    whole, whole_chunks = run(server)
    # The prefix cache is off on the chunked server, so that both prompts are prefilled in
    # full and their chunks can be counted: with it on, the second one would find 96 of its
    # 99 tokens cached and run one chunk (tests/text/test_prefix_cache.py covers that).
    chunked_settings = make_settings(
        cache_dir, text_prefill_chunk_tokens=16, text_prefix_cache=False
    )
    with live_server(chunked_settings) as chunked_server:
        chunked, chunks = run(chunked_server)

    n = whole[0]["usage"]["prompt_tokens"]
    assert n == 99
    assert whole_chunks == len(bodies)  # one chunk per prompt at the default 2048
    assert chunks == len(bodies) * math.ceil(n / 16)
    assert [r["text"] for r in chunked] == [r["text"] for r in whole]
    assert token_counts(chunked) == token_counts(whole)


def token_counts(replies: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Prompt and generated tokens of each reply (not what the prefix cache took)."""
    return [(r["usage"]["prompt_tokens"], r["usage"]["completion_tokens"]) for r in replies]


# --- KV-cache admission -------------------------------------------------------------------------


def test_kv_admission_waits_for_pages_and_refuses_what_can_never_fit(cache_dir: Path) -> None:
    # 4 pages of 16 tokens. Each request below reserves 3 + 40 = 43 tokens, 3 pages: only one
    # fits at a time.
    settings = make_settings(cache_dir, text_kv_cache_tokens=64, text_kv_page_size=16)
    body: dict[str, Any] = {"prompt": "Solar", "temperature": 1.0, "seed": 3, "max_new_tokens": 40}
    with ready_client(settings) as client:
        assert sample(client.get("/metrics").text, "articleforge_text_kv_cache_tokens") == 64
        engine = client.app.state.engine  # type: ignore[attr-defined]

        async def together() -> list[tuple[Any, Any]]:
            prepared = [
                engine.prepare(
                    Prompt(text=body["prompt"]),
                    SamplingParams(max_new_tokens=40, temperature=1.0, seed=3),
                    None,
                    f"kv-{i}",
                )
                for i in range(2)
            ]
            handles = [engine.submit(p) for p in prepared]
            results = await asyncio.gather(*(h.wait() for h in handles))
            return list(zip(prepared, results, strict=True))

        pairs = sorted(asyncio.run(together()), key=lambda p: p[0].arrival + p[1].queue_seconds)
        (first_request, first), (second_request, second) = pairs
        for result in (first, second):
            assert result.finish_reason == "length"
            assert result.usage.completion_tokens == 40
        # The second started only once the first had finished and given its pages back.
        assert second_request.arrival + second.queue_seconds >= (
            first_request.arrival + first.total_seconds
        )
        assert second.text == first.text  # waiting changed nothing in the answer

        # Through HTTP the same: both 200; and prompt + max_new_tokens == capacity still fits.
        with ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(lambda b: client.post("/v1/generate", json=b), [body] * 2))
        assert [r.status_code for r in replies] == [200, 200]
        assert replies[0].json()["text"] == replies[1].json()["text"] == first.text
        whole = client.post("/v1/generate", json={**body, "max_new_tokens": 61})
        assert whole.status_code == 200, whole.text

        # One more token can never fit: a 400 that says why, at once.
        too_big = client.post("/v1/generate", json={**body, "max_new_tokens": 62})
        assert too_big.status_code == 400
        error = too_big.json()["error"]
        assert error["param"] == "max_new_tokens"
        assert "64 tokens" in error["message"]
        assert "ARTICLEFORGE_TEXT_KV_CACHE_TOKENS" in error["message"]
        openai = client.post(
            "/v1/completions", json={"model": "tiny", "prompt": "Solar", "max_tokens": 62}
        )
        assert openai.status_code == 400
        assert openai.json()["error"]["param"] == "max_tokens"


def poll_gauge(base: str, name: str, done: Any, what: str) -> str:
    """Reads /metrics until ``done(value)``; returns that /metrics text."""
    deadline = time.monotonic() + 5
    while not done(value := sample(text := metrics_text(base), name)):
        assert time.monotonic() < deadline, f"{what}: {name} still reads {value}"
        time.sleep(0.01)
    return text


def assert_cancelled_and_freed(base: str, before: str) -> str:
    """The request was cancelled and the gauges show its pages free again."""
    key = "articleforge_text_requests_total"
    cancelled = sample(before, key, status="cancelled")
    poll_gauge(base, key, lambda v: v > cancelled, "the request was never cancelled")
    poll_gauge(base, "articleforge_text_running_requests", lambda v: v == 0, "after the cancel")
    return poll_gauge(
        base, "articleforge_text_kv_cache_usage", lambda v: v == 0, "after the cancel"
    )


def test_a_cancelled_request_gives_its_pages_back(cache_dir: Path) -> None:
    settings = make_settings(cache_dir, text_kv_cache_tokens=1024, text_kv_page_size=16)
    # 3 + 1000 tokens: 63 of the 64 pages.
    body = {**LONG, "seed": 3, "max_new_tokens": 1000}
    with live_server(settings) as base:
        before = metrics_text(base)
        with httpx.Client(base_url=base, timeout=60) as client:
            with client.stream("POST", "/v1/generate", json=body) as response:
                lines = response.iter_lines()
                while not next(lines).startswith("data:"):
                    pass  # the first token came: the request holds its pages
                usage = "articleforge_text_kv_cache_usage"
                during = poll_gauge(base, usage, lambda v: v > 0, "while decoding")
            # leaving the `with` closes the connection mid-stream
        assert sample(during, usage) == pytest.approx(63 / 64)
        assert sample(during, "articleforge_text_running_requests") == 1
        after = assert_cancelled_and_freed(base, before)

        # A request that needs every page of the cache gets them. Seed 5 samples EOS early.
        whole = {"prompt": "Solar", "temperature": 1.0, "seed": 5, "max_new_tokens": 1021}
        reply = httpx.post(f"{base}/v1/generate", json=whole, timeout=30)
        assert reply.status_code == 200, reply.text
        assert reply.json()["finish_reason"] == "stop"
    # The abandoned request stopped long before its 1000 tokens.
    key = "articleforge_text_generated_tokens_total"
    assert sample(after, key) - sample(before, key) < 900


def test_a_request_cancelled_during_its_prefill_gives_its_pages_back(cache_dir: Path) -> None:
    settings = make_settings(cache_dir, text_kv_cache_tokens=2048, text_prefill_chunk_tokens=16)
    # About 2000 prompt tokens: some 125 chunks of 16, a few tenths of a second of prefill.
    body = {"prompt": " ".join([LONG_PROMPT] * 20), "max_new_tokens": 4, "stream": True}
    with live_server(settings) as base:
        before = metrics_text(base)
        with httpx.Client(base_url=base, timeout=60) as client:
            with client.stream("POST", "/v1/generate", json=body) as response:
                assert response.status_code == 200
                usage = "articleforge_text_kv_cache_usage"
                poll_gauge(base, usage, lambda v: v > 0, "while prefilling")
            # the client leaves before the first token
        after = assert_cancelled_and_freed(base, before)
    key = "articleforge_text_generated_tokens_total"
    assert sample(after, key) == sample(before, key), "the prefill ended before the cancel"


def test_a_failing_warm_up_step_keeps_the_service_unready_and_says_why(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault in warm-up (on a card: a kernel that does not compile) would fail every request
    the same way; the service says so at /readyz instead of warming up forever."""
    real_build = engine_module.build_runner

    def build_faulty_runner(*args: Any) -> Any:
        runner, kv, vocab = real_build(*args)

        def fault(plan: Any, last: Any) -> Any:
            raise RuntimeError("injected kernel compile error")

        runner.run = fault
        return runner, kv, vocab

    monkeypatch.setattr(engine_module, "build_runner", build_faulty_runner)
    with refused_readyz(make_settings(cache_dir)) as ready:  # loading ends within its 60 s
        message = ready["error"]["message"]
    assert "a warm-up step of 1 rows failed: injected kernel compile error" in message


# --- the request checks ---------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/v1/generate", "/v1/chat/completions"])
def test_messages_with_only_a_system_turn_are_a_4xx_in_the_error_shape(
    server: str, route: str
) -> None:
    messages = [{"role": "system", "content": "You are a concise technical writer."}]
    body = {"messages": messages, **({"model": "tiny"} if "chat" in route else {})}
    response = httpx.post(f"{server}{route}", json=body)
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages"
    assert "user" in error["message"]
    assert error["request_id"]


# --- the lean Llama forward against HF ------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_text_path: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_text_path)


def hf_model(path: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(path).eval()


def hf_logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        logits: torch.Tensor = model(input_ids=torch.tensor([ids])).logits[0]
    return logits


def test_lean_llama_gives_hf_logits_on_a_whole_prompt(tiny_text_path: Path, tokenizer: Any) -> None:
    reference = hf_model(tiny_text_path)
    lean = LeanLlama(hf_model(tiny_text_path), [], 2048)  # re-packs (and frees) its HF weights
    ids = tokenizer(LONG_PROMPT).input_ids
    logits = lean.forward(
        torch.tensor(ids), torch.arange(len(ids)), StepInputs(slots=None), None, None, None
    )
    torch.testing.assert_close(logits, hf_logits(reference, ids), atol=1e-5, rtol=1e-5)


@dataclass
class Row:
    """One sequence in the hand-built steps: its tokens so far, its pages, what is cached."""

    tokens: list[int]
    pages: list[int]
    adapter: int = 0
    cached: int = 0
    logits: list[torch.Tensor] = field(default_factory=list)  # one per token it was given


class Paged:
    """Steps of the lean Llama over a paged KV cache, with inputs built as the runner builds
    them: decode rows first (block tables, lengths), then prompt chunks (segments)."""

    def __init__(self, model: LeanLlama, lora: bool = False) -> None:
        shape = CacheShape(len(model.layers), model.kv_heads, model.head_dim, model.dtype)
        self.model, self.lora = model, lora
        self.kv = KVCacheManager(shape, 64, 16, torch.device("cpu"))

    def add(self, prompt: list[int], new_tokens: int, adapter: int = 0) -> Row:
        return Row(list(prompt), self.kv.allocate(len(prompt) + new_tokens), adapter)

    def step(self, decode: list[Row], chunks: list[tuple[Row, int]]) -> None:
        """One forward: a token for each decode row, then ``length`` prompt tokens of each
        chunk. Every row whose prompt is done gets its greedy token appended."""
        ids: list[int] = []
        positions: list[int] = []
        adapters: list[int] = []
        segments: list[Segment] = []
        last: list[int] = []
        spans = [(row, row.cached, 1) for row in decode] + [(r, r.cached, n) for r, n in chunks]
        for i, (row, start, length) in enumerate(spans):
            if i >= len(decode):
                prefix = None
                if start:
                    prefix = torch.tensor(
                        [self.kv.slot(row.pages, p) for p in range(start + length)]
                    )
                segments.append(Segment(len(ids), length, start, prefix))
            ids += row.tokens[start : start + length]
            positions += range(start, start + length)
            adapters += [row.adapter] * length
            last.append(len(ids) - 1)
        inputs = StepInputs(
            slots=torch.tensor([self.kv.slot(r.pages, p) for r, p in zip_positions(spans)]),
            num_decode=len(decode),
            segments=segments,
            lora_rows=torch.tensor(adapters) if self.lora else None,
        )
        if decode:
            width = max(len(r.pages) for r in decode)
            tables = [r.pages + [0] * (width - len(r.pages)) for r in decode]
            inputs.block_tables = torch.tensor(tables, dtype=torch.int32)
            inputs.lengths = torch.tensor([r.cached + 1 for r in decode], dtype=torch.int32)
        logits = self.model.forward(
            torch.tensor(ids),
            torch.tensor(positions),
            inputs,
            self.kv.keys,
            self.kv.values,
            torch.tensor(last),
        )
        for (row, start, length), row_logits in zip(spans, logits, strict=True):
            row.cached = start + length
            if row.cached == len(row.tokens):  # its prompt is done: it gets a token
                row.tokens.append(int(row_logits.argmax()))
                row.logits.append(row_logits)


def zip_positions(spans: list[tuple[Row, int, int]]) -> Iterator[tuple[Row, int]]:
    for row, start, length in spans:
        for position in range(start, start + length):
            yield row, position


def hf_greedy(model: Any, prompt: list[int], new_tokens: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False)
    tokens: list[int] = out[0, len(prompt) :].tolist()
    assert len(tokens) == new_tokens, "HF stopped at EOS; pick another prompt"
    return tokens


def assert_hf_logits(model: Any, row: Row, prompt_len: int) -> None:
    """Every logits row the paged steps gave equals HF's on the same tokens."""
    expected = hf_logits(model, row.tokens[:-1])[prompt_len - 1 :]
    torch.testing.assert_close(torch.stack(row.logits), expected, atol=1e-4, rtol=1e-4)


def test_paged_chunked_prefill_and_decode_give_hf_logits_and_greedy_tokens(
    tiny_text_path: Path, tokenizer: Any
) -> None:
    reference = hf_model(tiny_text_path)
    paged = Paged(LeanLlama(hf_model(tiny_text_path), [], 2048))
    first_prompt = tokenizer(LONG_PROMPT[:90]).input_ids  # 29 tokens
    second_prompt = tokenizer("Gardening in spring starts with the soil: dig it over.").input_ids
    new_tokens = 12
    first = paged.add(first_prompt, new_tokens)
    paged.step([], [(first, 16)])  # the prompt in two chunks
    paged.step([], [(first, len(first_prompt) - 16)])
    paged.step([first], [])
    second = paged.add(second_prompt, new_tokens)
    paged.step([first], [(second, 10)])  # the second prompt's chunks beside a decode row
    paged.step([first], [(second, len(second_prompt) - 10)])
    while len(second.tokens) < len(second_prompt) + new_tokens:
        paged.step([first, second] if len(first.logits) < new_tokens else [second], [])

    for row, prompt in ((first, first_prompt), (second, second_prompt)):
        assert row.tokens[len(prompt) :] == hf_greedy(reference, prompt, new_tokens)
        assert_hf_logits(reference, row, len(prompt))


def test_base_and_unmerged_adapter_rows_in_one_batch_give_merged_model_logits(
    cache_dir: Path, tiny_text_path: Path, tiny_adapter: Path, tokenizer: Any
) -> None:
    adapter = f"writer={tiny_adapter}"
    merged = load_text_model(make_settings(cache_dir, text_adapter=adapter)).model
    unmerged = load_text_model(
        make_settings(cache_dir, text_adapter=adapter, text_merge_adapter=False)
    )
    assert unmerged.unmerged_adapters
    base = hf_model(tiny_text_path)
    paged = Paged(LeanLlama(unmerged.model, ["writer"], 2048), lora=True)
    prompts = [
        ("Write about solar power.", 1),
        ("Write about solar power.", 0),
        ("Gardening in spring starts with the soil.", 1),
    ]
    rows = [paged.add(tokenizer(text).input_ids, 6, adapter=index) for text, index in prompts]
    paged.step([], [(row, len(row.tokens)) for row in rows])  # three prompts, one step
    for _ in range(5):
        paged.step(rows, [])  # three decode rows, two adapters

    for row, (text, index) in zip(rows, prompts, strict=True):
        assert_hf_logits(merged if index else base, row, len(tokenizer(text).input_ids))
    # The adapter really changes the logits, so the rows above are not trivially equal.
    assert not torch.allclose(rows[0].logits[0], rows[1].logits[0], atol=1e-2)


def test_chunked_prefill_beside_a_decoding_stream_gives_hf_greedy_text(
    cache_dir: Path, tiny_text_path: Path, tokenizer: Any
) -> None:
    """The same through the engine's scheduler and runner: a 29-token prompt in two chunks of
    16, then a 99-token prompt in seven chunks while the first one decodes."""
    first: dict[str, Any] = {"prompt": LONG_PROMPT[:90], "temperature": 0, "stream": True}
    first["max_new_tokens"] = 200
    second: dict[str, Any] = {"prompt": LONG_PROMPT, "temperature": 0, "max_new_tokens": 12}

    async def scenario(base: str) -> tuple[dict[str, Any], dict[str, Any]]:
        events: list[tuple[float, str]] = []
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            streaming = asyncio.create_task(stream_events(client, first, events))
            deadline = time.monotonic() + 30
            while not events:
                assert time.monotonic() < deadline, "the first request never started"
                await asyncio.sleep(0.005)
            if streaming.done():
                await streaming  # it failed at once: its error, not a timeout
            response = await client.post("/v1/generate", json=second)
            done = time.monotonic()
            assert response.status_code == 200, response.text
            result = await streaming
        assert events[-1][0] > done, "the first request had finished: no overlap to test"
        return result, response.json()

    with live_server(make_settings(cache_dir, text_prefill_chunk_tokens=16)) as base:
        first_reply, second_reply = asyncio.run(scenario(base))

    reference = hf_model(tiny_text_path)
    for body, reply in ((first, first_reply), (second, second_reply)):
        prompt = tokenizer(body["prompt"]).input_ids
        expected = hf_greedy(reference, prompt, body["max_new_tokens"])
        assert reply["text"] == tokenizer.decode(expected, skip_special_tokens=True)
        assert reply["usage"]["completion_tokens"] == len(expected)
