"""Sources in the studio: the form's sources box sends URLs, an uploaded file and a pasted text,
and the page lists each source's state while the article runs and once it is done (against the
live stack, with the URLs served by an http.server on 127.0.0.1); sources the gateway could not
take are refused in the form, naming the limit, before anything is sent; a 422 about a source
names the control it came from; and an article that cites shows, per section, each citation
with its passage, then the references list.

The tiny text model writes byte soup and never cites, so the citations are rendered from an
article assembled the way the pipeline does it, from section texts that cite (as
tests/gateway/test_grounded.py builds one).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from services.gateway.pipeline import Outline
from services.gateway.schemas import ArticleRequest
from services.gateway.sources import SOURCE_MAX_BYTES, TextSource
from services.ui.progress import WORKING
from tests.grounded_article import written_with_citations
from tests.processes import free_port, until
from tests.ui.conftest import UIStack
from tests.ui.test_app import assert_no_traceback, fill, fresh, shown_text

TIDAL_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>Tidal power in Brittany</title></head>
<body><nav><a href="/">Home</a> <a href="/news">News</a></nav>
<main><article><h1>Tidal power in Brittany</h1>
<p>The Rance tidal power station, opened in 1966, was the first of its kind in the world. It
uses a barrage across the estuary of the Rance river to generate 240 megawatts at peak.</p>
<p>Engineers chose the site because the tidal range there reaches thirteen metres, among the
largest in Europe. The turbines run in both directions, on the flood and on the ebb.</p>
<p>Critics point to the silting of the estuary, which changed the local ecosystem for decades
after the barrage was closed.</p>
</article></main><footer>Copyright 2024 Energy Weekly.</footer></body></html>"""
NOTES_MD = (
    "# Notes on tidal barrages\n\nA barrage holds the high tide behind sluice gates and lets it "
    "out through turbines as the sea falls.\n"
)
PRESS = "The regional council approved a study of a second tidal barrage on 3 March 2026."


def unescaped(markdown: str) -> str:
    """Markdown's backslash escapes undone: the text a reader sees."""
    return re.sub(r"\\(.)", r"\1", markdown)


def page_text(at: AppTest) -> str:
    return unescaped(shown_text(at))


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """http.server on 127.0.0.1 serving one page (and a 404 for anything else)."""
    root = tmp_path_factory.mktemp("site")
    (root / "tidal.html").write_text(TIDAL_HTML)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.mark.e2e
def test_sources_from_the_form_are_listed_with_their_states(studio: UIStack, site: str) -> None:
    at = fresh()
    at.text_area(key="source_urls").input(f"{site}/tidal.html\n\n{site}/gone.html")
    at.text_input(key="source_title").input("Council press release")
    at.text_area(key="source_text").input(PRESS)
    at = fill(
        at,
        "Tidal power in Brittany",
        words=100,
        sections=2,
        count=1,
        size="64x64",
        steps=30,
        source_files=("barrages.md", NOTES_MD.encode(), "text/markdown"),
        require_citations=True,
    )
    assert_no_traceback(at)
    article_id = at.query_params["article"]

    with studio.client() as client:

        def finished() -> dict[str, Any] | None:
            status = client.get(f"/v1/articles/{article_id}").json()
            return status if status["status"] == "succeeded" else None

        # While it runs: every source's state, once the workers have read them.
        def listed() -> bool:
            at.run()
            assert_no_traceback(at)
            working = [c.value for c in at.caption if c.value.startswith(f"`{article_id}`")]
            working = [w for w in working if w.rsplit(" · ", 1)[-1] in WORKING]
            return bool(working) and "Sources: 3 of 4 usable" in page_text(at)

        until("the sources in the progress view", listed, timeout=90, every=0.1)
        done = until("the article to succeed", finished)
    sources = {s["id"]: s for s in done["sources"]}
    assert [s["type"] for s in sources.values()] == ["url", "url", "file", "text"]
    tidal, gone, notes, press = sources.values()
    assert tidal["title"] == "Tidal power in Brittany" and tidal["chars"] > 200
    assert gone["error"]["type"] == "fetch_failed" and "404" in gone["error"]["message"]
    assert notes["title"] == "Notes on tidal barrages" and notes["filename"] == "barrages.md"
    assert press["title"] == "Council press release" and press["chars"] == len(PRESS)
    # Require citations: each section was written twice, and cites nothing still (tiny model).
    assert done["article"]["provenance"]["uncited_sections"] == [0, 1]

    # Done: the same states in the result, each with what a reader needs to know.
    until("the finished article in the studio", lambda: at.run().title)
    assert_no_traceback(at)
    [expander] = [e for e in at.expander if e.label.startswith("Sources: ")]
    assert expander.label == "Sources: 3 of 4 usable"
    shown = [unescaped(m.value) for m in expander.markdown]
    assert shown == [
        f":green[:material/check_circle:] **Tidal power in Brittany** · {site}/tidal.html · "
        f"{tidal['chars']:,} characters",
        f":red[:material/error:] **{gone['title']}** · {site}/gone.html · fetch_failed: "
        + gone["error"]["message"],
        f":green[:material/check_circle:] **Notes on tidal barrages** · barrages.md · "
        f"{notes['chars']:,} characters",
        f":green[:material/check_circle:] **Council press release** · pasted text · {len(PRESS)} "
        "characters",
    ]
    # The tiny model cites nothing: each section says so, and there is no references list.
    cited = [e for e in at.expander if e.label == "Sources cited in this section"]
    assert len(cited) == 2
    assert all(
        [c.value for c in e.caption] == ["This section cites none of the passages it was given."]
        for e in cited
    )
    assert "References" not in [h.value for h in at.header]


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> str:
    """A gateway that is not there: a form that sent anything would say it is not reachable."""
    down = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("ARTICLEFORGE_UI_GATEWAY_URL", down)
    monkeypatch.delenv("ARTICLEFORGE_MAX_BODY_BYTES", raising=False)
    return down


