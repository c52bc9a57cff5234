"""Text-service fixtures: settings on the tiny model, live servers, a tiny LoRA adapter."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from services.text.app import create_app
from services.text.config import TextSettings
from tests.processes import free_port


def make_settings(cache_dir: Path, **overrides: Any) -> TextSettings:
    return TextSettings(cache_dir=cache_dir, _env_file=None, **overrides)  # type: ignore[call-arg]


def wait_ready(get: Callable[[str], Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "text service never became ready"
        time.sleep(0.05)


@contextmanager
def ready_client(settings: TextSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        wait_ready(client.get)
        yield client


@contextmanager
def refused_readyz(settings: TextSettings) -> Iterator[dict[str, Any]]:
    """The app started on what it cannot serve: the /readyz body once loading has ended."""
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 60
        while True:
            reply = client.get("/readyz")
            assert reply.status_code == 503
            body: dict[str, Any] = reply.json()
            if "loading" not in body["error"]["message"]:
                break
            assert time.monotonic() < deadline, "the text service is still loading"
            time.sleep(0.05)
        yield body


@contextmanager
def live_server(settings: TextSettings) -> Iterator[str]:
    """uvicorn on a free port in a thread: real sockets, real HTTP, this process's metrics."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "live text server never became ready"
        time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def client(cache_dir: Path, tiny_text_path: Path) -> Iterator[TestClient]:
    with ready_client(make_settings(cache_dir)) as c:
        yield c


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_text_path: Path) -> Path:
    """A LoRA adapter for the tiny model with non-zero weights, so that it changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_text_path)
    torch.manual_seed(7)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules="all-linear",
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    out = tmp_path_factory.mktemp("adapters") / "writer"
    peft_model.save_pretrained(out)
    return out
