"""Bytes to text: which kind of document it is, and the library that reads each kind.

- HTML: trafilatura. It is the extractor the web-corpus field settled on (it builds Common Crawl
  derived sets such as FineWeb and scores at or near the top of the open extraction benchmarks),
  it keeps the main text and drops navigation, cookie banners, comments and footers, and it
  reads the title from ``<title>``, Open Graph or the first heading. Its Markdown output keeps
  headings, lists and paragraph breaks, which the passage splitter uses. When trafilatura finds
  no main text (it already tries its own fallbacks, jusText and a baseline, before giving up) the
  page counts as having none: a plain tag strip would bring back exactly the menus and footers
  that a model must not cite as a source.
- PDF: pypdf (pure Python, the maintained successor of PyPDF2); title from the document info.
- DOCX: python-docx, paragraphs and tables in document order; title from the core properties.
- Markdown and plain text: decoded as they are (the declared charset, else UTF-8, else
  charset-normalizer's guess); a Markdown title comes from its first ``# heading``.

Everything here is blocking CPU work; ``load.py`` runs it in a worker thread. The libraries are
imported where they are used, so that importing the gateway stays fast.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from services.gateway.sources.models import (
    DOCX_MAX_UNPACKED_BYTES,
    SOURCE_MAX_CHARS,
    TITLE_MAX_CHARS,
    SourceErrorType,
)

Kind = Literal["html", "pdf", "docx", "markdown", "text"]
DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
MEDIA_TYPES: dict[Kind, str] = {
    "html": "text/html",
    "pdf": "application/pdf",
    "docx": DOCX_TYPE,
    "markdown": "text/markdown",
    "text": "text/plain",
}
SUPPORTED = "HTML, Markdown, plain text, PDF or DOCX"
_BY_MEDIA_TYPE: dict[str, Kind] = {
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
    "application/x-pdf": "pdf",
    DOCX_TYPE: "docx",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/plain": "text",
}
# Types that say nothing about the content: the extension and the bytes decide.
UNDECIDED = frozenset(
    {
        "",
        "application/octet-stream",
        "binary/octet-stream",
        "application/download",
        "application/force-download",
        "application/x-download",
    }
)
_BY_EXTENSION: dict[str, Kind] = {
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".pdf": "pdf",
    ".docx": "docx",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
}
_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body")
# C0 controls but tab and newline, DEL, C1 controls, lone surrogates and the noncharacters
# U+FFFE/U+FFFF: PDFs are full of them, and the article's HTML must stay valid XML.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_MANY_BLANK_LINES = re.compile(r"\n{3,}")
_MARKDOWN_TITLE = re.compile(r"^ {0,3}#[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class Extracted:
    text: str
    title: str | None


class Unreadable(Exception):
    """The bytes are not a document this module can read; ``cause`` completes a sentence."""

    def __init__(self, type: SourceErrorType, cause: str) -> None:
        super().__init__(cause)
        self.type: SourceErrorType = type
        self.cause = cause


def base_type(content_type: str | None) -> tuple[str, str | None]:
    """``text/html; charset=ISO-8859-1`` -> (``text/html``, ``iso-8859-1``)."""
    if not content_type:
        return "", None
    main, *params = content_type.split(";")
    charset = None
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip("\"'").lower() or None
    return main.strip().lower(), charset


def _binary_magic(data: bytes) -> Kind | None:
    # The PDF spec lets readers accept junk before the header; 1 KiB is what Acrobat allows.
    if b"%PDF-" in data[:1024]:
        return "pdf"
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                if "word/document.xml" in archive.namelist():
                    return "docx"
        except zipfile.BadZipFile:
            return None
    return None


def _text_magic(data: bytes) -> Kind | None:
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(_HTML_STARTS) or (head.startswith(b"<!--") and b"<html" in head):
        return "html"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with a byte order mark
        return "text"
    try:
        decoded = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in decoded else "text"


def decide_kind(data: bytes, media_type: str, name: str | None) -> Kind | None:
    """The kind to read ``data`` as, or None when it is none of them.

    PDF and DOCX signatures win over any declared type (servers and browsers often mislabel
    them); then a declared type; then the extension of ``name`` (a filename or URL path); then
    the first bytes (HTML, or valid UTF-8 as plain text)."""
    magic = _binary_magic(data)
    if magic is not None:
        return magic
    extension = PurePosixPath(name or "").suffix.lower()
    declared = _BY_MEDIA_TYPE.get(media_type)
    if declared == "text" and _BY_EXTENSION.get(extension) == "markdown":
        return "markdown"  # .md files are usually served as text/plain
    if declared is not None:
        return declared
    if media_type not in UNDECIDED:
        return None
    if extension in _BY_EXTENSION:
        return _BY_EXTENSION[extension]
    return _text_magic(data)


def decode(data: bytes, charset: str | None) -> str:
    if charset:
        try:
            return data.decode(charset)
        except (LookupError, UnicodeDecodeError):
            pass
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    guess = from_bytes(data).best()
    return str(guess) if guess is not None else data.decode("utf-8", errors="replace")


def clean(text: str) -> str:
    """One newline convention, no control characters, no trailing spaces, at most one blank line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text.replace("\f", "\n\n").replace("\v", "\n"))
    text = _TRAILING_SPACE.sub("\n", text)
    return _MANY_BLANK_LINES.sub("\n\n", text).strip()


