"""Bad input against the real processes (`articleforge serve text|image|gateway`): bodies over the
limit get 413 before they are read, NaN is a 422 naming the field, degenerate chats and
sampling parameters are answered, and a service keeps answering /healthz while it tokenizes."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from services.common.config import DEFAULT_MAX_BODY_BYTES
from services.text.schemas import MAX_PROMPT_CHARS
from tests.common.test_body_limit import read_response
from tests.processes import free_port, running

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KEY = "sk-e2e-bad-input"
TEXT_LIMIT = 4 << 20


@pytest.fixture(scope="module")
def services(
    cache_dir: Path,
    tiny_text_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
) -> Iterator[dict[str, str]]:
    from services.common.tiny import build_tiny_image

    build_tiny_image(cache_dir)
    logs = tmp_path_factory.mktemp("bad-input-logs")
    connection = redis.Redis.from_url(redis_url)
    connection.flushdb()
    ports = {name: free_port() for name in ("text", "image", "gateway")}
    env = {
        "ARTICLEFORGE_CACHE_DIR": str(cache_dir),
        "ARTICLEFORGE_REDIS_URL": redis_url,
        "ARTICLEFORGE_DATA_DIR": str(tmp_path_factory.mktemp("bad-input-data")),
        "ARTICLEFORGE_API_KEYS": KEY,
        "ARTICLEFORGE_IMAGE_DEFAULT_STEPS": "2",
    }
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    with (
        running(
            ["serve", "text", "--port", str(ports["text"])],
            env=env,
            ready_url=f"{urls['text']}/readyz",
            log_path=logs / "text.log",
        ),
        running(
            ["serve", "image", "--port", str(ports["image"])],
            env=env,
            ready_url=f"{urls['image']}/readyz",
            log_path=logs / "image.log",
        ),
        running(
            ["serve", "gateway", "--port", str(ports["gateway"])],
            env=env,
            ready_url=f"{urls['gateway']}/readyz",
            log_path=logs / "gateway.log",
        ),
    ):
        yield urls
    connection.flushdb()


PATHS = {"text": "/v1/perplexity", "image": "/v1/images", "gateway": "/v1/articles"}
LIMITS = {"text": TEXT_LIMIT, "image": DEFAULT_MAX_BODY_BYTES, "gateway": DEFAULT_MAX_BODY_BYTES}


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(15)
    return sock


@pytest.mark.parametrize("service", ["text", "image", "gateway"])
def test_a_50_mb_body_is_refused_before_it_is_sent(services: dict[str, str], service: str) -> None:
    # The case: 50 MB announced. The 413 comes before a byte of the body is sent.
    started = time.monotonic()
    with _connect(services[service]) as sock:
        sock.sendall(
            f"POST {PATHS[service]} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Length: {50 << 20}\r\n\r\n".encode()
        )
        status, headers, body = read_response(sock)
    assert time.monotonic() - started < 5
    assert status == 413
    assert body["error"]["type"] == "request_too_large"
    assert f"the limit is {LIMITS[service]} bytes" in body["error"]["message"]
    assert body["error"]["request_id"] == headers["x-request-id"]


@pytest.mark.parametrize("service", ["text", "image", "gateway"])
def test_a_chunked_body_over_the_limit_is_refused_as_it_streams(
    services: dict[str, str], service: str
) -> None:
    chunk = 1 << 20
    with _connect(services[service]) as sock:
        sock.sendall(
            f"POST {PATHS[service]} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        # Up to the limit exactly, then 16 bytes past it, and never the final empty chunk.
        # (Nothing is left unread after the byte that breaks the limit, so closing the
        # connection cannot reset it before the answer is read.)
        for _ in range(LIMITS[service] // chunk):
            sock.sendall(f"{chunk:x}\r\n".encode() + b" " * chunk + b"\r\n")
        sock.sendall(b"10\r\n" + b" " * 16 + b"\r\n")
        status, _, body = read_response(sock)
    assert status == 413
    assert f"the limit is {LIMITS[service]} bytes" in body["error"]["message"]


@pytest.mark.parametrize(
    ("service", "path", "raw", "param"),
    [
        ("text", "/v1/generate", '{"prompt": "hi", "temperature": NaN}', "temperature"),
        ("text", "/v1/perplexity", '{"texts": ["a", 1e400]}', "texts.1"),
        ("image", "/v1/images", '{"prompt": "a", "guidance_scale": Infinity}', "guidance_scale"),
        ("gateway", "/v1/articles", '{"topic": "Solar", "text": {"top_p": NaN}}', "text.top_p"),
    ],
)
def test_nan_and_infinity_are_a_422_naming_the_field(
    services: dict[str, str], service: str, path: str, raw: str, param: str
) -> None:
    response = httpx.post(
        services[service] + path,
        content=raw,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param


def test_the_two_text_500s_that_schemathesis_found_are_answered(services: dict[str, str]) -> None:
    text = services["text"]
    system_only = httpx.post(
        f"{text}/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "system", "content": "Be brief."}]},
    )
    assert system_only.status_code == 422
    assert system_only.json()["error"]["param"] == "messages"
    tiny_top_p = httpx.post(
        f"{text}/v1/completions",
        json={"model": "tiny", "prompt": "", "top_p": 5e-324, "max_tokens": 4},
        timeout=60,
    )
    assert tiny_top_p.status_code == 200, tiny_top_p.text


def test_healthz_stays_quick_while_the_text_service_tokenizes(services: dict[str, str]) -> None:
    text = services["text"]
    prompt = "".join(chr(0x4E00 + i % 20000) for i in range(MAX_PROMPT_CHARS))

    def big() -> httpx.Response:
        return httpx.post(f"{text}/v1/generate", json={"prompt": prompt}, timeout=120)

    gaps = []
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool, httpx.Client() as http:
        futures = [pool.submit(big) for _ in range(4)]
        while not all(f.done() for f in futures):
            asked = time.monotonic()
            assert http.get(f"{text}/healthz", timeout=30).status_code == 200
            gaps.append(time.monotonic() - asked)
            time.sleep(0.01)
    busy = time.monotonic() - started
    for future in futures:
        response = future.result()
        assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"
    assert len(gaps) >= 5, f"tokenized too fast to tell ({busy:.2f} s)"
    assert max(gaps) < max(0.25, busy / 5), f"/healthz took {max(gaps):.2f} s of {busy:.2f} s"