ELEVEN_URLS = "\n".join(f"https://example.com/{k}" for k in range(11))
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"source_urls": ELEVEN_URLS},
            "11 sources given (11 URLs); an article takes at most 10.",
        ),
        (
            {
                "source_urls": "https://example.com/a",
                "source_files": [("a.txt", b"a", "text/plain")] * 9,
                "source_title": "Notes",
                "source_text": "Some notes.",
            },
            "11 sources given (1 URLs, 9 files, 1 pasted text); an article takes at most 10.",
        ),
        (
            {"source_files": ("report.pdf", b"%PDF" + b"0" * SOURCE_MAX_BYTES, "application/pdf")},
            f"`report.pdf` is 10 MiB ({SOURCE_MAX_BYTES + 4} bytes); a file source may be at "
            f"most 10 MiB ({SOURCE_MAX_BYTES} bytes).",
        ),
        (
            {"source_files": ("notes.txt", b"tidal " * 150_000, "text/plain")},
            "The request would be 1.14 MiB (1200",
        ),
        (
            {"source_files": ("photo.png", PNG, "image/png")},
            "`photo.png` is not a type the gateway reads: upload HTML (.html, .htm, .xhtml), "
            "Markdown (.md, .markdown), plain text (.txt, .text), PDF (.pdf) or DOCX (.docx).",
        ),
        (
            {"source_text": "A text without a title."},
            "Give the pasted text a title: it is its entry in the references.",
        ),
    ],
    ids=[
        "eleven-urls",
        "eleven-of-all-kinds",
        "file-over-10-mib",
        "over-the-body-limit",
        "png",
        "untitled-text",
    ],
)
def test_sources_beyond_the_limits_are_refused_in_the_form(
    offline: str, fields: dict[str, Any], message: str
) -> None:
    at = fill(fresh(), "Tidal power", **fields)
    assert_no_traceback(at)
    [error] = at.error
    assert error.value.startswith(message), error.value
    assert "article" not in at.query_params


def test_the_body_limit_is_the_one_configured(
    offline: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARTICLEFORGE_MAX_BODY_BYTES", "4096")
    at = fill(fresh(), "Tidal power", source_title="Notes", source_text="tidal " * 700)
    assert_no_traceback(at)
    [error] = at.error
    assert "The gateway takes at most 4 KiB (4096 bytes, ARTICLEFORGE_MAX_BODY_BYTES)" in (
        error.value
    ), error.value


@pytest.mark.e2e
def test_a_source_the_gateway_refuses_names_the_line_it_came_from(studio: UIStack) -> None:
    at = fill(fresh(), "Tidal power", source_urls="https://example.com/a\nftp://example.com/b")
    assert_no_traceback(at)
    assert "article" not in at.query_params
    [error] = at.error
    assert error.value.startswith(
        "The gateway refused the request (422): check `sources.1.url.url`"
    )
    assert error.value.endswith("(source 2: URL line 2 (ftp://example.com/b))"), error.value


@pytest.mark.e2e
def test_a_studio_that_allows_more_than_the_gateway_gets_its_413_as_a_sentence(
    studio: UIStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARTICLEFORGE_MAX_BODY_BYTES", str(4 << 20))  # the gateway keeps 1 MiB
    at = fill(fresh(), "Tidal power", source_files=("notes.txt", b"tidal " * 150_000, "text/plain"))
    assert_no_traceback(at)
    assert "article" not in at.query_params
    [error] = at.error
    assert error.value.startswith("The gateway refused the request as too large (413): ")
    assert "the limit is 1048576 bytes (ARTICLEFORGE_MAX_BODY_BYTES)" in error.value


COSTS = (
    "Rooftop panels cost about 2.50 dollars per watt installed in 2025, so a 6 kW system "
    "costs near 15,000 dollars before the federal tax credit of 30 percent."
)
BATTERIES = (
    "Home batteries store the surplus of a sunny afternoon for the evening. A typical lithium "
    "iron phosphate battery holds 10 kWh and lasts about 6,000 cycles."
)


def cited_article() -> dict[str, Any]:
    """An article whose two sections cite a source each, assembled as the pipeline does."""
    request = ArticleRequest(
        topic="Solar power for homeowners",
        sections=2,
        sources=[
            TextSource(type="text", title="Battery guide", text=BATTERIES),
            TextSource(type="text", title="Cost survey [2025]", text=COSTS),
        ],
    )
    outline = Outline(title="Solar power at home", headings=["Costs", "Batteries"])
    texts = [
        "A 6 kW system costs near 15,000 dollars [1]. Prices fall every year [7].",
        "A battery lasts about 6,000 cycles [1].",
    ]
    article = written_with_citations(request, outline, texts).article
    return article.model_dump(mode="json")


def _render(article_json: str) -> None:
    """The script AppTest runs (its source alone: what it needs, it imports)."""
    import json

    import streamlit as st

    from services.ui.sources import render_citations, render_references

    article = json.loads(article_json)
    for index, section in enumerate(article["sections"]):
        st.header(section["heading"])
        st.markdown(section["markdown"])
        render_citations(article, index)
    render_references(article)


def test_each_section_shows_its_citations_and_the_references_close_the_article() -> None:
    article = cited_article()
    assert [(c["marker"], c["source_id"], c["section"]) for c in article["citations"]] == [
        (1, "src_2", 0),
        (2, "src_1", 1),
    ]
    at = AppTest.from_function(_render, args=(json.dumps(article),)).run()
    assert_no_traceback(at)
    assert [h.value for h in at.header] == ["Costs", "Batteries", "References"]
    costs, batteries = at.expander
    assert costs.label == batteries.label == "Sources cited in this section"
    assert [unescaped(m.value) for m in costs.markdown] == [
        "**[1]** Cost survey [2025] · pasted text",
        "> " + article["citations"][0]["passage"],
    ]
    assert article["citations"][0]["passage"] in COSTS
    assert [unescaped(m.value) for m in batteries.markdown] == [
        "**[2]** Battery guide · pasted text",
        "> " + article["citations"][1]["passage"],
    ]
    # A title is shown as text: its brackets are escaped, so they make no link.
    assert "Cost survey \\[2025\\]" in costs.markdown[0].value
    # The references: the gateway's own list from the end of the article's Markdown.
    assert at.markdown[-1].value.splitlines() == ["1. Cost survey \\[2025\\].", "2. Battery guide."]
    # And the sections read as the gateway wrote them, markers renumbered, the invented one gone.
    assert (
        unescaped(at.markdown[0].value)
        == "A 6 kW system costs near 15,000 dollars [1]. Prices fall every year."
    )
