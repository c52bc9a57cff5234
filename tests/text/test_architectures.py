"""Which model code runs: the lean forward for Llama, Llama-3 and Mistral shapes; the HF model
for anything else, on the same scheduler and sampler. Random tiny models of each shape, with
the tiny tokenizer, compared against transformers itself."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch

from services.text.engine import TextEngine
from services.text.llama import LeanLlama, StepInputs
from services.text.loading import BASE_ADAPTER, LoadedModel
from services.text.request import GenerationRequest
from services.text.schemas import SamplingParams
from tests.text.conftest import make_settings

PROMPT = [1, 17, 250, 3, 99, 512, 7, 8, 901, 44, 45, 46]
NEW = 10


def _config(kind: str) -> Any:
    from transformers import GPT2Config, LlamaConfig, MistralConfig

    common: dict[str, Any] = dict(vocab_size=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if kind == "gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, **common)
    shape: dict[str, Any] = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as in Llama-3 and Mistral
        max_position_embeddings=256,
        **common,
    )
    if kind == "llama3":
        scaling = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        }
        return LlamaConfig(rope_theta=500000.0, rope_scaling=scaling, **shape)
    return MistralConfig(sliding_window=None, **shape)


def _model(kind: str) -> Any:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    return AutoModelForCausalLM.from_config(_config(kind)).eval()


def _hf_greedy(model: Any, ids: list[int], new: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
        )
    return list(out[0, len(ids) :].tolist())


def _engine_greedy(engine: TextEngine, ids: list[int], new: int) -> str:
    async def run() -> str:
        engine.start()
        params = SamplingParams(max_new_tokens=new, temperature=0.0)
        request = GenerationRequest("arch", ids, params, new, 0, "m", BASE_ADAPTER)
        result = await engine.submit(request).wait()
        assert result.usage.completion_tokens == new
        return result.text

    try:
        return asyncio.run(run())
    finally:
        engine.shutdown()


def _engine(cache_dir: Path, tokenizer: Any, model: Any, **settings: Any) -> TextEngine:
    # EOS is id 2; a random model may sample it, so the comparison runs with no EOS at all.
    model.generation_config.eos_token_id = None
    loaded = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=torch.device("cpu"),
        base_name="m",
        served={"m": BASE_ADAPTER},
        default_name="m",
        context_window=256,
    )
    engine = TextEngine(make_settings(cache_dir, **settings), loaded)
    engine.eos_ids = set()
    engine.warmup()
    return engine


@pytest.fixture(scope="module")
def tokenizer(tiny_text_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_text_path)


@pytest.mark.parametrize("kind", ["llama3", "mistral"])
def test_llama3_and_mistral_shapes_run_on_the_lean_forward_with_hf_logits(kind: str) -> None:
    reference = _model(kind)
    ids = torch.tensor(PROMPT)
    with torch.inference_mode():
        expected = reference(input_ids=ids[None]).logits[0]
    lean = LeanLlama(_model(kind), [], 256)
    got = lean.forward(ids, torch.arange(len(PROMPT)), StepInputs(slots=None), None, None, None)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["llama3", "mistral"])
def test_llama3_and_mistral_shapes_serve_hf_greedy_tokens(
    kind: str, cache_dir: Path, tokenizer: Any
) -> None:
    reference = tokenizer.decode(_hf_greedy(_model(kind), PROMPT, NEW), skip_special_tokens=True)
    # Prompt chunks of 5 and pages of 4: chunked prefill and decode across page boundaries.
    engine = _engine(
        cache_dir, tokenizer, _model(kind), text_prefill_chunk_tokens=16, text_kv_page_size=4
    )
    assert engine.runner is not None and type(engine.runner).__name__ == "NativeRunner"
    assert _engine_greedy(engine, PROMPT, NEW) == reference


def test_another_architecture_runs_through_the_hf_model(cache_dir: Path, tokenizer: Any) -> None:
    reference = tokenizer.decode(_hf_greedy(_model("gpt2"), PROMPT, NEW), skip_special_tokens=True)
    engine = _engine(cache_dir, tokenizer, _model("gpt2"), text_prefill_chunk_tokens=16)
    assert engine.runner is not None and type(engine.runner).__name__ == "HFRunner"
    assert _engine_greedy(engine, PROMPT, NEW) == reference


def test_the_hf_runner_gives_the_native_runner_text(cache_dir: Path, tiny_text_path: Path) -> None:
    from services.text.loading import load_text_model

    outputs = []
    for runner in ("native", "hf"):
        settings = make_settings(cache_dir, text_runner=runner)
        engine = TextEngine(settings, load_text_model(settings))
        engine.warmup()
        assert type(engine.runner).__name__ == (
            "NativeRunner" if runner == "native" else "HFRunner"
        )
        prompt = list(engine.tokenizer("Write about solar power.").input_ids)
        outputs.append(_engine_greedy(engine, prompt, 12))
    assert outputs[0] == outputs[1]


def test_a_chat_template_that_refuses_the_messages_is_a_400(cache_dir: Path) -> None:
    from services.common.errors import InvalidRequest
    from services.text.loading import load_text_model
    from services.text.schemas import Prompt

    settings = make_settings(cache_dir)
    engine = TextEngine(settings, load_text_model(settings))
    # Llama-2-chat's own template raises unless user and assistant turns alternate.
    engine.tokenizer.chat_template = (
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    two_users = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(InvalidRequest, match="roles must alternate") as caught:
        engine.encode_prompt(Prompt(messages=two_users, param="messages"))
    assert caught.value.param == "messages"
