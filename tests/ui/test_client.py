"""The studio's client turns the API's error shape into sentences a person can act on. The live
stack's errors are covered in test_app.py; the replies below are the gateway's own shape, built
with its helper, for the cases that stack cannot easily give (a 429, a 503, a 500 that is no
JSON)."""

from __future__ import annotations

import httpx
import pytest

from services.common.errors import error_body
from services.ui.client import ApiClient, ApiError, describe
from tests.processes import free_port

URL = "http://gateway:8000"


def reply(status: int, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def test_422_names_the_field_and_keeps_the_limit() -> None:
    body = error_body(
        "invalid_request_error", "images.steps: Input should be <= 150", "images.steps", "r1"
    )
    error = describe("gateway", URL, reply(422, body))
    assert error.param == "images.steps"
    assert str(error) == (
        "The gateway refused the request (422): check `images.steps`: "
        "images.steps: Input should be <= 150"
    )


def test_429_says_when_to_retry() -> None:
    body = error_body("rate_limit_error", "100 articles are already queued", None, "r2")
    error = describe("gateway", URL, reply(429, body, {"Retry-After": "10"}))
    assert error.retry_after == "10"
    assert "retry in 10 s" in str(error) and "100 articles are already queued" in str(error)


def test_503_and_500_name_the_service_and_its_url() -> None:
    body = error_body("service_unavailable", "Redis is down", None, "r3")
    assert str(describe("gateway", URL, reply(503, body, {"Retry-After": "2"}))) == (
        f"The gateway at {URL} is not ready (retry in 2 s): Redis is down"
    )
    crashed = httpx.Response(500, text="Internal Server Error")
    assert str(describe("gateway", URL, crashed)) == (
        f"The gateway at {URL} failed (500): Internal Server Error"
    )


def test_a_refused_connection_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ApiError, match=rf"^The image service at {url} is not reachable"):
        ApiClient("image service", url).json("GET", "/v1/models")
