"""Real documents built by real libraries, and a real HTTP site on 127.0.0.1 that serves them.

`site` is a `tests.page_site.Site` with a robots.txt that disallows /private/; `bare_site` has no
robots.txt at all (it answers 404). Each counts the requests it got per path.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator

import docx
import pytest
from fpdf import FPDF

from tests.page_site import Reply, Route, Site

ARTICLE_TEXT = (
    "The Rance tidal power station, opened in 1966, was the first of its kind in the world. "
    "It uses a barrage across the estuary of the Rance river to generate 240 megawatts at peak."
)
ARTICLE_HTML = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Tidal power in Brittany | Energy Weekly</title></head>
<body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/news">News</a></li>
<li><a href="/subscribe">Subscribe to our newsletter</a></li></ul></nav>
<main><article>
<h1>Tidal power in Brittany</h1>
<p>{ARTICLE_TEXT}</p>
<p>Engineers chose the site because the tidal range there reaches thirteen metres, among the
largest in Europe. The turbines run in both directions, on the flood and on the ebb.</p>
<p>Critics point to the silting of the estuary, which changed the local ecosystem for decades
after the barrage was closed.</p>
</article></main>
<footer><p>Copyright 2024 Energy Weekly. All rights reserved. Cookie settings.</p></footer>
</body></html>"""
# A page with nothing to read: an image and a script.
EMPTY_HTML = (
    "<!doctype html><html><head><title>Gallery</title></head>"
    "<body><img src='/logo.png'><script>var gallery = [];</script></body></html>"
)
PDF_TEXT = (
    "Offshore wind capacity in the North Sea grew by a fifth in 2023. "
    "Floating foundations now reach water two hundred metres deep."
)
DOCX_TEXT = "The board approved the new solar farm near Lyon on 12 March."


def make_pdf(title: str = "North Sea Wind Report") -> bytes:
    pdf = FPDF()
    pdf.set_title(title)
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.multi_cell(0, 8, PDF_TEXT)
    return bytes(pdf.output())


def make_docx(title: str = "Board minutes") -> bytes:
    document = docx.Document()
    document.core_properties.title = title
    document.add_heading("Minutes of the March meeting", level=1)
    document.add_paragraph(DOCX_TEXT)
    table = document.add_table(rows=2, cols=2)
    for row, cells in zip(table.rows, [("Site", "Capacity"), ("Lyon", "40 MW")], strict=True):
        for cell, value in zip(row.cells, cells, strict=True):
            cell.text = value
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def make_png() -> bytes:
    """A valid 1x1 PNG, written by hand (signature, IHDR, IDAT, IEND)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


def _html(body: str) -> Reply:
    return Reply(body=body.encode(), headers={"Content-Type": "text/html; charset=utf-8"})


def site_routes() -> dict[str, Route]:
    pdf = make_pdf()
    return {
        "/robots.txt": Reply(
            body=b"User-agent: *\nDisallow: /private/\n", headers={"Content-Type": "text/plain"}
        ),
        "/article": _html(ARTICLE_HTML),
        "/private/article": _html(ARTICLE_HTML),
        "/r1": Reply(302, headers={"Location": "/r2"}),
        "/r2": Reply(301, headers={"Location": "r3"}),
        "/r3": Reply(307, headers={"Location": "/article"}),
        "/loop": Reply(302, headers={"Location": "/loop"}),
        "/to-metadata": Reply(
            302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}
        ),
        "/to-private": Reply(302, headers={"Location": "/private/article"}),
        "/huge": Reply(headers={"Content-Type": "text/html"}, body=b"<html><body>", stream_mib=50),
        "/huge-declared": Reply(
            headers={"Content-Type": "text/html", "Content-Length": str(50 * 1024 * 1024)}
        ),
        "/slow": Reply(body=b"late", headers={"Content-Type": "text/plain"}, delay_s=5),
        "/report": Reply(body=pdf, headers={"Content-Type": "application/pdf"}),
        "/download": Reply(body=pdf, headers={"Content-Type": "application/octet-stream"}),
        "/minutes.docx": Reply(
            body=make_docx(),
            headers={
                "Content-Type": "application/vnd.openxmlformats-officedocument"
                ".wordprocessingml.document"
            },
        ),
        "/gallery": _html(EMPTY_HTML),
        "/logo.png": Reply(body=make_png(), headers={"Content-Type": "image/png"}),
        "/notes.md": Reply(
            body=b"# Field notes\n\nThe estuary silted up after 1966.\n",
            headers={"Content-Type": "text/plain; charset=utf-8"},
        ),
        "/latin1": Reply(
            body="Caf\u00e9 tidal m\u00e9moire.".encode("latin-1"),
            headers={"Content-Type": "text/plain; charset=iso-8859-1"},
        ),
        "/gone": Reply(410, b"gone"),
    }


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with Site(site_routes()) as running:
        yield running


@pytest.fixture(scope="module")
def bare_site() -> Iterator[Site]:
    """No robots.txt (404), and a page under /private/ that is therefore allowed."""
    with Site({"/private/article": _html(ARTICLE_HTML)}) as running:
        yield running
