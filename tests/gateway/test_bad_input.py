"""Bad input to the gateway: NaN and infinities are a 422 naming the field, never stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.gateway.config import GatewaySettings

KEY = "sk-bad-input"


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
        c.headers["Authorization"] = f"Bearer {KEY}"
        yield c
    connection.flushdb()


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(
    ("json_path", "param"),
    [
        ('"text": {{"temperature": {}}}', "text.temperature"),
        ('"text": {{"top_p": {}}}', "text.top_p"),
        ('"images": {{"guidance_scale": {}}}', "images.guidance_scale"),
        ('"metadata": {{"score": {}}}', "metadata"),
    ],
)
def test_nan_and_infinities_are_a_422_naming_the_field(
    client: TestClient, json_path: str, param: str, literal: str
) -> None:
    raw = '{"topic": "Solar power", ' + json_path.format(literal) + "}"
    response = client.post(
        "/v1/articles", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert "finite" in error["message"] or "NaN or Infinity" in error["message"]
    assert client.get("/v1/articles").json()["data"] == []  # nothing was queued


@pytest.mark.parametrize(
    ("tag", "stored"),
    [
        ("es-419", "es-419"),  # Latin American Spanish: a region of three digits
        ("zh-Hant", "zh-Hant"),  # a script subtag
        ("sr-Latn-RS", "sr-Latn-RS"),
        ("EN-us", "en-US"),  # any case in, the canonical one stored
        ("iw", "he"),  # a deprecated subtag, replaced
    ],
)
def test_bcp47_tags_are_accepted_and_stored_canonical(
    client: TestClient, tag: str, stored: str
) -> None:
    reply = client.post("/v1/articles", json={"topic": "Solar power", "language": tag})
    assert reply.status_code == 202, reply.text
    store = client.app.state.store  # type: ignore[attr-defined]
    assert store.get(reply.json()["id"], "request")["language"] == stored


@pytest.mark.parametrize(
    ("tag", "says"),
    [
        ("en_US", "subtags are joined by '-', as in 'en-US'"),
        ("english", "not a valid BCP-47 language tag (RFC 5646)"),
        ("xx-foo", "not a valid BCP-47 language tag (RFC 5646)"),
        ("", "at least 1 character"),
    ],
)
def test_a_bad_language_tag_is_a_422_naming_the_field(
    client: TestClient, tag: str, says: str
) -> None:
    reply = client.post("/v1/articles", json={"topic": "Solar power", "language": tag})
    assert reply.status_code == 422
    error = reply.json()["error"]
    assert error["param"] == "language" and says in error["message"], error


# --- the mistakes new users make (issue 27, point 4): one sentence that says what is wrong and
# what to send, never pydantic's internals or the input twice ---


def _error(reply: object) -> dict[str, object]:
    body = reply.json()  # type: ignore[attr-defined]
    error: dict[str, object] = body["error"]
    return error


def test_a_body_that_is_not_json_says_so(client: TestClient) -> None:
    reply = client.post(
        "/v1/articles",
        content=b"{topic: solar}",
        headers={"Content-Type": "application/json"},
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
    headers = {} if content_type is None else {"Content-Type": content_type}
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
    reply = client.post("/v1/articles", json={"topic": "Solar power", "images": {"size": size}})
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
    created = client.post("/v1/articles", json={"topic": "Solar power", "review": "outline"})
    article_id = created.json()["id"]
    reply = client.put(
        f"/v1/articles/{article_id}/outline",
        json={"title": "Solar at home", "heading": ["Costs"]},
    )
    assert reply.status_code == 422
    assert _error(reply)["param"] == "heading"
    assert _error(reply)["message"] == "heading: unknown field; did you mean `headings`?"
