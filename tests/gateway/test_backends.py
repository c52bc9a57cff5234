"""Backend and replica settings, the OpenAI request mapping, and what a worker says when every
replica is down. Whole articles on real servers are in tests/e2e/test_backends.py."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess

import pytest
from pydantic import ValidationError

from services.gateway import jobs
from services.gateway.clients import HttpText, ServiceClient, ServiceUnavailable
from services.gateway.config import GatewaySettings
from services.gateway.openai_backends import OpenAIImage, OpenAIText, chat_body, png_size
from tests.processes import articleforge_command, free_port


def settings(**values: object) -> GatewaySettings:
    return GatewaySettings(_env_file=None, **values)  # type: ignore[call-arg]


def test_replica_urls_are_split_and_trimmed() -> None:
    config = settings(text_url=" http://gpu1:8001/ ,http://gpu2:8001", image_url="http://gpu1:8002")
    assert config.text_urls() == ["http://gpu1:8001", "http://gpu2:8001"]
    assert config.image_urls() == ["http://gpu1:8002"]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("", "it is empty"),
        ("gpu1:8001", "'gpu1:8001' is not an http(s) URL with a host"),
        ("http://gpu1:8001,ftp://gpu2", "'ftp://gpu2' is not an http(s) URL"),
        ("http://gpu1:80012", "'http://gpu1:80012' has a bad port"),
        ("http://gpu1:8001?x=1", "must not carry a query"),
        ("http://gpu1:8001,http://gpu1:8001/", "names the same replica twice"),
    ],
)
def test_a_bad_url_is_refused_naming_the_setting(value: str, says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        settings(text_url=value)
    (error,) = caught.value.errors()
    assert error["loc"] == ("text_url",) and says in error["msg"]


def test_the_worker_names_the_variable_of_a_bad_url() -> None:
    """What an operator sees: `articleforge worker` exits 2 with the variable and the URL."""
    env = {**os.environ, "ARTICLEFORGE_IMAGE_URL": "http://gpu1:8002,gpu2:8002"}
    env["ARTICLEFORGE_REDIS_URL"] = "redis://127.0.0.1:9/0"  # never a real queue, whatever happens
    done = subprocess.run(
        [*articleforge_command(), "worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    said = " ".join((done.stdout + done.stderr).split())  # the console wraps long lines
    assert "ARTICLEFORGE_IMAGE_URL: Value error, 'gpu2:8002' is not an http(s) URL" in said


def test_an_unknown_backend_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTICLEFORGE_TEXT_BACKEND", "vllm")
    with pytest.raises(ValidationError, match="text_backend"):
        settings()


def test_openai_urls_are_sdk_base_urls() -> None:
    """`http://host:8000` gets `/v1`; a URL with a path is used as given; the key is a Bearer."""
    config = settings(
        text_backend="openai",
        text_url="http://vllm1:8000,https://llm.example.com/openai/v1",
        text_api_key="sk-text",
        image_backend="openai",
        image_url="http://img:9000",
    )
    text = jobs.text_backend(config)
    image = jobs.image_backend(config)
    assert isinstance(text, OpenAIText) and isinstance(image, OpenAIImage)
    assert text.client.base_urls == ["http://vllm1:8000/v1", "https://llm.example.com/openai/v1"]
    assert text.client.headers == {"Authorization": "Bearer sk-text"}
    assert image.client.base_urls == ["http://img:9000/v1"] and image.client.headers == {}
    assert image.step_progress is False
    assert isinstance(jobs.text_backend(settings()), HttpText)  # the default is unchanged


def test_a_generate_request_becomes_a_streamed_chat_completion() -> None:
    body = {
        "system": "You write.",
        "prompt": "Write about bees.",
        "max_new_tokens": 300,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 42,
        "stop": ["\n\n"],
        "top_k": 0,  # off: not sent (OpenAI itself refuses the field)
        "repetition_penalty": 1.1,  # on: sent, as vLLM and SGLang read it
    }
    assert chat_body(body, "llama-2-7b", include_usage=True) == {
        "model": "llama-2-7b",
        "messages": [
            {"role": "system", "content": "You write."},
            {"role": "user", "content": "Write about bees."},
        ],
        "stream": True,
        "max_tokens": 300,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 42,
        "repetition_penalty": 1.1,
        "stop": ["\n\n"],
        "stream_options": {"include_usage": True},
    }
    messages = [{"role": "user", "content": "Hi"}]
    assert chat_body({"messages": messages}, "m", include_usage=False) == {
        "model": "m",
        "messages": messages,
        "stream": True,
    }


def test_an_image_request_maps_onto_images_generations() -> None:
    body = {"prompt": "a hive", "width": 768, "height": 512, "steps": 20, "seed": 5, "n": 1}
    body |= {"negative_prompt": "blurry", "guidance_scale": 7.0}
    client = ServiceClient("image", "http://img:9000/v1", 1, 1, 0)
    assert OpenAIImage(client, "sdxl", extensions=False).request_body(body) == {
        "prompt": "a hive",
        "n": 1,
        "response_format": "b64_json",
        "size": "768x512",
        "model": "sdxl",
    }
    extended = OpenAIImage(client, None, extensions=True).request_body({"prompt": "x"})
    assert extended == {"prompt": "x", "n": 1, "response_format": "b64_json"}  # native size
    assert OpenAIImage(client, None, extensions=True).request_body(body)["seed"] == 5
    # gpt-image-1 refuses `response_format` (it always answers b64_json).
    assert "response_format" not in OpenAIImage(client, "gpt-image-1", False).request_body(body)


def test_png_size_reads_the_header() -> None:
    # A 3x2 PNG's first 24 bytes: signature, IHDR length and type, width, height.
    png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAMAAAAC")
    assert png_size(png) == (3, 2)
    with pytest.raises(ValueError):
        png_size(b"GIF89a" + bytes(20))


def test_when_every_replica_is_down_the_error_names_them_all() -> None:
    """Nothing listens on either port: each attempt finds no ready replica, and the worker's
    error says which ones it tried."""
    urls = ["http://127.0.0.1:9", f"http://127.0.0.1:{free_port()}"]
    client = ServiceClient("text", urls, 1, 2, 0.01, ready_timeout=0.5, ready_cache=0)
    with pytest.raises(ServiceUnavailable) as caught:
        asyncio.run(HttpText(client).generate({"prompt": "x"}))
    message = str(caught.value)
    assert message.startswith(
        f"the text service (replicas {urls[0]}, {urls[1]}) did not answer after 2 attempts"
    )
    assert "no replica is ready" in message


def test_provenance_cards_name_the_base_model_on_any_server() -> None:
    """vLLM lists an adapter with its path as `root` and the base as `parent`; OpenAI lists
    bare ids. Provenance reads `root` as the base model either way."""
    text = OpenAIText(ServiceClient("text", "http://vllm:8000/v1", 1, 1, 0), "gpt-x", True)
    text._listed = [
        {"id": "llama", "root": "NousResearch/Llama-2-7b-chat-hf", "parent": None},
        {"id": "paper", "root": "/adapters/paper", "parent": "llama"},
        {"id": "gpt-4o-mini", "owned_by": "openai"},
    ]
    cards = {card["id"]: card for card in asyncio.run(text.models())["data"]}
    assert cards["llama"]["root"] == "NousResearch/Llama-2-7b-chat-hf"
    assert cards["paper"]["root"] == "NousResearch/Llama-2-7b-chat-hf"  # its base's root
    assert cards["gpt-4o-mini"]["root"] == "gpt-4o-mini"
    assert cards["gpt-x"] == {"id": "gpt-x", "root": "gpt-x", "parent": None}  # not listed
