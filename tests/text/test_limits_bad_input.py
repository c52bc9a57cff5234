"""Bad input to the text service: bounded prompts and perplexity texts, NaN/inf and wrong JSON
types refused by name, degenerate sampling answered, and tokenizing off the event loop."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from services.text.schemas import (
    MAX_MESSAGES,
    MAX_PERPLEXITY_TEXT_CHARS,
    MAX_PERPLEXITY_TEXTS,
    MAX_PERPLEXITY_TOTAL_CHARS,
    MAX_PROMPT_CHARS,
)
from tests.text.conftest import live_server, make_settings

USER = {"role": "user", "content": "Write about solar power."}
SYSTEM = {"role": "system", "content": "Be brief."}
CHAT = {"model": "tiny", "messages": [USER], "max_tokens": 2}


def refused(response: httpx.Response, status: int, param: str, *needles: str) -> dict[str, Any]:
    """Asserts the error shape, the field at fault, and that the message states the limit."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["param"] == param, error
    assert error["request_id"] == response.headers["x-request-id"]
    for needle in needles:
        assert needle in error["message"], error
    return error


# --- bounds on what reaches the tokenizer ------------------------------------------------------


def test_perplexity_texts_are_bounded_in_count_size_and_total(client: TestClient) -> None:
    many = client.post("/v1/perplexity", json={"texts": ["a b c"] * (MAX_PERPLEXITY_TEXTS + 1)})
    refused(many, 422, "texts", f"at most {MAX_PERPLEXITY_TEXTS} items")

    long_one = ["a b c", "x" * (MAX_PERPLEXITY_TEXT_CHARS + 1)]
    refused(
        client.post("/v1/perplexity", json={"texts": long_one}),
        422,
        "texts.1",
        f"at most {MAX_PERPLEXITY_TEXT_CHARS} characters",
    )

    # Each text within its bound, but together over the total.
    count = MAX_PERPLEXITY_TOTAL_CHARS // MAX_PERPLEXITY_TEXT_CHARS + 1
    texts = ["x" * MAX_PERPLEXITY_TEXT_CHARS] * count
    total = sum(map(len, texts))
    refused(
        client.post("/v1/perplexity", json={"texts": texts}),
        422,
        "texts",
        f"total {total} characters",
        f"the limit is {MAX_PERPLEXITY_TOTAL_CHARS}",
    )

    # Contexts count toward the same total.
    half = count // 2 + 1
    body = {"texts": ["x" * MAX_PERPLEXITY_TEXT_CHARS] * half, "contexts": ["y" * 50_000] * half}
    refused(
        client.post("/v1/perplexity", json=body),
        422,
        "contexts",
        f"the limit is {MAX_PERPLEXITY_TOTAL_CHARS}",
    )

    # Within every bound it scores.
    fine = client.post("/v1/perplexity", json={"texts": ["Solar panels turn light into power."]})
    assert fine.status_code == 200, fine.text


