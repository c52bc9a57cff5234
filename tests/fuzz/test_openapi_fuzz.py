"""schemathesis fuzzes each service's OpenAPI against the real app on a tiny model.

Every operation of the text, image and gateway services gets generated requests, valid and
invalid by its schema, over real HTTP (uvicorn in a thread). Each answer must not be a 5xx, must
use a status code and content type that the OpenAPI documents for that operation, and must fit
the documented body schema (errors included: they are the one error shape). Invalid data must be
refused with a 4xx.

Bounded for CI: a fixed number of examples per operation and mode, no deadline, no shrinking,
and `derandomize=True` with no example database, so every run sends the same requests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import hypothesis.errors
import pytest
import redis
import schemathesis
import uvicorn
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig

from tests.processes import free_port

pytestmark = pytest.mark.slow

# Examples per operation and generation mode, per service: about a minute in all on a CPU
# (an image costs about a second on `tiny`, a text request or a gateway call milliseconds).
TEXT_EXAMPLES = 50
IMAGE_EXAMPLES = 8
GATEWAY_EXAMPLES = 50
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# schemathesis' default list of refusals for invalid data, plus 413: a body over
# ARTICLEFORGE_MAX_BODY_BYTES is refused before it is parsed (the negative generator builds some).
CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [
                    *("400", "401", "403", "404", "405", "406", "409", "413", "415", "422"),
                    *("428", "429", "5xx"),
                ]
            }
        }
    }
)
KEY = "sk-fuzz"
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


def text_app(cache_dir: Path) -> FastAPI:
    from services.text.app import create_app
    from services.text.config import TextSettings

    # Small limits keep each generated request cheap; larger asks get the documented 400.
    settings = TextSettings(
        _env_file=None,  # type: ignore[call-arg]
        cache_dir=cache_dir,
        text_max_new_tokens=8,
        text_default_max_new_tokens=4,
    )
    return create_app(settings)


def image_app(cache_dir: Path) -> FastAPI:
    from services.image.app import create_app
    from services.image.config import ImageSettings

    settings = ImageSettings(
        _env_file=None,  # type: ignore[call-arg]
        cache_dir=cache_dir,
        image_max_side=64,
        image_max_batch_size=2,
        image_default_steps=2,
        image_max_steps=4,
        image_default_guidance_scale=0.0,  # no CFG unless asked: half the UNet work
        image_preview_every=0,
    )
    return create_app(settings)


def gateway_app(data_dir: Path, redis_url: str) -> FastAPI:
    from services.gateway.app import create_app
    from services.gateway.config import GatewaySettings

    # No worker runs: created articles stay queued. The rate limit is off so that requests
    # reach validation instead of stopping at a 429.
    settings = GatewaySettings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=redis_url,
        data_dir=data_dir,
        api_keys=KEY,
        rate_limit_per_minute=0,
        max_active_articles=100_000,
        text_url="http://127.0.0.1:9",
        image_url="http://127.0.0.1:9",
    )
    return create_app(settings)


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """The app under uvicorn on a free port; yields its base URL once /readyz answers 200."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"fuzz-{port}", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert not getattr(app.state, "load_error", None), app.state.load_error
            assert time.monotonic() < deadline and thread.is_alive(), "server never got ready"
            time.sleep(0.1)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def fuzz(
    app: FastAPI, base: str, examples: int, headers: dict[str, str] | None = None
) -> list[str]:
    """Runs every operation in both modes; returns one report per failing operation and mode."""
    schema = schemathesis.openapi.from_dict(app.openapi(), config=CONFIG)
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        raw = operation.definition.raw
        takes_input = "requestBody" in raw or "parameters" in raw
        # An operation without inputs has no invalid request to generate.
        for mode in MODES if takes_input else (GenerationMode.POSITIVE,):
            sent: list[Any] = []
            try:
                fuzz_one(operation, mode, examples, sent, base_url=base, headers=headers)
            except hypothesis.errors.Unsatisfiable:
                # Nothing in this operation can be made invalid (an unconstrained string
                # path parameter, say): there is no negative case to send.
                assert mode is GenerationMode.NEGATIVE, operation.label
                continue
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup
                failures.append(f"{operation.label} ({mode.value}): {exc}")
                continue
            # It really ran: an operation with a body got every example it was given.
            wanted = examples if "requestBody" in raw and mode is GenerationMode.POSITIVE else 1
            assert len(sent) >= wanted, f"{operation.label} ({mode.value}): {len(sent)} sent"
    return failures


def fuzz_one(
    operation: Any, mode: GenerationMode, examples: int, sent: list[Any], **call: Any
) -> None:
    """Sends ``examples`` generated requests to one operation; raises on the first failure."""

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        # No shrinking: a failure is reported as found, so a failing run stays as bounded in
        # time as a passing one (an image request costs about a second).
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        sent.append(case)
        case.call_and_validate(checks=CHECKS, timeout=60, **call)

    run()


def test_text_service_fuzz(cache_dir: Path, tiny_text_path: Path) -> None:
    app = text_app(cache_dir)
    with serve(app) as base:
        failures = fuzz(app, base, TEXT_EXAMPLES)
    assert not failures, "\n\n".join(failures)


def test_image_service_fuzz(cache_dir: Path) -> None:
    from services.common.tiny import build_tiny_image

    build_tiny_image(cache_dir)
    app = image_app(cache_dir)
    with serve(app) as base:
        failures = fuzz(app, base, IMAGE_EXAMPLES)
    assert not failures, "\n\n".join(failures)


@pytest.fixture()
def redis_db(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    connection.flushdb()
    yield connection
    connection.flushdb()


def test_gateway_fuzz(tmp_path: Path, redis_url: str, redis_db: redis.Redis) -> None:
    app = gateway_app(tmp_path / "data", redis_url)
    with serve(app) as base:
        failures = fuzz(app, base, GATEWAY_EXAMPLES, headers={"Authorization": f"Bearer {KEY}"})
    assert not failures, "\n\n".join(failures)
