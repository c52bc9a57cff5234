"""A real HTTP site of source documents on 127.0.0.1, for grounded-article tests.

``SourcePages`` is a ``ThreadingHTTPServer`` in a thread. It serves what a CMS editor's sources
look like, good and bad:

* ``/tidal-power.html``: a news article with real paragraphs between a menu, a newsletter box
  and a footer (the extractor must keep the paragraphs and drop the rest);
* ``/offshore-wind.pdf``: a two-page report with text, written by fpdf2;
* ``/moved``: a 302 to the cloud metadata address ``169.254.169.254`` (the guard must refuse
  the hop, and nothing may connect there);
* ``/huge.html``: an HTML page of 40 MiB streamed without a Content-Length (the download must
  stop at the 10 MiB limit);
* ``/gallery.html``: a page with an image and a script and no text;
* ``/members/briefing.html``: a page that ``/robots.txt`` disallows.

It counts the requests it got per path, and how many bytes of ``/huge.html`` it had sent when
the client hung up (or all of them).
"""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from fpdf import FPDF

METADATA_URL = "http://169.254.169.254/latest/meta-data/"
HUGE_BYTES = 40 * 1024 * 1024

TIDAL_TITLE = "Tidal power in Brittany"
TIDAL_PARAGRAPHS = [
    "The Rance tidal power station, opened in 1966 on the estuary of the Rance in Brittany, "
    "was the first tidal power station in the world. Its barrage is 750 metres long and "
    "holds 24 bulb turbines of 10 megawatts each, for a peak output of 240 megawatts.",
    "Engineers chose the site because the tidal range there reaches thirteen metres during "
    "spring tides, among the largest in Europe. The turbines run in both directions, on the "
    "flood tide and on the ebb tide, and they can also pump water into the basin when power "
    "is cheap.",
    "The tidal power station produces about 500 gigawatt hours of electricity a year, enough "
    "for a city of some 225,000 people. Because the tides follow the moon, the operator can "
    "predict its output years ahead, which no wind or solar farm can do.",
    "Critics point to the silting of the estuary, which changed the local ecosystem for "
    "decades after the barrage was closed. Sand eels and plaice vanished for a while, and the "
    "basin needed dredging in the 1990s. Biologists now count more species there than before "
    "the dam.",
    "Other countries followed only slowly. South Korea opened the Sihwa Lake station in 2011, "
    "which at 254 megawatts is now the largest, and the United Kingdom has studied a barrage "
    "across the Severn estuary for more than a century without building one.",
]
TIDAL_HTML = (
    "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
    f"<title>{TIDAL_TITLE} | Energy Weekly</title></head>\n<body>\n"
    "<nav><ul><li><a href='/'>Home</a></li><li><a href='/news'>News</a></li>"
    "<li><a href='/subscribe'>Subscribe to our newsletter</a></li>"
    "<li><a href='/login'>Log in</a></li></ul></nav>\n"
    "<aside class='newsletter'><p>Get the week's energy news in your inbox.</p></aside>\n"
    f"<main><article>\n<h1>{TIDAL_TITLE}</h1>\n"
    + "\n".join(f"<p>{p}</p>" for p in TIDAL_PARAGRAPHS)
    + "\n</article></main>\n"
    "<footer><p>Copyright 2025 Energy Weekly. All rights reserved.</p>"
    "<p><a href='/cookies'>Cookie settings</a> | <a href='/privacy'>Privacy</a></p></footer>\n"
    "</body></html>\n"
)
# Words of the page that are not the article: an extractor that keeps them is wrong.
BOILERPLATE = ["Subscribe to our newsletter", "All rights reserved", "Cookie settings"]

WIND_TITLE = "North Sea Offshore Wind Report"
WIND_PAGES = [
    "Offshore wind capacity in the North Sea grew by a fifth in 2023, to 32 gigawatts. "
    "Turbines of 15 megawatts now stand in water forty metres deep, and floating foundations "
    "reach water two hundred metres deep off the coast of Norway.",
    "Why tidal power matters to a grid full of wind: the wind drops on calm days while the "
    "tides keep their schedule. What matters most to grid operators around the North Sea is "
    "shared cables, so that a surplus in one country can flow to its neighbours.",
]

GALLERY_HTML = (
    "<!doctype html><html><head><title>Gallery</title></head>"
    "<body><img src='/logo.png' alt=''><script>var gallery = [];</script></body></html>\n"
)
ROBOTS_TXT = "User-agent: *\nDisallow: /members/\n"


def wind_pdf() -> bytes:
    pdf = FPDF()
    pdf.set_title(WIND_TITLE)
    pdf.set_font("Helvetica", size=12)
    for text in WIND_PAGES:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


class SourcePages:
    """``with SourcePages() as pages: pages.url("/tidal-power.html")``."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.huge_bytes_sent = 0
        pages = self
        documents = {
            "/robots.txt": ("text/plain", ROBOTS_TXT.encode()),
            "/tidal-power.html": ("text/html; charset=utf-8", TIDAL_HTML.encode()),
            "/members/briefing.html": ("text/html; charset=utf-8", TIDAL_HTML.encode()),
            "/offshore-wind.pdf": ("application/pdf", wind_pdf()),
            "/gallery.html": ("text/html; charset=utf-8", GALLERY_HTML.encode()),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                pages.hits[self.path] += 1
                try:
                    if self.path == "/moved":
                        self.send_response(302)
                        self.send_header("Location", METADATA_URL)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                    elif self.path == "/huge.html":
                        self._huge()
                    elif self.path in documents:
                        media_type, body = documents[self.path]
                        self.send_response(200)
                        self.send_header("Content-Type", media_type)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                    else:
                        self.send_error(404)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading, as it should past a limit

            def _huge(self) -> None:
                # HTTP/1.0 without a Content-Length: the body ends when the server closes, so
                # only counting what arrives can stop it.
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                chunk = b"<p>" + b"tide " * (64 * 1024 // 5) + b"</p>\n"
                self.wfile.write(b"<!doctype html><html><body>")
                sent = 0
                while sent < HUGE_BYTES:
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    pages.huge_bytes_sent = sent
                self.wfile.write(b"</body></html>")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def __enter__(self) -> SourcePages:
        self.thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.server.shutdown()
        self.server.server_close()
