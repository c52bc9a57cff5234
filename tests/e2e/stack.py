"""A whole system for reliability tests: text, image and gateway servers, a pool of workers that
can be killed and replaced, and a webhook receiver, all real processes on the real Redis."""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.processes import free_port, running
from tests.webhook_receiver import Receiver

SECRET = "whsec_" + base64.b64encode(b"reliability-tests-secret-0123456").decode()


@dataclass
class Stack:
    gateway: str
    env: dict[str, str]
    redis: redis.Redis
    data_dir: Path
    logs: Path
    hook_url: str
    deliveries: list[tuple[dict[str, str], bytes]]
    _exit: ExitStack
    # text/image/gateway -> settings that service alone gets, over ``env``
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)
    services: dict[str, Any] = field(default_factory=dict)  # text/image/gateway -> Popen
    workers: dict[str, Any] = field(default_factory=dict)  # name -> Popen
    _started: int = 0

    def _serve(self, name: str, attempt: int = 0) -> None:
        port = self.env[f"ARTICLEFORGE_{name.upper()}_URL"].rsplit(":", 1)[1]
        self.services[name] = self._exit.enter_context(
            running(
                ["serve", name, "--port", port],
                env={**self.env, **self.service_env.get(name, {})},
                ready_url=f"http://127.0.0.1:{port}/readyz",
                log_path=self.logs / f"{name}{attempt or ''}.log",
                timeout=300,
            )
        )

    def restart_service(self, name: str) -> None:
        """SIGKILL one service and start it again on its port; returns once it is ready."""
        proc = self.services.pop(name)
        proc.kill()
        proc.wait()
        self._serve(name, attempt=len(list(self.logs.glob(f"{name}*.log"))))

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.gateway, timeout=60)

    def add_worker(self, pool_size: int = 1) -> str:
        """Starts an `articleforge worker` pool (of one worker unless told) named ``w{n}``; its
        workers are ``w{n}.1``, ``w{n}.2``, ... (the names RQ's job hashes carry)."""
        name = f"w{self._started}"
        self._started += 1
        self.workers[name] = self._exit.enter_context(
            running(
                ["worker", "--name", name, "--pool-size", str(pool_size)],
                env=self.env,
                log_path=self.logs / f"{name}.log",
            )
        )
        return name

    def _pid(self, name: str) -> int | None:
        """The process of a pool (``w0``) or of one of its workers (``w0.2``, as RQ knows it)."""
        if name in self.workers:
            return int(self.workers[name].pid)
        raw = self.redis.hget(f"rq:worker:{name}", "pid")
        return None if raw is None else int(raw)

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL a pool, or one worker of a pool, and everything under it (work horse,
        scheduler), as a crashed host or an OOM-killed container would lose them; returns the
        pids killed. A pool starts a new worker in place of a killed one."""
        pid = self._pid(name)
        if pid is None:
            return []
        pids = [pid, *descendants(pid)]
        for victim in pids:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if name in self.workers:
            self.workers.pop(name).wait()
        return pids

    def kill_horse(self, name: str) -> int | None:
        """SIGKILL only the work horse of a live worker (RQ forks it into its own process group);
        None when the worker runs none (its job just ended)."""
        pid = self._pid(name)
        if pid is None:
            return None
        horses = [p for p in descendants(pid) if _leads_its_group(p)]
        if len(horses) != 1:
            return None
        try:
            os.kill(horses[0], signal.SIGKILL)
        except ProcessLookupError:
            return None
        return horses[0]

    def hooks_for(self, article_id: str) -> list[dict[str, Any]]:
        found = []
        for headers, raw in list(self.deliveries):
            payload = json.loads(raw)
            if payload["data"]["id"] == article_id:
                found.append({"webhook-id": headers["webhook-id"], **payload})
        return found

    def job(self, job_id: str) -> dict[str, str]:
        raw = self.redis.hgetall(f"rq:job:{job_id}")
        return {k.decode(): v.decode(errors="replace") for k, v in raw.items()}

    def wait_for(
        self, article_ids: list[str], timeout: float, poll: float = 0.5
    ) -> dict[str, dict[str, Any]]:
        """Each article's final status (or the last one seen at the deadline)."""
        final: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while len(final) < len(article_ids) and time.monotonic() < deadline:
                for article_id in article_ids:
                    if article_id in final:
                        continue
                    status = client.get(f"/v1/articles/{article_id}").json()
                    if status["status"] in ("succeeded", "failed", "cancelled"):
                        final[article_id] = status
                time.sleep(poll)
            for article_id in article_ids:
                if article_id not in final:
                    final[article_id] = client.get(f"/v1/articles/{article_id}").json()
        return final

    def worker_log_lines(self, needle: str) -> Counter[str]:
        found: Counter[str] = Counter()
        for path in self.logs.glob("w*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if needle in line:
                    found[path.stem] += 1
        return found


def _leads_its_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for task in tasks:
        try:
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        except FileNotFoundError:
            continue
        for child in map(int, children):
            out += [child, *descendants(child)]
    return out


@contextmanager
def stack(
    cache_dir: Path,
    tmp: Path,
    redis_url: str,
    workers: int,
    extra_env: dict[str, str] | None = None,
    service_env: dict[str, dict[str, str]] | None = None,
) -> Iterator[Stack]:
    """The whole system on ``redis_url``, a database that the caller leased for the stack's life
    (the `redis_url` fixture, or `tests.redis_db.leased_db` for a longer-lived stack)."""
    connection = redis.Redis.from_url(redis_url)
    connection.flushdb()
    logs, data_dir = tmp / "logs", tmp / "data"
    logs.mkdir()
    ports = {name: free_port() for name in ("text", "image", "gateway")}
    env = {
        "ARTICLEFORGE_CACHE_DIR": str(cache_dir),
        "ARTICLEFORGE_REDIS_URL": redis_url,
        "ARTICLEFORGE_TEXT_URL": f"http://127.0.0.1:{ports['text']}",
        "ARTICLEFORGE_IMAGE_URL": f"http://127.0.0.1:{ports['image']}",
        "ARTICLEFORGE_GATEWAY_URL": f"http://127.0.0.1:{ports['gateway']}",  # for _serve only
        "ARTICLEFORGE_PUBLIC_URL": f"http://127.0.0.1:{ports['gateway']}",
        "ARTICLEFORGE_DATA_DIR": str(data_dir),
        "ARTICLEFORGE_WEBHOOK_SECRET": SECRET,
        "ARTICLEFORGE_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver listens on loopback
        "ARTICLEFORGE_RATE_LIMIT_PER_MINUTE": "0",
        "ARTICLEFORGE_MAX_ACTIVE_ARTICLES": "1000",
        "ARTICLEFORGE_LOG_LEVEL": "INFO",
        **(extra_env or {}),
    }
    deliveries: list[tuple[dict[str, str], bytes]] = []
    handler = type("Receiver", (Receiver,), {"deliveries": deliveries})
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    with ExitStack() as exit_stack:
        result = Stack(
            gateway=f"http://127.0.0.1:{ports['gateway']}",
            env=env,
            redis=connection,
            data_dir=data_dir,
            logs=logs,
            hook_url=f"http://127.0.0.1:{receiver.server_address[1]}/hook",
            deliveries=deliveries,
            _exit=exit_stack,
            service_env=service_env or {},
        )
        for name in ("text", "image", "gateway"):
            result._serve(name)
        result.add_worker(pool_size=workers)  # one pool of ``workers``, as a host runs them
        yield result
    receiver.shutdown()
    connection.flushdb()
