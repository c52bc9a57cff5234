"""A real HTTP site on 127.0.0.1 for the tests that fetch sources: a ``ThreadingHTTPServer`` in a
thread answering each path with a ``Reply`` (or a function giving one), counting the requests
per path and the filler bytes it streamed before the client hung up.

    with Site({"/page": Reply(body=b"...", headers={"Content-Type": "text/html"})}) as site:
        site.url("/page")
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stream_mib: int = 0  # after the headers, this many MiB of filler (no Content-Length)
    delay_s: float = 0.0


Route = Reply | Callable[[], Reply]


class Site:
    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.hits: Counter[str] = Counter()
        self.streamed: Counter[str] = Counter()  # filler bytes written per path
        self.stop = threading.Event()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.hits[self.path] += 1
                route = site.routes.get(self.path, Reply(404, b"not found"))
                reply = route() if callable(route) else route
                if reply.delay_s and site.stop.wait(reply.delay_s):
                    return
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    if not reply.stream_mib and "Content-Length" not in reply.headers:
                        self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                    filler = b"<p>" + b"x" * (1024 * 1024 - 7) + b"</p>\n"
                    for _ in range(reply.stream_mib):
                        self.wfile.write(filler)
                        site.streamed[self.path] += len(filler)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading, as it should

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def __enter__(self) -> Site:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
