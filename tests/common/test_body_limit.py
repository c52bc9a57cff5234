"""The body-size limit: 413 in the error shape before a large body is read, on every service."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from services.common.config import DEFAULT_MAX_BODY_BYTES
from services.common.http import install_common
from tests.processes import free_port

LIMIT = 4096


def limited_app(seen: list[int]) -> FastAPI:
    app = FastAPI()
    install_common(app, is_ready=lambda app: None, max_body_bytes=LIMIT)

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        body = await request.body()
        seen.append(len(body))
        return {"bytes": len(body)}

    return app


@contextmanager
def serve(app: FastAPI) -> Iterator[int]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Reads one HTTP/1.1 response with a Content-Length body off a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    return int(status_line.split()[1]), headers, json.loads(rest[:length])


def assert_too_large(status: int, headers: dict[str, str], body: dict[str, Any]) -> None:
    assert status == 413
    error = body["error"]
    assert error["type"] == "request_too_large"
    assert error["param"] is None
    assert f"the limit is {LIMIT} bytes (ARTICLEFORGE_MAX_BODY_BYTES)" in error["message"]
    assert error["request_id"] == headers["x-request-id"]


def test_a_declared_length_over_the_limit_is_refused_before_any_byte_is_sent() -> None:
    seen: list[int] = []
    with serve(limited_app(seen)) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        # 10 GB announced, not one byte of it sent: the answer must come anyway.
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"X-Request-Id: big-1\r\nContent-Length: 10000000000\r\n\r\n"
        )
        status, headers, body = read_response(sock)
    assert_too_large(status, headers, body)
    assert body["error"]["request_id"] == "big-1"
    assert "10000000000 bytes" in body["error"]["message"]
    assert headers["connection"] == "close"
    assert seen == []  # the route never ran


def test_a_chunked_body_is_counted_as_it_arrives_and_refused_mid_stream() -> None:
    seen: list[int] = []
    with serve(limited_app(seen)) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        # 2 chunks of 2 KB reach the 4 KB limit, 16 bytes more pass it; the final 0-length
        # chunk is never sent, so a server that waited for the whole body would never answer.
        for _ in range(2):
            sock.sendall(b"800\r\n" + b"x" * 0x800 + b"\r\n")
        sock.sendall(b"10\r\n" + b"x" * 16 + b"\r\n")
        status, headers, body = read_response(sock)
    assert_too_large(status, headers, body)
    assert "passed" in body["error"]["message"]
    assert seen == []


def test_bodies_within_the_limit_pass_chunked_or_not() -> None:
    seen: list[int] = []
    with serve(limited_app(seen)) as port:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(10)
            sock.sendall(
                b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
                + (b"800\r\n" + b"x" * 0x800 + b"\r\n") * 2
                + b"0\r\n\r\n"
            )
            status, _, body = read_response(sock)
        assert (status, body) == (200, {"bytes": LIMIT})
        exact = TestClient(limited_app(seen)).post("/echo", content=b"y" * LIMIT)
        assert exact.status_code == 200
    assert seen == [LIMIT, LIMIT]


def _apps(limit: int | None) -> dict[str, FastAPI]:
    from services.gateway.app import create_app as gateway
    from services.gateway.config import GatewaySettings
    from services.image.app import create_app as image
    from services.image.config import ImageSettings
    from services.text.app import create_app as text
    from services.text.config import TextSettings

    extra = {} if limit is None else {"max_body_bytes": limit}
    return {
        "text": text(TextSettings(_env_file=None, **extra)),  # type: ignore[call-arg]
        "image": image(ImageSettings(_env_file=None, **extra)),  # type: ignore[call-arg]
        "gateway": gateway(GatewaySettings(_env_file=None, **extra)),  # type: ignore[call-arg]
    }


@pytest.mark.parametrize(
    ("service", "path"),
    [("text", "/v1/generate"), ("image", "/v1/images"), ("gateway", "/v1/articles")],
)
def test_every_service_refuses_a_body_over_its_setting(service: str, path: str) -> None:
    # No lifespan runs: the limit answers before any model, Redis or route is involved.
    client = TestClient(_apps(limit=2048)[service])
    response = client.post(path, content=b"{" + b" " * 4096 + b"}")
    assert response.status_code == 413
    assert "the limit is 2048 bytes" in response.json()["error"]["message"]


def test_the_limit_is_a_setting_with_a_default_per_service(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.gateway.config import GatewaySettings
    from services.image.config import ImageSettings
    from services.text.config import TextSettings

    defaults = {
        name: cls(_env_file=None).max_body_bytes  # type: ignore[call-arg]
        for name, cls in (("text", TextSettings), ("image", ImageSettings), ("gw", GatewaySettings))
    }
    assert defaults == {"text": 4 << 20, "image": DEFAULT_MAX_BODY_BYTES, "gw": 1 << 20}
    monkeypatch.setenv("ARTICLEFORGE_MAX_BODY_BYTES", "65536")
    assert TextSettings(_env_file=None).max_body_bytes == 65536  # type: ignore[call-arg]
    assert GatewaySettings(_env_file=None).max_body_bytes == 65536  # type: ignore[call-arg]
