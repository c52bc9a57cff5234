"""`articleforge up` keeps the ARTICLEFORGE_PUBLIC_URL a user set, and never derives one from a
wildcard bind address (issue 11). Redis database 5, like the other promise tests."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from services.launcher import Studio, child_env, studio_env
from tests.e2e.stack import descendants
from tests.processes import articleforge_command, default_sigint, free_port

PORTS = {"text": 8001, "image": 8002, "gateway": 8000}


def test_a_public_url_the_user_set_is_kept() -> None:
    env = child_env("127.0.0.1", PORTS, "https://articles.example.com")
    assert "ARTICLEFORGE_PUBLIC_URL" not in env  # the user's, from the environment, stays
    assert env["ARTICLEFORGE_TEXT_URL"] == "http://127.0.0.1:8001"


def test_a_derived_public_url_is_never_a_wildcard_address() -> None:
    assert child_env("127.0.0.1", PORTS, None)["ARTICLEFORGE_PUBLIC_URL"] == (
        "http://127.0.0.1:8000"
    )
    for wildcard in ("0.0.0.0", "::"):
        env = child_env(wildcard, PORTS, None)
        assert env["ARTICLEFORGE_PUBLIC_URL"] == f"http://{socket.gethostname()}:8000"
        for url in env.values():
            assert "0.0.0.0" not in url and "[::]" not in url, url
        assert env["ARTICLEFORGE_TEXT_URL"] in ("http://127.0.0.1:8001", "http://[::1]:8001")


def test_the_studio_is_pointed_at_the_stack_with_its_key_unless_the_user_set_its_own() -> None:
    env = studio_env("0.0.0.0", PORTS, Studio(8501, set(), ["sk-first", "sk-second"]))
    assert env == {
        "ARTICLEFORGE_UI_GATEWAY_URL": "http://127.0.0.1:8000",
        "ARTICLEFORGE_UI_TEXT_URL": "http://127.0.0.1:8001",
        "ARTICLEFORGE_UI_IMAGE_URL": "http://127.0.0.1:8002",
        "ARTICLEFORGE_UI_API_KEY": "sk-first",
    }
    mine = studio_env("127.0.0.1", PORTS, Studio(8501, {"ui_gateway_url", "ui_api_key"}, ["k"]))
    assert set(mine) == {"ARTICLEFORGE_UI_TEXT_URL", "ARTICLEFORGE_UI_IMAGE_URL"}
    assert "ARTICLEFORGE_UI_API_KEY" not in studio_env("127.0.0.1", PORTS, Studio(8501, set(), []))


@pytest.mark.e2e
def test_up_on_a_wildcard_address_serves_images_under_the_users_public_url(
    cache_dir: Path, tmp_path: Path, redis_url: str
) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    ports = {name: free_port() for name in ("TEXT", "IMAGE", "GATEWAY")}
    ui_port = free_port()
    env = {
        **os.environ,
        "ARTICLEFORGE_CACHE_DIR": str(cache_dir),
        "ARTICLEFORGE_REDIS_URL": redis_url,
        "ARTICLEFORGE_DATA_DIR": str(tmp_path / "data"),
        "ARTICLEFORGE_API_KEYS": "",
        "ARTICLEFORGE_PUBLIC_URL": "https://articles.example.com",
        **{f"ARTICLEFORGE_{name}_PORT": str(port) for name, port in ports.items()},
    }
    proc = subprocess.Popen(
        # Without the studio (test_up.py runs `up` with it): nothing for it is started.
        [*articleforge_command(), "up", "--host", "0.0.0.0", "--no-ui", "--ui-port", str(ui_port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=default_sigint,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    output: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while not any("Press Ctrl-C" in line for line in output):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(output)
            try:
                output.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        summary = "".join(output).split("articleforge is up.")[1]  # what `up` tells the user
        assert "0.0.0.0" not in summary, summary
        assert "public:    https://articles.example.com" in summary
        assert "UI:" not in summary, summary
        assert not any(b"streamlit" in _cmdline(pid) for pid in descendants(proc.pid))
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", ui_port)) != 0
        gateway = f"http://127.0.0.1:{ports['GATEWAY']}"
        body = {"topic": "Bees in the city", "sections": 1, "target_words": 100}
        body["images"] = {"count": 1, "steps": 2}  # type: ignore[assignment]
        article_id = httpx.post(f"{gateway}/v1/articles", json=body).json()["id"]
        deadline = time.monotonic() + 120
        while (status := httpx.get(f"{gateway}/v1/articles/{article_id}").json())["status"] not in (
            "succeeded",
            "failed",
        ):
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert status["status"] == "succeeded", status
        url = status["article"]["featured_image"]["url"]
        assert url.startswith("https://articles.example.com/v1/images/img_"), url
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        _stop(proc)
        redis.Redis.from_url(redis_url).flushdb()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def _stop(proc: subprocess.Popen[str]) -> None:
    """Ctrl-C, as a user would; if `up` does not end, SIGKILL it and every child it started
    (a SIGKILL of `up` alone would leave its services and worker running)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        for pid in [*descendants(proc.pid), proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


@pytest.mark.e2e
def test_up_stops_at_once_with_the_sentence_when_a_model_cannot_load(
    cache_dir: Path, tmp_path: Path, redis_url: str
) -> None:
    ports = {name: free_port() for name in ("TEXT", "IMAGE", "GATEWAY")}
    env = {
        **os.environ,
        "ARTICLEFORGE_CACHE_DIR": str(cache_dir),
        "ARTICLEFORGE_REDIS_URL": redis_url,
        "ARTICLEFORGE_DATA_DIR": str(tmp_path / "data"),
        "ARTICLEFORGE_TEXT_MODEL": "/nonexistent",
        **{f"ARTICLEFORGE_{name}_PORT": str(port) for name, port in ports.items()},
    }
    started = time.monotonic()
    result = subprocess.run(
        [*articleforge_command(), "up"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert (
        "text: text model '/nonexistent' could not be loaded: the folder /nonexistent does not "
        "exist; set ARTICLEFORGE_TEXT_MODEL to a model folder" in output
    ), output
    assert "Traceback" not in output, output
    assert time.monotonic() - started < 60  # not the 15 minutes of waiting for /readyz
    for port in ports.values():  # everything it started is gone
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0
