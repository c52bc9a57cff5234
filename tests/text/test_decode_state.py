"""Per-request decoding state: incremental text equals the full decode, stops cut exactly."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from services.text.decode_state import DecodeState
from services.text.schemas import SamplingParams


@pytest.fixture(scope="module")
def tokenizer(tiny_text_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_text_path)


def run(tokenizer: Any, ids: list[int], stop: tuple[str, ...] = ()) -> tuple[list[str], Any]:
    params = SamplingParams(max_new_tokens=len(ids), stop=stop)
    state = DecodeState(tokenizer, [1], params, len(ids), {tokenizer.eos_token_id})
    deltas = []
    for token in ids:
        deltas.append(state.append(token))
        if state.finish_reason:
            break
    return deltas, state


def test_streamed_text_is_the_full_decode(tokenizer: Any) -> None:
    # Random ids include lone bytes of multi-byte characters, the hard case for streaming.
    for seed in range(200):
        rng = random.Random(seed)
        ids = [rng.randrange(3, len(tokenizer)) for _ in range(rng.randint(1, 50))]
        deltas, state = run(tokenizer, ids)
        assert "".join(deltas) == state.text == tokenizer.decode(ids, skip_special_tokens=True)
        assert state.finish_reason == "length"


def test_a_character_split_across_tokens_is_sent_whole(tokenizer: Any) -> None:
    ids = tokenizer("Café ☀ naïve", add_special_tokens=False).input_ids
    deltas, state = run(tokenizer, ids)
    assert state.text == "Café ☀ naïve"
    assert all("\ufffd" not in d for d in deltas)
    assert len([d for d in deltas if d]) > 1


def test_eos_ends_without_its_text(tokenizer: Any) -> None:
    ids = tokenizer("Solar power", add_special_tokens=False).input_ids
    deltas, state = run(tokenizer, [*ids, tokenizer.eos_token_id, *ids])
    assert "".join(deltas) == state.text == "Solar power"
    assert state.finish_reason == "stop"
    assert state.completion_tokens == len(ids) + 1


def test_a_stop_string_across_tokens_is_never_sent(tokenizer: Any) -> None:
    ids = tokenizer("The sun is warm. END of text", add_special_tokens=False).input_ids
    deltas, state = run(tokenizer, ids, stop=("END",))
    assert "".join(deltas) == state.text == "The sun is warm. "
    assert state.finish_reason == "stop"
    assert not any("E" in d for d in deltas)
