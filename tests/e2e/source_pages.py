"""A real HTTP site of source documents on 127.0.0.1, for grounded-article tests.

``source_pages()`` is a ``tests.page_site.Site``. It serves what a CMS editor's sources
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

It counts the requests it got per path, and how many bytes of ``/huge.html`` it had streamed
when the client hung up (or all of them).
"""

from __future__ import annotations

from fpdf import FPDF

from tests.page_site import Reply, Site

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


def source_pages() -> Site:
    """``with source_pages() as pages: pages.url("/tidal-power.html")``; ``pages.hits`` counts
    the requests per path, ``pages.streamed["/huge.html"]`` the bytes of the huge page sent."""
    html = {"Content-Type": "text/html; charset=utf-8"}
    return Site(
        {
            "/robots.txt": Reply(body=ROBOTS_TXT.encode(), headers={"Content-Type": "text/plain"}),
            "/tidal-power.html": Reply(body=TIDAL_HTML.encode(), headers=html),
            "/members/briefing.html": Reply(body=TIDAL_HTML.encode(), headers=html),
            "/offshore-wind.pdf": Reply(
                body=wind_pdf(), headers={"Content-Type": "application/pdf"}
            ),
            "/gallery.html": Reply(body=GALLERY_HTML.encode(), headers=html),
            "/moved": Reply(302, headers={"Location": METADATA_URL}),
            # no Content-Length: the body ends when the server closes, so only counting what
            # arrives can stop it
            "/huge.html": Reply(
                body=b"<!doctype html><html><body>",
                headers={"Content-Type": "text/html"},
                stream_mib=HUGE_BYTES // (1024 * 1024),
            ),
        }
    )
