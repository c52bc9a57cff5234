"""``articleforge up``: text, image, gateway, a worker and the studio as child processes, on one
machine.

It checks Redis first (and says how to start one) and then that each of its ports is free (and
says who holds one that is not, and which option moves it). Only then does it start each
child, wait until each answers ``/readyz``, start the studio (the Streamlit UI) once the gateway
is ready and wait for its health check. It prints the URLs, and on Ctrl-C (or SIGTERM) stops
them all: SIGTERM first, then SIGKILL for any child still alive after a grace period. A worker
that dies is replaced, as an orchestrator would (its stage runs again on another worker, see
docs/reliability.md); a service that dies, or a worker that dies right after its start, stops
everything.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
    env: dict[str, str] = field(default_factory=dict)  # beyond what every child gets


@dataclass
class Studio:
    """The studio that ``up`` starts: its port, the ``UISettings`` fields the user set (those
    stay), and the gateway's API keys (the studio gets the first unless the user gave one)."""

    port: int
    user_set: set[str]
    api_keys: list[str]


# What the user calls each child whose port ``up`` binds, and how they move that port: `up`'s
# option, and the setting where there is one (the studio's port is `up`'s own option only).
PORT_OWNERS = {
    "gateway": ("the gateway", "--gateway-port", "ARTICLEFORGE_GATEWAY_PORT"),
    "text": ("the text service", "--text-port", "ARTICLEFORGE_TEXT_PORT"),
    "image": ("the image service", "--image-port", "ARTICLEFORGE_IMAGE_PORT"),
    "ui": ("the studio", "--ui-port", None),
}


def listener(port: int) -> str | None:
    """Who listens on TCP ``port`` here, as "pid N (command line)", where that is cheap to
    tell: on Linux, from /proc, for the processes this user may look into. None otherwise."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local address (hex ip:port), state (0A is LISTEN) and inode, as proc(5) has them
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                sockets.add(f"socket:[{fields[9]}]")
    if not sockets:
        return None
    for pid in (p for p in Path("/proc").iterdir() if p.name.isdigit()):
        try:
            if any(os.readlink(fd) in sockets for fd in (pid / "fd").iterdir()):
                argv = (pid / "cmdline").read_bytes().replace(b"\0", b" ").strip()
                command = argv.decode(errors="replace") or "?"
                return f"pid {pid.name} ({command[:120]})"
        except OSError:  # gone meanwhile, or another user's
            continue
    return None


def bindable(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now: bound as uvicorn's (asyncio's)
    server binds, SO_REUSEADDR on every address the host resolves to, so that a port left in
    TIME_WAIT counts as free and one that something listens on does not."""
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        return True  # not ours to judge: the service itself says what is wrong with the host
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError:
                return False
    return True


def port_problems(host: str, ports: dict[str, int]) -> list[str]:
    """One sentence for each port of ``ports`` (child name: port) that two children share or
    that is taken, saying how to choose another; empty when all are free."""
    problems = []
    by_port: dict[int, list[str]] = {}
    for name, port in ports.items():
        by_port.setdefault(port, []).append(name)
    for port, names in by_port.items():
        if len(names) > 1:
            who = " and ".join(PORT_OWNERS[n][0] for n in names)
            options = ", ".join(PORT_OWNERS[n][1] for n in names)
            every = "both" if len(names) == 2 else "all"
            problems.append(f"{who} are {every} given port {port}; give each its own ({options})")
        elif not bindable(host, port):
            what, option, setting = PORT_OWNERS[names[0]]
            holder = listener(port)
            by = f", by {holder}" if holder else ""
            move = f"articleforge up {option} PORT" + (f" (or {setting}=PORT)" if setting else "")
            problems.append(
                f"{what}'s port {port} on {host or '*'} is taken{by}; stop that, or give "
                f"{what} another port: {move}"
            )
    return problems


WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})


def reachable(host: str) -> str:
    """Where a process on this machine reaches a service bound to ``host``: a wildcard bind
    address (0.0.0.0, ::) is no address to connect to, so its loopback stands in."""
    if host in WILDCARDS:
        return "[::1]" if ":" in host else "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def child_env(host: str, ports: dict[str, int], public_url: str | None) -> dict[str, str]:
    """What the children are told beyond the environment: where the services are and, unless
    the user set one, the public URL that image links start with. That one is derived from
    the bind address, or for a wildcard (which clients cannot connect to) from this machine's
    host name."""
    local = reachable(host)
    env = {
        "ARTICLEFORGE_TEXT_URL": f"http://{local}:{ports['text']}",
        "ARTICLEFORGE_IMAGE_URL": f"http://{local}:{ports['image']}",
    }
    if public_url is None:
        public = socket.gethostname() if host in WILDCARDS else local
        env["ARTICLEFORGE_PUBLIC_URL"] = f"http://{public}:{ports['gateway']}"
    return env


