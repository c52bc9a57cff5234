"""Start real `articleforge` processes on free ports and wait until they are ready."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx


def until(what: str, check: Callable[[], Any], timeout: float = 90, every: float = 0.2) -> Any:
    """``check()``'s first truthy value, polled every ``every`` seconds; fails the test with
    ``what`` when ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def default_sigint() -> None:
    """A ``preexec_fn``: SIGINT back to its default in the child, so that Python turns a Ctrl-C
    into KeyboardInterrupt there even when the test run itself was started as a background job
    (a non-interactive shell starts those with SIGINT ignored, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def articleforge_command() -> list[str]:
    exe = shutil.which("articleforge")
    return [exe] if exe else [sys.executable, "-m", "services.cli"]


@contextmanager
def running(
    args: list[str],
    *,
    env: Mapping[str, str] | None = None,
    ready_url: str | None = None,
    timeout: float = 120.0,
    log_path: Path | None = None,
    program: list[str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Runs `articleforge <args>` (or ``program`` + args); waits for `ready_url` to answer 200;
    stops it on exit."""
    full_env = {**os.environ, **(env or {})}
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    command = (articleforge_command() if program is None else program) + args
    proc = subprocess.Popen(command, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        if ready_url:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    detail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
                    raise RuntimeError(f"{args} exited with {proc.returncode}\n{detail}")
                try:
                    if httpx.get(ready_url, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{args} not ready at {ready_url} after {timeout}s")
                time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log_path:
            log.close()  # type: ignore[union-attr]


def serve_all(
    stack: ExitStack,
    names: tuple[str, ...],
    ports: Mapping[str, int],
    env: Mapping[str, str],
    logs: Path,
) -> None:
    """Starts `articleforge serve NAME --port PORT` for each name, each ready before the next
    starts, each logging to ``logs/NAME.log``, all stopped when ``stack`` closes."""
    for name in names:
        stack.enter_context(
            running(
                ["serve", name, "--port", str(ports[name])],
                env=env,
                ready_url=f"http://127.0.0.1:{ports[name]}/readyz",
                log_path=logs / f"{name}.log",
            )
        )
