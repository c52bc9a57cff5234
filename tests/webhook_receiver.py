"""The webhook receiver of the tests: a handler for a real HTTP server on a loopback port that
answers 204 to every POST and keeps what it was sent. Each user subclasses it with a list of its
own, so that two servers never share their deliveries."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from typing import ClassVar


class Receiver(BaseHTTPRequestHandler):
    # (headers with lower-case names, body) of each POST, in order; set by each subclass.
    deliveries: ClassVar[list[tuple[dict[str, str], bytes]]]

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["content-length"]))
        self.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass
