"""`articleforge serve text` as a real process, driven by the official `openai` package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.processes import free_port, running

if TYPE_CHECKING:  # the SDK takes a second to import: where it is used, not at collection
    import openai

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def text_url(
    cache_dir: Path, tiny_text_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("logs") / "text.log"
    with running(
        ["serve", "text", "--port", str(port)],
        env={"ARTICLEFORGE_CACHE_DIR": str(cache_dir)},
        ready_url=f"http://127.0.0.1:{port}/readyz",
        log_path=log,
    ):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture()
def client(text_url: str) -> openai.OpenAI:
    import openai

    return openai.OpenAI(base_url=f"{text_url}/v1", api_key="unused", max_retries=0)


def test_models_list(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_chat_plain_and_streamed_agree(client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "You write short articles."},
        {"role": "user", "content": "Write about solar power."},
    ]
    reply = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=20, temperature=0.9, seed=4
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant"
    assert reply.usage is not None and reply.usage.completion_tokens == 20

    stream = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=20,
        temperature=0.9,
        seed=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(pieces) == choice.message.content
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 20


def test_completions_with_stop(client: openai.OpenAI) -> None:
    full = client.completions.create(
        model="tiny", prompt="Solar power is", max_tokens=30, temperature=0
    )
    text = full.choices[0].text
    stop = text[10:13]
    cut = client.completions.create(
        model="tiny", prompt="Solar power is", max_tokens=30, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model="tiny", prompt="Solar power is", max_tokens=30, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text


def test_errors_reach_the_sdk_with_the_design_shape(client: openai.OpenAI, text_url: str) -> None:
    import openai

    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], temperature=3
        )
    response = httpx.get(f"{text_url}/healthz", headers={"X-Request-Id": "probe-7"})
    assert response.headers["x-request-id"] == "probe-7"
    metrics = httpx.get(f"{text_url}/metrics").text
    assert "articleforge_text_requests_total" in metrics
    assert "articleforge_text_queue_depth" in metrics


def test_unsupported_openai_fields_are_refused_by_name(text_url: str) -> None:
    response = httpx.post(
        f"{text_url}/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "x"}], "logprobs": True},
    )
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "logprobs"
    response = httpx.post(
        f"{text_url}/v1/completions", json={"model": "tiny", "prompt": "x", "n": 2}
    )
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "n"


def test_a_bad_setting_stops_serve_with_its_name() -> None:
    import os
    import subprocess

    from tests.processes import articleforge_command

    env = {**os.environ, "ARTICLEFORGE_TEXT_PORT": "99999"}
    result = subprocess.run(
        [*articleforge_command(), "serve", "text"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "configuration error: ARTICLEFORGE_TEXT_PORT" in result.stderr
    assert "65535" in result.stderr


def test_max_completion_tokens_wins_over_max_tokens(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hi"}],
        temperature=0,
        max_tokens=12,
        max_completion_tokens=5,
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    assert reply.choices[0].finish_reason == "length"
