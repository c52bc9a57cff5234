"""/v1/generate on the tiny model: seeds, stop rules, limits, streaming, readiness."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from services.text.app import create_app
from tests.text.conftest import make_settings

PROMPT = "Write an article about solar power."


def generate(client: TestClient, **body: object) -> dict:
    response = client.post("/v1/generate", json={"prompt": PROMPT, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_same_seed_same_text_and_other_seed_differs(client: TestClient) -> None:
    first = generate(client, seed=11, temperature=1.0, max_new_tokens=24)
    again = generate(client, seed=11, temperature=1.0, max_new_tokens=24)
    other = generate(client, seed=12, temperature=1.0, max_new_tokens=24)
    assert first["text"] == again["text"]
    assert first["seed"] == 11
    assert other["text"] != first["text"]


def test_seed_is_returned_when_not_given(client: TestClient) -> None:
    reply = generate(client, temperature=1.0, max_new_tokens=12)
    replay = generate(client, temperature=1.0, max_new_tokens=12, seed=reply["seed"])
    assert replay["text"] == reply["text"]


def test_length_finish_counts_tokens(client: TestClient) -> None:
    reply = generate(client, temperature=0, max_new_tokens=9)
    assert reply["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 9
    assert reply["usage"]["total_tokens"] == reply["usage"]["prompt_tokens"] + 9


def test_stop_sequence_cuts_before_the_stop(client: TestClient) -> None:
    full = generate(client, temperature=0, max_new_tokens=40)["text"]
    # A stop string taken from the middle of the greedy text must cut exactly there.
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected = full[: full.index(stop)]
    cut = generate(client, temperature=0, max_new_tokens=40, stop=[stop, "zzzz-never"])
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == expected
    assert cut["usage"]["completion_tokens"] < 40


def test_chat_messages_use_the_chat_template(client: TestClient) -> None:
    as_chat = generate(client, temperature=0, max_new_tokens=10, system="Be brief.")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    response = client.post(
        "/v1/generate", json={"messages": messages, "temperature": 0, "max_new_tokens": 10}
    )
    assert response.json()["text"] == as_chat["text"]
    # The rendered chat prompt is longer than the bare prompt: the template wrapped it.
    plain = generate(client, temperature=0, max_new_tokens=10)
    assert as_chat["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]


def test_streaming_gives_the_same_text(client: TestClient) -> None:
    body = {"prompt": PROMPT, "temperature": 0.8, "seed": 5, "max_new_tokens": 30, "stop": ["ing"]}
    plain = client.post("/v1/generate", json=body).json()
    deltas, result = [], None
    with client.stream("POST", "/v1/generate", json={**body, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = json.loads(line.split(":", 1)[1])
                if event == "token":
                    deltas.append(data["text"])
                elif event == "result":
                    result = data
    assert result is not None
    assert "".join(deltas) == result["text"] == plain["text"]
    assert result["finish_reason"] == plain["finish_reason"]
    assert len(deltas) > 1


def test_bounds_are_422_in_the_error_shape(client: TestClient) -> None:
    response = client.post(
        "/v1/generate", json={"prompt": "x", "temperature": 5}, headers={"X-Request-Id": "abc-1"}
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "temperature"
    assert "less than or equal to 2" in error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["request_id"] == "abc-1" == response.headers["x-request-id"]

    response = client.post("/v1/generate", json={"prompt": "x", "stop": ["a"] * 9})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "stop"
    assert "at most 8 stop sequences, got 9" in response.json()["error"]["message"]

    response = client.post("/v1/generate", json={"max_new_tokens": 5})
    assert response.status_code == 422
    assert "exactly one of `prompt` or `messages`" in response.json()["error"]["message"]


def test_limits_from_settings_are_400_naming_the_limit(client: TestClient) -> None:
    response = client.post("/v1/generate", json={"prompt": "x", "max_new_tokens": 3000})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_new_tokens"
    assert "<= 2048" in response.json()["error"]["message"]

    response = client.post("/v1/generate", json={"prompt": "word " * 2500})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "prompt"
    assert "the limit is 3072 tokens" in error["message"]


def test_prompt_plus_new_tokens_over_context_is_refused(cache_dir: Path) -> None:
    settings = make_settings(cache_dir, text_max_input_tokens=2048)
    from tests.text.conftest import ready_client

    with ready_client(settings) as client:
        response = client.post(
            "/v1/generate", json={"prompt": "word " * 900, "max_new_tokens": 400}
        )
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == "max_new_tokens"
        assert "context window of 2048 tokens" in error["message"]


def test_unknown_model_is_404_naming_the_served_ones(client: TestClient) -> None:
    response = client.post("/v1/generate", json={"prompt": "x", "model": "gpt-4"})
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "model"
    assert "'tiny'" in response.json()["error"]["message"]


def test_readyz_is_503_before_the_model_is_loaded(cache_dir: Path) -> None:
    # Without `with`, the lifespan never runs, so the model is never loaded.
    client = TestClient(create_app(make_settings(cache_dir)))
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "service_unavailable"
    assert response.headers["retry-after"]
    blocked = client.post("/v1/generate", json={"prompt": "x"})
    assert blocked.status_code == 503
    assert "loading" in blocked.json()["error"]["message"]


def test_perplexity_scores_each_text(client: TestClient) -> None:
    texts = ["Solar power turns sunlight into electricity.", "zq xv jj kk"]
    reply = client.post("/v1/perplexity", json={"texts": texts}).json()
    assert [r["tokens"] > 0 for r in reply["results"]] == [True, True]
    for result in reply["results"]:
        assert (
            abs(result["perplexity"] - 2.718281828 ** result["mean_nll"])
            < 1e-6 * result["perplexity"]
        )
    # A context is fed to the model but not scored: fewer tokens are counted.
    with_context = client.post(
        "/v1/perplexity", json={"texts": texts[:1], "contexts": ["[INST] Write. [/INST]"]}
    ).json()
    assert with_context["results"][0]["tokens"] == reply["results"][0]["tokens"]
    assert with_context["results"][0]["mean_nll"] != reply["results"][0]["mean_nll"]
    # A rendered chat prompt starts with <s>; it is not doubled, so both forms score the same.
    rendered = client.post(
        "/v1/perplexity", json={"texts": texts[:1], "contexts": ["<s>[INST] Write. [/INST]"]}
    ).json()
    assert rendered["results"] == with_context["results"]
    bad = client.post("/v1/perplexity", json={"texts": ["a"], "contexts": ["b", "c"]})
    assert bad.status_code == 422