def test_prompt_and_message_characters_are_bounded(client: TestClient) -> None:
    over = "x" * (MAX_PROMPT_CHARS + 1)
    refused(
        client.post("/v1/generate", json={"prompt": over}),
        422,
        "prompt",
        f"at most {MAX_PROMPT_CHARS} characters",
    )
    refused(
        client.post("/v1/completions", json={"model": "tiny", "prompt": over}),
        422,
        "prompt",
        f"at most {MAX_PROMPT_CHARS} characters",
    )
    # Each message within the bound, together over it.
    half = {"role": "user", "content": "x" * (MAX_PROMPT_CHARS // 2 + 1)}
    for path, body in (
        ("/v1/generate", {"messages": [half, half]}),
        ("/v1/chat/completions", {**CHAT, "messages": [half, half]}),
    ):
        refused(
            client.post(path, json=body),
            422,
            "messages",
            f"total {2 * (MAX_PROMPT_CHARS // 2 + 1)} characters",
            f"the limit is {MAX_PROMPT_CHARS}",
        )
    too_many = {**CHAT, "messages": [USER] * (MAX_MESSAGES + 1)}
    refused(
        client.post("/v1/chat/completions", json=too_many),
        422,
        "messages",
        f"at most {MAX_MESSAGES} items",
    )


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/chat/completions"])
def test_a_chat_of_only_a_system_message_is_a_422(client: TestClient, path: str) -> None:
    # It used to render an empty prompt and fail in the model with a 500.
    body = {"messages": [SYSTEM], "max_new_tokens": 2}
    if path != "/v1/generate":
        body = {**CHAT, "messages": [SYSTEM]}
    refused(client.post(path, json=body), 422, "messages", "role `user`")
    body["messages"] = [SYSTEM, USER]
    assert client.post(path, json=body).status_code == 200


# --- NaN, infinities, wrong JSON types ---------------------------------------------------------

BAD_NUMBERS = ["NaN", "Infinity", "-Infinity"]


@pytest.mark.parametrize("literal", BAD_NUMBERS)
@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/generate", "temperature"),
        ("/v1/generate", "top_p"),
        ("/v1/generate", "repetition_penalty"),
        ("/v1/chat/completions", "presence_penalty"),
        ("/v1/completions", "frequency_penalty"),
    ],
)
def test_nan_and_infinities_are_a_422_naming_the_field(
    client: TestClient, path: str, field: str, literal: str
) -> None:
    # Python's json (and so FastAPI) parses these non-standard literals; the schema refuses them.
    prompt = '"messages": [{"role": "user", "content": "hi"}]'
    if path != "/v1/chat/completions":
        prompt = '"prompt": "hi"'
    raw = f'{{"model": "tiny", {prompt}, "{field}": {literal}}}'
    response = client.post(path, content=raw, headers={"Content-Type": "application/json"})
    refused(response, 422, field, "finite number")


@pytest.mark.parametrize(
    ("field", "value"),
    [("top_k", True), ("max_new_tokens", "8"), ("seed", 1.5), ("temperature", "0.5")],
)
def test_values_of_the_wrong_json_type_are_a_422(
    client: TestClient, field: str, value: Any
) -> None:
    response = client.post("/v1/generate", json={"prompt": "hi", field: value})
    refused(response, 422, field, "valid")


@pytest.mark.parametrize("top_p", [5e-324, 1e-300, 1e-12])
def test_a_tiny_top_p_samples_instead_of_failing(client: TestClient, top_p: float) -> None:
    # schemathesis found this 500 in the old sampler ("probability tensor contains inf, nan").
    body = {"prompt": "hi", "top_p": top_p, "temperature": 1.0, "max_new_tokens": 4, "seed": 3}
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] >= 1


# --- tokenizing off the event loop -------------------------------------------------------------


def test_healthz_answers_while_long_prompts_are_tokenized(
    cache_dir: Path, tiny_text_path: Path
) -> None:
    """A prompt at the character bound takes a while to tokenize (CJK text: 3 tokens a
    character on the tiny tokenizer); that happens in worker threads, so /healthz stays quick.
    Before, each one blocked the event loop for the whole tokenizing."""
    prompt = "".join(chr(0x4E00 + i % 20000) for i in range(MAX_PROMPT_CHARS))
    with live_server(make_settings(cache_dir)) as base, httpx.Client(base_url=base) as http:
        assert http.get("/healthz").status_code == 200

        def big() -> httpx.Response:
            return httpx.post(f"{base}/v1/generate", json={"prompt": prompt}, timeout=120)

        gaps = []
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(big) for _ in range(4)]
            while not all(f.done() for f in futures):
                asked = time.monotonic()
                assert http.get("/healthz", timeout=30).status_code == 200
                gaps.append(time.monotonic() - asked)
                time.sleep(0.01)
        busy = time.monotonic() - started
    for future in futures:
        # Within the character bound, over the token limit: refused after tokenizing.
        refused(future.result(), 400, "prompt", "tokens long", "ARTICLEFORGE_TEXT_MAX_INPUT_TOKENS")
    assert len(gaps) >= 5, f"the prompts were tokenized too fast to tell ({busy:.2f} s)"
    assert max(gaps) < max(0.25, busy / 5), (
        f"/healthz took up to {max(gaps):.2f} s while 4 prompts were tokenized in {busy:.2f} s"
    )
