"""`articleforge up` checks its ports before it starts anything (issue 27).

A port that something else holds stops `up` at once: no child is started, no port is probed,
and the message names the service, the port, who holds it and the option that moves it. The
options themselves (`--gateway-port`, `--text-port`, `--image-port`) are followed by the
services and the URLs they are given: tests/e2e/test_up.py runs a whole article that way.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import articleforge_command, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def held() -> Iterator[socket.socket]:
    """A port that this test process listens on (and never accepts on), as a program the user
    forgot about would."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        yield sock


def _up(args: list[str], redis_url: str, tmp_path: Path, **settings: str) -> tuple[int, str, float]:
    env = {
        **os.environ,
        "ARTICLEFORGE_REDIS_URL": redis_url,
        "ARTICLEFORGE_DATA_DIR": str(tmp_path / "data"),
        **{f"ARTICLEFORGE_{name.upper()}": value for name, value in settings.items()},
    }
    started = time.monotonic()
    result = subprocess.run(
        [*articleforge_command(), "up", *args], env=env, capture_output=True, text=True, timeout=60
    )
    return result.returncode, result.stdout + result.stderr, time.monotonic() - started


def _never_called(sock: socket.socket) -> bool:
    try:
        sock.accept()[0].close()
    except BlockingIOError:
        return True
    return False


def test_a_taken_port_stops_up_before_it_starts_anything(
    held: socket.socket, redis_url: str, tmp_path: Path
) -> None:
    taken = held.getsockname()[1]
    text, image = free_port(), free_port()
    ports = ["--gateway-port", str(taken), "--text-port", str(text), "--image-port", str(image)]
    code, output, seconds = _up([*ports, "--no-ui"], redis_url, tmp_path)
    assert code == 1, output
    assert f"the gateway's port {taken} on 127.0.0.1 is taken, by pid {os.getpid()} (" in output, (
        output
    )
    assert (
        "stop that, or give the gateway another port: articleforge up --gateway-port PORT "
        "(or ARTICLEFORGE_GATEWAY_PORT=PORT)" in output
    ), output
    assert "ready" not in output and "is up" not in output, output
    assert "Traceback" not in output, output
    assert seconds < 20, seconds  # no service was started, so none had a model to load
    assert _never_called(held)  # `up` asked nothing of the program that holds the port
    for port in (text, image):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_every_taken_port_is_named_at_once_with_its_setting(
    held: socket.socket, redis_url: str, tmp_path: Path
) -> None:
    """The services' ports come from the settings here, the studio's from --ui-port."""
    with socket.socket() as studio:
        studio.bind(("127.0.0.1", 0))
        studio.listen()
        ui_port = studio.getsockname()[1]
        code, output, _ = _up(
            ["--ui-port", str(ui_port)],
            redis_url,
            tmp_path,
            text_port=str(held.getsockname()[1]),
            image_port=str(free_port()),
            gateway_port=str(free_port()),
        )
    assert code == 1, output
    assert f"the text service's port {held.getsockname()[1]} on 127.0.0.1 is taken" in output
    assert "articleforge up --text-port PORT (or ARTICLEFORGE_TEXT_PORT=PORT)" in output, output
    if "starting without the studio" not in output:  # the `ui` extra is installed
        assert f"the studio's port {ui_port} on 127.0.0.1 is taken" in output, output
        assert "give the studio another port: articleforge up --ui-port PORT\n" in output
    assert "ready" not in output, output
    assert _never_called(held)


def test_two_services_given_one_port_are_refused(redis_url: str, tmp_path: Path) -> None:
    port = str(free_port())
    args = ["--text-port", port, "--image-port", port, "--gateway-port", str(free_port())]
    code, output, _ = _up([*args, "--no-ui"], redis_url, tmp_path)
    assert code == 1, output
    assert (
        f"the text service and the image service are both given port {port}; give each its "
        "own (--text-port, --image-port)" in output
    ), output
    assert "ready" not in output, output
