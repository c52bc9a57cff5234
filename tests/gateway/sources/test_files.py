"""Uploaded files (base64) and inline text: the same extractors, and the request's validation."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from services.gateway.sources import (
    MAX_SOURCES,
    SOURCE_MAX_BYTES,
    SOURCE_MAX_CHARS,
    FileSource,
    Source,
    SourceSpecs,
    load_source,
)
from services.gateway.sources.extract import DOCX_TYPE
from tests.gateway.sources.conftest import (
    ARTICLE_HTML,
    ARTICLE_TEXT,
    DOCX_TEXT,
    PDF_TEXT,
    make_docx,
    make_pdf,
    make_png,
)


class Request(BaseModel):
    """Stands in for the article request, which carries the same field."""

    sources: SourceSpecs = []


def file_spec(data: bytes, filename: str, **fields: Any) -> dict[str, Any]:
    encoded = base64.b64encode(data).decode()
    return {"type": "file", "filename": filename, "content_base64": encoded, **fields}


def load(raw: dict[str, Any], index: int = 0) -> Source:
    spec = Request.model_validate({"sources": [raw]}).sources[0]
    return asyncio.run(load_source(spec, index))


def test_a_pdf_upload_is_read_and_hashed() -> None:
    pdf = make_pdf("Wind report")
    source = load(file_spec(pdf, "wind.pdf", media_type="application/pdf"), index=1)
    assert source.error is None
    assert (source.id, source.type, source.title) == ("src_2", "file", "Wind report")
    assert (source.filename, source.url, source.media_type) == ("wind.pdf", None, "application/pdf")
    assert source.sha256 == hashlib.sha256(pdf).hexdigest()
    assert " ".join(source.text.split()) == PDF_TEXT


def test_a_docx_upload_without_media_type_is_known_by_its_extension_and_bytes() -> None:
    for filename in ("minutes.docx", "minutes"):
        source = load(file_spec(make_docx(), filename))
        assert source.error is None, filename
        assert source.media_type == DOCX_TYPE
        assert DOCX_TEXT in source.text


def test_html_markdown_and_text_uploads() -> None:
    html = load(file_spec(ARTICLE_HTML.encode(), "page.html"))
    assert html.media_type == "text/html" and ARTICLE_TEXT in html.text
    assert html.title == "Tidal power in Brittany"
    assert "Subscribe" not in html.text
    sniffed = load(file_spec(ARTICLE_HTML.encode(), "page"))
    assert sniffed.media_type == "text/html" and sniffed.text == html.text
    markdown = load(file_spec(b"# Tide tables\n\nHigh water at 06:12.\n", "tides.md"))
    assert (markdown.media_type, markdown.title) == ("text/markdown", "Tide tables")
    assert markdown.text == "# Tide tables\n\nHigh water at 06:12."
    text = load(file_spec(b"Neap tides\r\nare weaker.\r\n", "notes.txt", title="My notes"))
    assert (text.media_type, text.title, text.text) == (
        "text/plain",
        "My notes",
        "Neap tides\nare weaker.",
    )


def test_the_given_title_wins_over_the_documents_own() -> None:
    source = load(file_spec(make_pdf("Inside title"), "a.pdf", title="Given title"))
    assert source.title == "Given title"


def test_a_mislabelled_pdf_is_read_as_a_pdf() -> None:
    source = load(file_spec(make_pdf(), "report.txt", media_type="text/plain"))
    assert source.media_type == "application/pdf" and source.error is None


def test_unsupported_and_broken_uploads_are_per_source_errors() -> None:
    png = load(file_spec(make_png(), "logo.png"))
    assert png.error is not None and png.error.type == "unsupported_type"
    assert png.error.message.startswith("Source src_1 (logo.png) is ")
    declared = load(file_spec(make_png(), "logo", media_type="image/png"))
    assert declared.error is not None and "image/png" in declared.error.message
    broken = load(file_spec(b"%PDF-1.7\nnot really a pdf", "broken.pdf"))
    assert broken.error is not None and broken.error.type in ("unsupported_type", "no_text")
    blank = load(file_spec(b" \n\t\n", "blank.txt"))
    assert blank.error is not None and blank.error.type == "no_text"


def test_inline_text_is_kept_as_given() -> None:
    source = load({"type": "text", "title": "Press release", "text": "Tides  rise.\n\n\n\nTwice."})
    assert source.error is None
    assert (source.type, source.title, source.media_type) == ("text", "Press release", "text/plain")
    assert source.text == "Tides  rise.\n\nTwice."  # line endings and blank runs only
    whitespace = load({"type": "text", "title": "Empty", "text": "   \n "})
    assert whitespace.error is not None and whitespace.error.type == "no_text"
    assert whitespace.error.message == "Source src_1 (“Empty”) has no extractable text."


def test_extracted_text_is_cut_at_the_limit_at_a_word_break() -> None:
    words = ("tide " * (SOURCE_MAX_CHARS // 4)).encode()
    source = load(file_spec(words, "long.txt"))
    assert source.truncated and source.chars == len(source.text) <= SOURCE_MAX_CHARS
    assert source.text.endswith("tide")


def test_invalid_base64_is_a_validation_error_naming_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        Request.model_validate(
            {"sources": [{"type": "file", "filename": "a.pdf", "content_base64": "not base64!"}]}
        )
    (error,) = caught.value.errors()
    assert error["loc"] == ("sources", 0, "file", "content_base64")
    assert "content_base64 is not valid base64" in error["msg"]


def test_an_oversize_upload_is_a_validation_error_stating_the_limit() -> None:
    too_big = base64.b64encode(b"\0" * (SOURCE_MAX_BYTES + 1)).decode()
    with pytest.raises(ValidationError) as caught:
        FileSource(type="file", filename="big.pdf", content_base64=too_big)
    (error,) = caught.value.errors()
    assert error["loc"] == ("content_base64",)
    assert str(SOURCE_MAX_BYTES) in error["msg"] and "10 MiB" in error["msg"]
    at_limit = base64.b64encode(b"\0" * SOURCE_MAX_BYTES).decode()
    assert len(FileSource(type="file", filename="ok", content_base64=at_limit).data()) == (
        SOURCE_MAX_BYTES
    )


def test_base64_with_line_breaks_is_accepted() -> None:
    wrapped = base64.encodebytes(b"Spring tides follow the new moon.").decode()
    assert "\n" in wrapped
    assert load({"type": "file", "filename": "t.txt", "content_base64": wrapped}).error is None


def test_the_request_side_limits() -> None:
    with pytest.raises(ValidationError) as caught:
        Request.model_validate({"sources": [{"type": "text", "title": "t", "text": "x"}] * 11})
    assert caught.value.errors()[0]["loc"] == ("sources",)
    assert str(MAX_SOURCES) in caught.value.errors()[0]["msg"]
    long_text = {"type": "text", "title": "t", "text": "x" * (SOURCE_MAX_CHARS + 1)}
    with pytest.raises(ValidationError) as caught:
        Request.model_validate({"sources": [long_text]})
    assert caught.value.errors()[0]["loc"] == ("sources", 0, "text", "text")
    with pytest.raises(ValidationError):
        Request.model_validate({"sources": [{"type": "url", "url": "ftp://example.com/a"}]})
    with pytest.raises(ValidationError):  # unknown fields are refused by name
        Request.model_validate({"sources": [{"type": "text", "title": "t", "text": "x", "u": 1}]})


def test_every_field_is_described_in_the_schema() -> None:
    schema = Request.model_json_schema()
    for name in ("UrlSource", "TextSource", "FileSource"):
        for field_name, field in schema["$defs"][name]["properties"].items():
            assert field.get("description"), f"{name}.{field_name}"
    for model in (Source,):
        for field_name, field in model.model_json_schema()["properties"].items():
            assert field.get("description"), f"Source.{field_name}"
