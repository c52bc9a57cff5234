"""The model runner on the CPU with the ``tiny`` model, driven by the real scheduler:

* ``build_runner`` picks the lean runner for a Llama and the HF one when asked, and sizes the
  KV cache from the settings.
* A step's logits, one row per sampled request in ``plan.sampled`` order, equal the HF model's
  on the same tokens, through chunked prefills, decode rows fed from ``last`` (per sampler
  row), and a new request that takes over a finished one's pages, on either runner.
* ``score`` gives the HF model's mean negative log-likelihood.
* Decode graph buckets, and the warm-up traffic's waves.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from services.text.kv_cache import KVCacheManager
from services.text.loading import load_text_model
from services.text.model_runner import (
    HFRunner,
    NativeRunner,
    Runner,
    build_runner,
    graph_buckets,
    warmup_waves,
)
from services.text.perplexity import mean_nll
from services.text.request import GenerationRequest
from services.text.scheduler import Scheduler
from services.text.schemas import SamplingParams
from services.text.sequence import Phase, SeqState
from tests.text.conftest import make_settings

ROWS = 4
CHUNK = 16  # the settings' smallest chunk: the prompts below take two or three steps
TEXT = "The harbour town woke slowly; fishing boats rocked on the grey water near the pier."


@pytest.fixture(scope="module")
def reference(tiny_text_path: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(tiny_text_path).eval()


def build(cache_dir: Path, runner: str) -> tuple[Runner, KVCacheManager, int, Any]:
    settings = make_settings(
        cache_dir,
        text_runner=runner,
        text_max_batch_size=ROWS,
        text_prefill_chunk_tokens=CHUNK,
        text_kv_cache_tokens=256,
        text_kv_page_size=8,
    )
    loaded = load_text_model(settings)
    built = build_runner(settings, loaded)
    return (*built, loaded)


@pytest.fixture(scope="module", params=["native", "hf"])
def built(request: pytest.FixtureRequest, cache_dir: Path, tiny_text_path: Path) -> Iterator[Any]:
    yield build(cache_dir, request.param)


def test_build_runner_picks_the_runner_and_sizes_the_cache(
    cache_dir: Path, tiny_text_path: Path, reference: Any
) -> None:
    native, kv, vocab, _ = build(cache_dir, "auto")
    assert isinstance(native, NativeRunner) and native.graphs == {}  # no graphs off CUDA
    assert kv.capacity_tokens == 256 and kv.page_size == 8 and kv.prefix_cache
    assert vocab == reference.config.vocab_size
    assert kv.keys[0].shape[:2] == (256 // 8 + 1, 8)  # every page, and the scratch page

    hf, kv, vocab, _ = build(cache_dir, "hf")
    assert isinstance(hf, HFRunner) and not kv.prefix_cache and kv.keys == []
    assert vocab == reference.config.vocab_size


def hf_next_logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        logits: torch.Tensor = model(input_ids=torch.tensor([ids])).logits[0, -1]
    return logits


def sequence(loaded: Any, ids: list[int], new_tokens: int) -> SeqState:
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0)
    request = GenerationRequest("t", ids, params, new_tokens, 0, "tiny", "__base__")
    return SeqState.of(None, request, 0, loaded.tokenizer, loaded.eos_ids)


def test_every_steps_logits_equal_hf_through_chunks_decode_rows_and_reused_pages(
    built: Any, reference: Any
) -> None:
    runner, kv, vocab, loaded = built
    ids = list(loaded.tokenizer(TEXT).input_ids)
    assert len(ids) > 2 * CHUNK
    scheduler = Scheduler(kv, ROWS, CHUNK)
    last = torch.zeros(ROWS, dtype=torch.int64)
    free_rows = list(range(ROWS - 1, -1, -1))
    a, b = sequence(loaded, ids, 6), sequence(loaded, ids[: CHUNK // 2], 3)
    later = sequence(loaded, ids[3:20], 4)  # joins once B is done, on B's pages
    scheduler.add(a)
    scheduler.add(b)
    pages: dict[int, list[int]] = {}
    checked = 0
    while scheduler.busy:
        plan = scheduler.schedule()
        for seq in plan.admitted:
            seq.row = free_rows.pop()
            pages[id(seq)] = list(seq.pages)
        logits = runner.run(plan, last)
        assert logits.shape == (len(plan.sampled), vocab)
        for seq, row_logits in zip(plan.sampled, logits, strict=True):
            so_far = seq.prompt_ids + seq.output_ids
            expected = hf_next_logits(reference, so_far)
            torch.testing.assert_close(row_logits, expected, atol=1e-4, rtol=1e-4)
            token = int(row_logits.argmax())
            last[seq.row] = token  # the decode row's input at the next step, per sampler row
            seq.output_ids.append(token)
            seq.sampled += 1
            checked += 1
        scheduler.advance(plan)
        for seq in list(scheduler.running):
            if len(seq.output_ids) == seq.max_new_tokens:
                scheduler.finish(seq)
                runner.release(seq)
                free_rows.append(seq.row)
                if seq is b:
                    scheduler.add(later)
    assert checked == 6 + 3 + 4
    assert [s.phase for s in (a, b, later)] == [Phase.DONE] * 3
    assert set(pages[id(later)]) & set(pages[id(b)]), "the new request reuses freed pages"
    assert kv.used_pages == 0


def test_score_is_the_hf_mean_negative_log_likelihood(built: Any, reference: Any) -> None:
    runner, _, _, loaded = built
    ids = list(loaded.tokenizer(TEXT).input_ids)
    for lead in (1, 10):
        expected = mean_nll(reference, ids, lead, torch.device("cpu"))
        assert runner.score(ids, lead, 0) == pytest.approx(expected, rel=1e-4)


def test_decode_graph_buckets_grow_by_doubling_then_by_steps() -> None:
    assert graph_buckets(1) == [1]
    assert graph_buckets(6) == [1, 2, 4, 6]
    assert graph_buckets(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    assert graph_buckets(100)[-4:] == [64, 80, 96, 100]


def test_warmup_traffic_mixes_steps_and_shares_a_prefix_on_the_native_runner(
    built: Any,
) -> None:
    runner, kv, _, loaded = built
    waves = warmup_waves(runner, kv, loaded, CHUNK)
    started = time.monotonic()
    assert waves[0][1] is Phase.DONE and len(waves[0][0]) == 1
    if not isinstance(runner, NativeRunner):
        assert len(waves) == 1
        return
    [(_, first), ([stream], until), (wave, last_phase)] = waves
    assert until is Phase.DECODE and last_phase is Phase.DONE and wave[0] is stream
    one, longer, hit = wave[1:]
    assert longer.prompt_len > CHUNK  # a prompt that takes more than one chunk
    shared = min(one.prompt_len, hit.prompt_len) // 2
    assert one.prompt_ids[:shared] == hit.prompt_ids[:shared] != longer.prompt_ids[:shared]
    assert all(s.handle is None and s.arrival <= started for w, _ in waves for s in w)
