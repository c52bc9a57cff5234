"""`articleforge up`: starts the whole stack with the studio on the ports its options give,
serves an article, replaces a worker that dies, and stops cleanly on Ctrl-C."""

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

from tests.e2e.stack import descendants
from tests.processes import articleforge_command, default_sigint, free_port

pytestmark = pytest.mark.e2e


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_up_without_redis_says_how_to_start_one() -> None:
    env = {**os.environ, "ARTICLEFORGE_REDIS_URL": "redis://127.0.0.1:1/0"}
    result = subprocess.run(
        [*articleforge_command(), "up"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "redis-server" in result.stdout + result.stderr


def test_up_serves_and_stops_on_ctrl_c(cache_dir: Path, tmp_path: Path, redis_url: str) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    ports = {name: free_port() for name in ("TEXT", "IMAGE", "GATEWAY")}
    ui_port = free_port()
    # The settings name ports that are taken: `up` must follow its options instead, for the
    # services, the workers' service URLs and the studio's.
    stale = [socket.socket() for _ in ports]
    for sock in stale:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
    env = {
        **os.environ,
        "ARTICLEFORGE_CACHE_DIR": str(cache_dir),
        "ARTICLEFORGE_REDIS_URL": redis_url,
        "ARTICLEFORGE_DATA_DIR": str(tmp_path / "data"),
        "ARTICLEFORGE_API_KEYS": "",
        **{
            f"ARTICLEFORGE_{name}_PORT": str(sock.getsockname()[1])
            for name, sock in zip(ports, stale, strict=True)
        },
    }
    for name in [v for v in env if v.startswith("ARTICLEFORGE_UI_")]:
        del env[name]  # `up` points the studio at its own gateway unless the user says otherwise
    options = [f"--{name.lower()}-port={port}" for name, port in ports.items()]
    proc = subprocess.Popen(
        [*articleforge_command(), "up", "--ui-port", str(ui_port), *options],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=default_sigint,
    )
    lines = _lines(proc)
    output: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while not any("Press Ctrl-C" in line for line in output):
            assert time.monotonic() < deadline, "".join(output)
            try:
                output.append(lines.get(timeout=1))
            except queue.Empty:
                assert proc.poll() is None, "".join(output)
        gateway = f"http://127.0.0.1:{ports['GATEWAY']}"
        assert any(f"{gateway}/docs" in line for line in output)
        # The studio answers on the URL `up` prints, and talks to this gateway and services.
        studio = f"http://127.0.0.1:{ui_port}"
        assert any(f"UI:        {studio}" in line for line in output), "".join(output)
        health = httpx.get(f"{studio}/_stcore/health", timeout=10)
        assert health.status_code == 200 and health.text == "ok"
        (ui,) = [pid for pid in descendants(proc.pid) if b"streamlit" in _cmdline(pid)]
        assert _parent(ui) == proc.pid
        ui_env = _environ(ui)
        assert ui_env["ARTICLEFORGE_UI_GATEWAY_URL"] == gateway
        assert ui_env["ARTICLEFORGE_UI_IMAGE_URL"] == f"http://127.0.0.1:{ports['IMAGE']}"
        assert "ARTICLEFORGE_UI_API_KEY" not in ui_env  # this gateway runs with auth off
        (serving,) = [p for p in descendants(proc.pid) if b"serve\0gateway" in _cmdline(p)]
        gateway_env = _environ(serving)
        assert gateway_env["ARTICLEFORGE_TEXT_URL"] == f"http://127.0.0.1:{ports['TEXT']}"
        assert gateway_env["ARTICLEFORGE_IMAGE_URL"] == f"http://127.0.0.1:{ports['IMAGE']}"
        assert _article(gateway)["status"] == "succeeded"

        # SIGKILL the only worker (and its scheduler): `up` starts another, and work goes on.
        # The worker itself: `up`'s own child (its work horse, forked for a job, says "worker" too).
        (worker,) = [
            pid
            for pid in descendants(proc.pid)
            if b"worker" in _cmdline(pid) and _parent(pid) == proc.pid
        ]
        for pid in [worker, *descendants(worker)]:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not any("worker exited with -9; starting another" in line for line in output):
            assert time.monotonic() < deadline, "".join(output)
            try:
                output.append(lines.get(timeout=1))
            except queue.Empty:
                assert proc.poll() is None, "".join(output)
        assert _article(gateway)["status"] == "succeeded"

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        for sock in stale:
            sock.close()
    for port in [*ports.values(), ui_port]:  # every child is gone: nothing listens any more
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state: the parent id


def _environ(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/environ").read_text()
    return dict(item.split("=", 1) for item in text.split("\0") if "=" in item)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def _article(gateway: str) -> dict[str, object]:
    article_id = httpx.post(
        f"{gateway}/v1/articles",
        json={
            "topic": "Bees in the city",
            "sections": 1,
            "target_words": 100,
            "images": {"count": 1, "steps": 2},
        },
    ).json()["id"]
    deadline = time.monotonic() + 120
    while (status := httpx.get(f"{gateway}/v1/articles/{article_id}").json())["status"] not in (
        "succeeded",
        "failed",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    return dict(status)
