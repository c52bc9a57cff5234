"""URL sources against a real HTTP server on 127.0.0.1, let through the guard by allow_networks."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import pytest
from pydantic import TypeAdapter

from services.gateway.sources import Source, SourceSpec, load_source, load_sources
from services.gateway.sources.fetch import Fetcher, parse_networks
from tests.gateway.sources.conftest import ARTICLE_TEXT, DOCX_TEXT, PDF_TEXT, Site

LOCAL = ["127.0.0.1/32"]
SPEC: TypeAdapter[SourceSpec] = TypeAdapter(SourceSpec)


def load(url: str, index: int = 0, **options: Any) -> Source:
    options.setdefault("allow_networks", LOCAL)
    spec = SPEC.validate_python({"type": "url", "url": url})
    return asyncio.run(load_source(spec, index, **options))


def test_an_article_page_gives_its_main_text_and_title_without_the_navigation(site: Site) -> None:
    source = load(site.url("/article"), index=2)
    assert source.error is None
    assert source.id == "src_3"
    assert source.title == "Tidal power in Brittany"
    assert ARTICLE_TEXT in source.text
    assert "silting of the estuary" in source.text
    for boilerplate in ("Subscribe to our newsletter", "All rights reserved", "Cookie settings"):
        assert boilerplate not in source.text
    assert source.media_type == "text/html"
    assert source.chars == len(source.text)
    assert source.url == source.final_url == site.url("/article")
    assert len(source.sha256 or "") == 64
    assert Source.model_validate_json(source.model_dump_json()) == source


def test_a_redirect_chain_is_followed_to_the_page(site: Site) -> None:
    source = load(site.url("/r1"))
    assert source.error is None, source.error
    assert source.url == site.url("/r1")
    assert source.final_url == site.url("/article")
    assert ARTICLE_TEXT in source.text


def test_a_redirect_to_the_metadata_address_is_refused_before_connecting(site: Site) -> None:
    started = time.monotonic()
    source = load(site.url("/to-metadata"))
    assert time.monotonic() - started < 2  # nothing waited on 169.254.169.254
    assert source.error is not None
    assert source.error.type == "private_address"
    assert "169.254.169.254" in source.error.message
    assert source.error.message.startswith(f"Source src_1 ({site.url('/to-metadata')}) redirects")
    assert source.text == "" and source.chars == 0


def test_a_private_url_is_refused_without_allow_networks(site: Site) -> None:
    before = site.hits["/article"]
    source = load(site.url("/article"), allow_networks=[])
    assert source.error is not None and source.error.type == "private_address"
    assert "127.0.0.1" in source.error.message
    assert site.hits["/article"] == before  # refused before connecting
    assert load(site.url("/article"), allow_networks=[], allow_private=True).error is None


def test_mapped_and_public_addresses_are_judged_by_the_ipv4_address() -> None:
    import ipaddress

    guard = Fetcher(
        None,  # type: ignore[arg-type]  # the address rule needs no client
        allow_private=False,
        networks=parse_networks(["10.1.0.0/16"]),
        user_agent="articleforge",
        max_bytes=1,
    )
    for refused in ("::ffff:169.254.169.254", "127.0.0.1", "::1", "10.2.0.1", "224.0.0.1"):
        assert not guard.allowed(ipaddress.ip_address(refused)), refused
    for allowed in ("8.8.8.8", "::ffff:8.8.8.8", "10.1.2.3", "2606:4700::1111"):
        assert guard.allowed(ipaddress.ip_address(allowed)), allowed


def test_a_huge_page_stops_at_the_limit(site: Site) -> None:
    source = load(site.url("/huge"))
    assert source.error is not None and source.error.type == "too_large"
    assert "10 MiB" in source.error.message
    declared = load(site.url("/huge-declared"))
    assert declared.error is not None and declared.error.type == "too_large"
    assert str(50 * 1024 * 1024) in declared.error.message


def test_a_slow_page_times_out(site: Site) -> None:
    started = time.monotonic()
    source = load(site.url("/slow"), timeout=0.3)
    assert time.monotonic() - started < 2
    assert source.error is not None and source.error.type == "timeout"
    assert "0.3 s" in source.error.message


def test_a_pdf_gives_its_text_and_metadata_title(site: Site) -> None:
    source = load(site.url("/report"))
    assert source.error is None, source.error
    assert source.media_type == "application/pdf"
    assert source.title == "North Sea Wind Report"
    assert " ".join(source.text.split()) == PDF_TEXT


def test_a_pdf_sent_as_octet_stream_is_recognised_by_its_bytes(site: Site) -> None:
    source = load(site.url("/download"))
    assert source.error is None and source.media_type == "application/pdf"


def test_a_docx_gives_paragraphs_tables_and_its_title(site: Site) -> None:
    source = load(site.url("/minutes.docx"))
    assert source.error is None, source.error
    assert source.title == "Board minutes"
    assert source.text == (
        f"Minutes of the March meeting\n\n{DOCX_TEXT}\n\nSite | Capacity\n\nLyon | 40 MW"
    )


def test_markdown_served_as_plain_text_takes_its_heading_as_title(site: Site) -> None:
    source = load(site.url("/notes.md"))
    assert source.error is None and source.media_type == "text/markdown"
    assert source.title == "Field notes"


def test_the_declared_charset_decodes_the_text(site: Site) -> None:
    assert load(site.url("/latin1")).text == "Café tidal mémoire."


def test_a_page_without_text_is_no_text(site: Site) -> None:
    source = load(site.url("/gallery"))
    assert source.error is not None and source.error.type == "no_text"
    assert source.error.message == f"Source src_1 ({site.url('/gallery')}) has no extractable text."


def test_an_image_is_an_unsupported_type(site: Site) -> None:
    source = load(site.url("/logo.png"))
    assert source.error is not None and source.error.type == "unsupported_type"
    assert source.media_type == "image/png"
    assert "image/png" in source.error.message


def test_robots_txt_is_honoured_for_pages_and_redirect_targets(site: Site) -> None:
    for path in ("/private/article", "/to-private"):
        source = load(site.url(path))
        assert source.error is not None and source.error.type == "robots_disallowed", path
        assert "robots.txt" in source.error.message
    before = site.hits["/private/article"]
    load(site.url("/private/article"))
    assert site.hits["/private/article"] == before  # never requested
    assert site.hits["/robots.txt"] >= 1


def test_a_missing_robots_txt_allows_everything(bare_site: Site) -> None:
    source = load(bare_site.url("/private/article"))
    assert source.error is None
    assert bare_site.hits["/robots.txt"] == 1


def test_http_errors_and_redirect_loops_are_fetch_failed(site: Site) -> None:
    gone = load(site.url("/gone"))
    assert gone.error is not None and gone.error.type == "fetch_failed"
    assert "HTTP 410" in gone.error.message
    loop = load(site.url("/loop"))
    assert loop.error is not None and loop.error.type == "fetch_failed"
    assert "more than 5 times" in loop.error.message


def test_nothing_listening_is_fetch_failed() -> None:
    source = load("http://127.0.0.1:9/")  # the discard port
    assert source.error is not None and source.error.type == "fetch_failed"


def test_load_sources_keeps_request_order_and_ids(site: Site) -> None:
    specs = [
        SPEC.validate_python({"type": "url", "url": site.url("/logo.png")}),
        SPEC.validate_python({"type": "text", "title": "Notes", "text": "Tides matter."}),
        SPEC.validate_python({"type": "url", "url": site.url("/article"), "title": "Mine"}),
    ]
    sources = asyncio.run(load_sources(specs, allow_networks=LOCAL))
    assert [s.id for s in sources] == ["src_1", "src_2", "src_3"]
    assert [s.error.type if s.error else None for s in sources] == ["unsupported_type", None, None]
    assert sources[2].title == "Mine"
    assert sources[1].sha256 == hashlib.sha256(b"Tides matter.").hexdigest()


def test_the_sources_of_one_request_read_each_robots_txt_once(bare_site: Site) -> None:
    """Four sources on one site, loaded together: one request for /robots.txt, not four."""
    url = bare_site.url("/private/article")
    specs = [SPEC.validate_python({"type": "url", "url": url}) for _ in range(4)]
    before = bare_site.hits["/robots.txt"]
    sources = asyncio.run(load_sources(specs, allow_networks=LOCAL))
    assert [s.error for s in sources] == [None] * 4
    assert bare_site.hits["/robots.txt"] - before == 1


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "not-a-network"])
def test_a_malformed_allow_network_is_a_configuration_error(bad: str) -> None:
    with pytest.raises(ValueError):
        load("http://127.0.0.1:9/", allow_networks=[bad])
