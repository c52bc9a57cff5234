"""The text playground: one chat completion at a time from the text service's
OpenAI-compatible API (`/v1/chat/completions`, streamed), for tuning prompts and sampling."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import streamlit as st

from services.text.schemas import ChatCompletionRequest
from services.ui.client import TextClient
from services.ui.common import settings, shows_errors
from services.ui.limits import bounds


def _slider(label: str, name: str, value: float, step: float) -> float:
    limit = bounds(ChatCompletionRequest, name)
    return st.slider(
        label, limit.float_low(step), limit.float_high(), value, step, key=f"text-{name}"
    )


@shows_errors
def playground() -> None:
    st.title("Text playground")
    config = settings()
    client = TextClient(config)
    st.caption(f"{client.base_url}/v1/chat/completions (OpenAI-compatible)")
    model = st.selectbox("Model or adapter", client.models(), key="text-model")
    system = st.text_area("System prompt (optional)", key="text-system")
    prompt = st.text_area(
        "Prompt", placeholder="Write an introduction about rooftop solar.", key="text-prompt"
    )
    left, middle, right = st.columns(3)
    with left:
        temperature = _slider("Temperature", "temperature", 0.7, 0.05)
        top_p = _slider("Top p", "top_p", 0.9, 0.05)
    with middle:
        top_k_b = bounds(ChatCompletionRequest, "top_k")
        top_k = st.number_input(
            "Top k (0: off)", top_k_b.int_low(), top_k_b.int_high(), 0, key="text-top_k"
        )
        repetition = _slider("Repetition penalty", "repetition_penalty", 1.0, 0.05)
    with right:
        tokens_b = bounds(ChatCompletionRequest, "max_tokens")
        max_tokens = st.number_input(
            "Max tokens", tokens_b.int_low(), tokens_b.int_high(), 256, key="text-max_tokens"
        )
        seed_b = bounds(ChatCompletionRequest, "seed")
        seed = st.number_input(
            "Seed (empty: random)", seed_b.int_low(), seed_b.int_high(), None, key="text-seed"
        )
    if not st.button("Generate", type="primary", key="text-generate"):
        return
    messages = [{"role": "system", "content": system}] if system.strip() else []
    messages.append({"role": "user", "content": prompt})
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": int(top_k),
        "repetition_penalty": repetition,
        "max_tokens": int(max_tokens),
        "stream_options": {"include_usage": True},
    }
    if seed is not None:
        body["seed"] = int(seed)
    usage: dict[str, Any] = {}

    def deltas() -> Iterator[str]:
        for piece in client.chat(body):
            if isinstance(piece, dict):
                usage.update(piece)
            else:
                yield piece

    with st.container(border=True):
        st.write_stream(deltas())
    if usage:
        st.caption(
            f"{usage.get('prompt_tokens')} prompt tokens, "
            f"{usage.get('completion_tokens')} generated"
        )


playground()