def studio_env(host: str, ports: dict[str, int], studio: Studio) -> dict[str, str]:
    """The studio's settings that point it at the stack ``up`` started, except those the user
    set (a gateway elsewhere, a key of their own)."""
    local = reachable(host)
    values = {
        "ui_gateway_url": f"http://{local}:{ports['gateway']}",
        "ui_text_url": f"http://{local}:{ports['text']}",
        "ui_image_url": f"http://{local}:{ports['image']}",
    }
    if studio.api_keys:
        values["ui_api_key"] = studio.api_keys[0]
    return {
        f"ARTICLEFORGE_{name.upper()}": value
        for name, value in values.items()
        if name not in studio.user_set
    }


def studio_child(host: str, ports: dict[str, int], studio: Studio) -> Child:
    from services.ui.launch import HEALTH_PATH

    return Child(
        "ui",
        ["ui", "--host", host, "--port", str(studio.port)],
        f"http://{reachable(host)}:{studio.port}{HEALTH_PATH}",
        env=studio_env(host, ports, studio),
    )


def children(host: str, ports: dict[str, int], workers: int) -> list[Child]:
    out = [
        Child(
            name,
            ["serve", name, "--host", host, "--port", str(ports[name])],
            f"http://{reachable(host)}:{ports[name]}/readyz",
        )
        for name in ("text", "image", "gateway")
    ]
    # One pool of ``workers`` RQ workers (it replaces a worker that dies; `up` replaces it).
    out.append(Child("worker", ["worker", "--pool-size", str(workers)], None))
    return out


def load_failure(answer: httpx.Response) -> str | None:
    """The reason a service's /readyz gives when its model failed to load (it never will be
    ready, so waiting on is pointless); None while it is still loading."""
    try:
        message = str(answer.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return None
    failed = "could not be loaded" in message or "failed to load" in message
    return message if answer.status_code == 503 and failed else None


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
    public_url: str | None = None,
    studio: Studio | None = None,
) -> int:
    """``public_url``: ARTICLEFORGE_PUBLIC_URL when the user set it (it is kept), else None;
    ``studio``: the UI to start once the gateway is ready, or None (``--no-ui``)."""
    problem = redis_ok()
    if problem is not None:
        say(f"no Redis: {problem}\n{REDIS_HINT}")
        return 1
    # Before anything starts: a service that cannot bind dies only after `up` has probed that
    # port, where whatever holds it may well answer "ready".
    wanted = {**ports, **({"ui": studio.port} if studio is not None else {})}
    if taken := port_problems(host, wanted):
        say("\n".join(taken))
        return 1
    extra = child_env(host, ports, public_url)
    env = {**os.environ, **extra}
    public = public_url or extra["ARTICLEFORGE_PUBLIC_URL"]
    started = children(host, ports, workers)
    ui = studio_child(host, ports, studio) if studio is not None else None
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = signal.signal(signal.SIGTERM, on_signal)

    def spawn(child: Child) -> None:
        child.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *child.args], env={**env, **child.env}
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
                    answer = httpx.get(child.ready_url, timeout=2)
                except httpx.HTTPError:
                    continue
                if answer.status_code == 200:
                    say(f"{child.name} ready")
                    waiting.remove(child)
                    if child.name == "gateway" and ui is not None:
                        # Only now: the studio's first page load already asks the gateway.
                        spawn(ui)
                        started.append(ui)
                        waiting.append(ui)
                elif (failed := load_failure(answer)) is not None:
                    say(f"{child.name}: {failed}; stopping everything")
                    return 1
            if time.monotonic() > deadline:
                say(f"not ready after {ready_timeout:.0f}s: {[c.name for c in waiting]}")
                return 1
            time.sleep(0.5)
        for child in started:
            child.proven = child.process is not None and child.process.poll() is None
        if not stopping:
            base = f"http://{reachable(host)}:{ports['gateway']}"
            studio_line = ""
            if studio is not None:
                studio_line = f"  UI:        http://{reachable(host)}:{studio.port}  (the studio)\n"
            say(
                f"articleforge is up.\n  API:       {base}  (docs: {base}/docs)\n"
                f"  public:    {public}  (image URLs start here; ARTICLEFORGE_PUBLIC_URL)\n"
                f"  text:      {extra['ARTICLEFORGE_TEXT_URL']}/docs\n"
                f"  image:     {extra['ARTICLEFORGE_IMAGE_URL']}/docs\n"
                f"{studio_line}"
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
