"""``articleforge up``: text, image, gateway and a worker as child processes, on one machine.

It checks Redis first (and says how to start one), starts each child, waits until each answers
``/readyz``, prints the URLs, and on Ctrl-C (or SIGTERM) stops them all: SIGTERM first, then
SIGKILL for any child still alive after a grace period. A worker that dies is replaced, as an
orchestrator would (its stage runs again on another worker, see docs/reliability.md); a service
that dies, or a worker that dies right after its start, stops everything.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

logger = logging.getLogger(__name__)

# A replacement worker that dies sooner than this after its start is broken, not crashed.
WORKER_MIN_UPTIME_SECONDS = 10.0

REDIS_HINT = (
    "start one with `redis-server --daemonize yes --bind 127.0.0.1 --port 6379` "
    "(or `docker run -d -p 6379:6379 redis:7`), or point ARTICLEFORGE_REDIS_URL at yours"
)


@dataclass
class Child:
    name: str
    args: list[str]
    ready_url: str | None
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    proven: bool = False  # it was alive when everything was ready, or ran for a while


def children(host: str, ports: dict[str, int], workers: int) -> list[Child]:
    out = [
        Child(
            name,
            ["serve", name, "--host", host, "--port", str(ports[name])],
            f"http://{host}:{ports[name]}/readyz",
        )
        for name in ("text", "image", "gateway")
    ]
    out += [Child(f"worker-{n}", ["worker"], None) for n in range(workers)]
    return out


def stop_all(running: list[Child], grace: float = 15.0) -> None:
    for child in running:
        if child.process and child.process.poll() is None:
            child.process.terminate()
    deadline = time.monotonic() + grace
    for child in running:
        if child.process is None:
            continue
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def up(
    host: str,
    ports: dict[str, int],
    workers: int,
    redis_ok: Callable[[], str | None],
    say: Callable[[str], None],
    ready_timeout: float = 900.0,
) -> int:
    problem = redis_ok()
    if problem is not None:
        say(f"no Redis: {problem}\n{REDIS_HINT}")
        return 1
    env = {
        **os.environ,
        "ARTICLEFORGE_TEXT_URL": f"http://{host}:{ports['text']}",
        "ARTICLEFORGE_IMAGE_URL": f"http://{host}:{ports['image']}",
        "ARTICLEFORGE_PUBLIC_URL": f"http://{host}:{ports['gateway']}",
    }
    started = children(host, ports, workers)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = signal.signal(signal.SIGTERM, on_signal)

    def spawn(child: Child) -> None:
        child.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *child.args], env=env
        )
        child.started, child.proven = time.monotonic(), False

    try:
        for child in started:
            spawn(child)
        deadline = time.monotonic() + ready_timeout
        waiting = [c for c in started if c.ready_url]
        while waiting and not stopping:
            for child in list(waiting):
                assert child.process is not None and child.ready_url is not None
                if child.process.poll() is not None:
                    say(
                        f"{child.name} exited with {child.process.returncode} before it was "
                        "ready; stopping everything"
                    )
                    return 1
                try:
                    if httpx.get(child.ready_url, timeout=2).status_code == 200:
                        say(f"{child.name} ready")
                        waiting.remove(child)
                except httpx.HTTPError:
                    pass
            if time.monotonic() > deadline:
                say(f"not ready after {ready_timeout:.0f}s: {[c.name for c in waiting]}")
                return 1
            time.sleep(0.5)
        for child in started:
            child.proven = child.process is not None and child.process.poll() is None
        if not stopping:
            base = f"http://{host}:{ports['gateway']}"
            say(
                f"articleforge is up.\n  API:       {base}  (docs: {base}/docs)\n"
                f"  text:      http://{host}:{ports['text']}/docs\n"
                f"  image:     http://{host}:{ports['image']}/docs\n"
                f"  workers:   {workers}\nPress Ctrl-C to stop."
            )
        while not stopping:
            for child in started:
                assert child.process is not None
                code = child.process.poll()
                if code is None:
                    continue
                uptime = time.monotonic() - child.started
                if child.ready_url is None and (child.proven or uptime > WORKER_MIN_UPTIME_SECONDS):
                    say(f"{child.name} exited with {code}; starting another in its place")
                    spawn(child)
                    continue
                say(f"{child.name} exited with {code}; stopping")
                return 1
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        say("stopping ...")
        stop_all(started)
        signal.signal(signal.SIGTERM, previous)
