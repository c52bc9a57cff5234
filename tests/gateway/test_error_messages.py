"""What a client sees for the mistakes new users make (issue 27, point 4): one sentence that
says what is wrong and what to send, never pydantic's internals or the input twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.gateway.config import GatewaySettings

KEY = "sk-messages"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture()
def client(tmp_path: Path, redis_url: str) -> Iterator[TestClient]:
    connection = redis.Redis.from_url(redis_url)
    connection.flushdb()
    settings = GatewaySettings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        api_keys=KEY,
        rate_limit_per_minute=0,
    )
    with TestClient(create_app(settings)) as c:
        yield c
    connection.flushdb()


def _error(reply: object) -> dict[str, object]:
    body = reply.json()  # type: ignore[attr-defined]
    error: dict[str, object] = body["error"]
    return error


def test_a_body_that_is_not_json_says_so(client: TestClient) -> None:
    reply = client.post(
        "/v1/articles",
        content=b"{topic: solar}",
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert reply.status_code == 422
    assert _error(reply)["param"] == "body"
    assert _error(reply)["message"] == (
        "the body is not valid JSON (Expecting property name enclosed in double quotes)"
    )


@pytest.mark.parametrize(
    ("content_type", "named"), [(None, "none"), ("text/plain", "`text/plain`")]
)
def test_json_without_its_content_type_asks_for_it(
    client: TestClient, content_type: str | None, named: str
) -> None:
    headers = dict(AUTH) if content_type is None else {**AUTH, "Content-Type": content_type}
    reply = client.post("/v1/articles", content=b'{"topic": "Solar power"}', headers=headers)
    assert reply.status_code == 422
    assert _error(reply) | {"request_id": None} == {
        "type": "invalid_request_error",
        "message": "send the body as JSON with the header `Content-Type: application/json` "
        f"(the request's Content-Type: {named})",
        "param": "body",
        "request_id": None,
    }


@pytest.mark.parametrize(
    ("size", "tail"),
    [
        ("99999x99999", "got '99999x99999' (99999 is not)"),
        ("512x500", "got '512x500' (500 is not)"),
        ("big", "got 'big'"),
    ],
)
def test_a_bad_size_states_the_limit_once(client: TestClient, size: str, tail: str) -> None:
    reply = client.post(
        "/v1/articles", json={"topic": "Solar power", "images": {"size": size}}, headers=AUTH
    )
    message = str(_error(reply)["message"])
    assert message == (
        "images.size: must be WIDTHxHEIGHT with width and height multiples of 8 in 64..2048 "
        f"(such as 512x512), {tail}"
    )
    assert message.count("got ") == 1 and "Value error" not in message


@pytest.mark.parametrize(
    ("header", "says"),
    [
        (
            f"{KEY}",
            "the Authorization header must read `Bearer <key>`; it has no `Bearer ` before the key",
        ),
        (
            f"Token {KEY}",
            "the Authorization header must read `Bearer <key>`; it has the `Token` scheme",
        ),
        ("Bearer ", "the Authorization header has `Bearer` but no key after it"),
    ],
)
def test_a_key_without_bearer_is_told_how_to_send_it(
    client: TestClient, header: str, says: str
) -> None:
    reply = client.post(
        "/v1/articles", json={"topic": "Solar power"}, headers={"Authorization": header}
    )
    assert reply.status_code == 401 and _error(reply)["message"] == says
    assert KEY not in str(_error(reply))  # the key is never echoed back


def test_a_misspelt_field_is_named_as_unknown_before_the_one_it_leaves_missing(
    client: TestClient,
) -> None:
    created = client.post(
        "/v1/articles", json={"topic": "Solar power", "review": "outline"}, headers=AUTH
    )
    article_id = created.json()["id"]
    reply = client.put(
        f"/v1/articles/{article_id}/outline",
        json={"title": "Solar at home", "heading": ["Costs"]},
        headers=AUTH,
    )
    assert reply.status_code == 422
    assert _error(reply)["param"] == "heading"
    assert _error(reply)["message"] == "heading: unknown field; did you mean `headings`?"