def truncate(text: str, limit: int = SOURCE_MAX_CHARS) -> tuple[str, bool]:
    """At most ``limit`` characters, cut at the last whitespace before it where one is near."""
    if len(text) <= limit:
        return text, False
    cut = text[:limit]
    space = max(cut.rfind(" "), cut.rfind("\n"))
    if space >= limit - 1000:
        cut = cut[:space]
    return cut.rstrip(), True


def clean_title(title: str | None) -> str | None:
    if not title:
        return None
    title = " ".join(_CONTROL.sub("", title).split())
    return title[:TITLE_MAX_CHARS] or None


def extract(kind: Kind, data: bytes, charset: str | None, url: str | None) -> Extracted:
    """Reads ``data`` as ``kind``; raises `Unreadable` for a broken or hostile document."""
    if kind == "html":
        return _html(data, charset, url)
    if kind == "pdf":
        return _pdf(data)
    if kind == "docx":
        return _docx(data)
    text = decode(data, charset)
    if kind == "markdown":
        heading = _MARKDOWN_TITLE.search(text[:5000])
        return Extracted(text, heading.group(1) if heading else None)
    return Extracted(text, None)


def _html(data: bytes, charset: str | None, url: str | None) -> Extracted:
    import trafilatura

    # A charset from the HTTP header outranks the page's own <meta>; without one, trafilatura
    # reads the bytes and detects the encoding itself.
    document: bytes | str = data
    if charset:
        try:
            document = data.decode(charset)
        except (LookupError, UnicodeDecodeError):
            document = data
    tree = trafilatura.load_html(document)
    if tree is None:
        return Extracted("", None)
    metadata = trafilatura.extract_metadata(tree, default_url=url)
    text = trafilatura.extract(
        tree,
        url=url,
        output_format="markdown",
        include_comments=False,
        include_tables=True,
        include_images=False,
        include_links=False,
    )
    return Extracted(text or "", metadata.title if metadata is not None else None)


def _pdf(data: bytes) -> Extracted:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise Unreadable("unsupported_type", "is a password-protected PDF")
        pages: list[str] = []
        kept = 0
        for page in reader.pages:
            pages.append(page.extract_text() or "")
            kept += len(pages[-1])
            if kept > SOURCE_MAX_CHARS:  # the rest would be cut anyway
                break
        title = reader.metadata.title if reader.metadata is not None else None
    except Unreadable:
        raise
    except Exception as exc:  # pypdf raises many kinds on a broken file
        raise Unreadable("unsupported_type", f"is not a readable PDF ({exc})") from exc
    return Extracted("\n\n".join(pages), title if isinstance(title, str) else None)


def _docx(data: bytes) -> Extracted:
    import docx
    from docx.table import Table

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise Unreadable("unsupported_type", "is not a readable DOCX (not a zip file)") from exc
    if unpacked > DOCX_MAX_UNPACKED_BYTES:
        raise Unreadable(
            "too_large",
            f"unpacks to {unpacked} bytes, over the {DOCX_MAX_UNPACKED_BYTES} bytes "
            "a DOCX may hold",
        )
    try:
        document = docx.Document(io.BytesIO(data))
        blocks: list[str] = []
        for block in document.iter_inner_content():
            if isinstance(block, Table):
                for row in block.rows:
                    cells: list[str] = []
                    for cell in row.cells:  # a merged cell comes back once per grid column
                        if not cells or cells[-1] != cell.text.strip():
                            cells.append(cell.text.strip())
                    blocks.append(" | ".join(cells))
            else:
                blocks.append(block.text)
        title = document.core_properties.title
    except Exception as exc:  # python-docx and lxml raise many kinds on a broken file
        raise Unreadable("unsupported_type", f"is not a readable DOCX ({exc})") from exc
    return Extracted("\n\n".join(b for b in blocks if b.strip()), title or None)
