"""The E4M3 KV cache (``ARTICLEFORGE_TEXT_KV_CACHE_DTYPE=fp8``) on the CPU's torch path.

* Stored keys and values are E4M3 roundings of the computed ones, saturated at 448 (a bare
  cast would turn them into NaN), and read back in the compute dtype.
* The same memory holds twice the tokens.
* The prefix cache stays exact: a prompt whose prefix comes from the cache gets the same greedy
  text as with the cache off, because a first prompt chunk attends over its own keys rounded as
  the cache stores them.
* The logits move by the KV's rounding only.
* Where it cannot run (the HF runner, CUDA before compute capability 8.9), one sentence says so.

The Triton write and read of E4M3 pages are checked on a card in tests/text/test_kernels_gpu.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from services.common.model_source import ModelLoadError
from services.text.attention import KV_FP8, as_cache_dtype, gather_kv, kv_fp8_refusal, store_kv
from services.text.kv_cache import CacheShape, size_pages
from services.text.loading import check_fp8
from tests.text.conftest import make_settings, ready_client

PAGE = 4
PROMPT = (
    "Fp8 cache. You are writing one section of an article about heat pumps for homeowners. "
    "Keep to the facts and use short paragraphs. "
)


def test_stored_values_are_e4m3_roundings_saturated_at_448() -> None:
    cache = torch.zeros((4, PAGE, 2, 8), dtype=KV_FP8)
    x = torch.randn(6, 2, 8, dtype=torch.bfloat16) * 4
    x[0, 0, 0], x[1, 1, 3] = 1e4, -1e4
    slots = torch.tensor([0, 5, 6, 7, 12, 15])
    store_kv(cache, slots, x)
    back = gather_kv(cache.view(-1, 2, 8), slots, torch.bfloat16)
    assert back.dtype == torch.bfloat16
    assert not back.isnan().any()
    assert float(back[0, 0, 0]) == 448.0 and float(back[1, 1, 3]) == -448.0
    inside = x.abs() <= 448
    # E4M3 keeps 3 mantissa bits: each value within half a step (2^-4 relative) of its own
    err = ((back.float() - x.float()).abs() / x.float().abs().clamp_min(2**-6))[inside]
    assert 0 < float(err.max()) <= 2**-4 + 1e-6
    assert torch.equal(back, as_cache_dtype(x, KV_FP8).to(torch.bfloat16))
    untouched = torch.ones(cache.view(-1, 2, 8).shape[0], dtype=torch.bool)
    untouched[slots] = False
    assert not cache.view(-1, 2, 8)[untouched].float().any()  # nothing written elsewhere


def test_the_same_memory_holds_twice_the_tokens() -> None:
    cpu = torch.device("cpu")
    pages = {
        dtype: size_pages(CacheShape(32, 32, 128, dtype), 16, 512, 4096, cpu, None, 0.9, None)
        for dtype in (torch.bfloat16, KV_FP8)
    }
    assert CacheShape(32, 32, 128, KV_FP8).bytes_per_token == 2**18  # 256 KiB, half of bf16's
    assert pages[KV_FP8] - 1 == 2 * (pages[torch.bfloat16] - 1)


def test_it_is_refused_where_it_cannot_run_with_one_sentence(cache_dir: Path) -> None:
    assert kv_fp8_refusal(None) is None and kv_fp8_refusal((9, 0)) is None
    assert kv_fp8_refusal((8, 0), "the NVIDIA A100-SXM4-80GB") == (
        "ARTICLEFORGE_TEXT_KV_CACHE_DTYPE=fp8 needs compute capability 8.9 or newer (Ada or "
        "Hopper) for its attention kernels, and the NVIDIA A100-SXM4-80GB has 8.0; use "
        "ARTICLEFORGE_TEXT_KV_CACHE_DTYPE=auto"
    )
    settings = make_settings(cache_dir, text_kv_cache_dtype="fp8", text_runner="hf")
    with pytest.raises(ModelLoadError, match="native runner only"):
        check_fp8(settings)
    check_fp8(make_settings(cache_dir, text_kv_cache_dtype="fp8"))  # the CPU: allowed


@pytest.fixture(scope="module")
def fp8_on(cache_dir: Path, tiny_text_path: Path) -> Iterator[TestClient]:
    settings = make_settings(cache_dir, text_kv_cache_dtype="fp8", text_kv_page_size=PAGE)
    with ready_client(settings) as client:
        yield client


@pytest.fixture(scope="module")
def fp8_off(cache_dir: Path, tiny_text_path: Path) -> Iterator[TestClient]:
    settings = make_settings(
        cache_dir,
        text_kv_cache_dtype="fp8",
        text_kv_page_size=PAGE,
        text_prefix_cache=False,
    )
    with ready_client(settings) as client:
        yield client


def _generate(client: TestClient, prompt: str) -> dict[str, object]:
    body = {"prompt": prompt, "temperature": 0, "max_new_tokens": 24}
    reply = client.post("/v1/generate", json=body)
    assert reply.status_code == 200, reply.text
    result: dict[str, object] = reply.json()
    return result


def test_the_prefix_cache_stays_exact_over_an_e4m3_cache(
    fp8_on: TestClient, fp8_off: TestClient
) -> None:
    engine = fp8_on.app.state.engine  # type: ignore[attr-defined]
    assert engine.kv.shape.dtype == KV_FP8 and engine.kv.keys[0].dtype == KV_FP8
    # Each prompt fits one chunk: without the cache the second attends over its own keys in
    # one go; with it, its tail attends over the first prompt's stored pages.
    prompts = [f"{PROMPT}Section {n}: what it costs to run one." for n in (1, 2)]
    replies = [_generate(fp8_on, p) for p in prompts]
    usage = replies[1]["usage"]
    assert isinstance(usage, dict) and usage["prompt_tokens_details"]["cached_tokens"] >= 8 * PAGE
    references = [_generate(fp8_off, p) for p in prompts]
    assert [r["text"] for r in replies] == [r["text"] for r in references]
    assert [r["usage"]["completion_tokens"] for r in replies] == [24, 24]  # type: ignore[index]


def test_the_logits_move_by_the_rounding_of_the_cache_only(
    cache_dir: Path, tiny_text_path: Path
) -> None:
    from services.text.llama import LeanLlama, Segment, StepInputs
    from services.text.loading import load_text_model

    loaded = load_text_model(make_settings(cache_dir))
    lean = LeanLlama(loaded.model, [], 256, False)
    ids = torch.randint(3, lean.vocab, (48,), generator=torch.Generator().manual_seed(1))
    logits = {}
    for dtype in (lean.dtype, KV_FP8):
        size = (16, PAGE, lean.kv_heads, lean.head_dim)
        keys = [torch.zeros(size, dtype=dtype) for _ in lean.layers]
        values = [torch.zeros(size, dtype=dtype) for _ in lean.layers]
        out = []
        for start in (0, 16, 32):  # three chunks: the later ones read the cache
            slots = torch.arange(start + 16) + PAGE  # pages 1.. (page 0 is scratch)
            seg = Segment(offset=0, length=16, start=start, slots=slots if start else None)
            inputs = StepInputs(slots=slots[start:], segments=[seg])
            chunk = ids[start : start + 16]
            out.append(
                lean.forward(chunk, torch.arange(start, start + 16), inputs, keys, values, None)
            )
        logits[dtype] = torch.cat(out).float()
    ref, test = logits[lean.dtype], logits[KV_FP8]
    err = float((test - ref).norm() / ref.norm())
    assert 0 < err < 0.05, err
    assert float((test.argmax(-1) == ref.argmax(-1)).float().mean()) >= 0.9


def test_a_prompt_sees_the_same_keys_whether_its_prefix_was_cached_or_just_computed(
    cache_dir: Path, tiny_text_path: Path
) -> None:
    """48 tokens in one chunk, against 32 read back from the cache and 16 computed after them
    (what a prefix-cache hit does): the last 16 positions' logits agree to float32 rounding,
    far inside the E4M3 rounding that would show if the one-chunk prompt attended over its own
    unrounded keys."""
    from services.text.llama import LeanLlama, Segment, StepInputs
    from services.text.loading import load_text_model

    loaded = load_text_model(make_settings(cache_dir))
    lean = LeanLlama(loaded.model, [], 256, False)
    ids = torch.randint(3, lean.vocab, (48,), generator=torch.Generator().manual_seed(2))
    size = (16, PAGE, lean.kv_heads, lean.head_dim)

    def run(chunks: list[tuple[int, int]]) -> torch.Tensor:
        keys = [torch.zeros(size, dtype=KV_FP8) for _ in lean.layers]
        values = [torch.zeros(size, dtype=KV_FP8) for _ in lean.layers]
        slots = torch.arange(48) + PAGE
        for start, end in chunks:
            seg = Segment(0, end - start, start, slots[:end] if start else None)
            inputs = StepInputs(slots=slots[start:end], segments=[seg])
            logits = lean.forward(
                ids[start:end], torch.arange(start, end), inputs, keys, values, None
            )
        return logits[-16:].float()

    whole, hit = run([(0, 48)]), run([(0, 32), (32, 48)])
    assert float((whole - hit).abs().max() / whole.abs().max()) < 1e-4
