"""The article form's sources box: URLs, uploaded files and a pasted text become the request's
`sources` (services/gateway/sources/models.py), checked against the gateway's limits before
anything is sent.

Refused here, each with a sentence naming the limit: more than MAX_SOURCES sources, a file of a
type the gateway does not read, a file over SOURCE_MAX_BYTES, and a request that would not fit
the gateway's ARTICLEFORGE_MAX_BODY_BYTES (files travel as base64, 4/3 of their size, and the
default limit is 1 MiB). What only the gateway can judge (a URL's syntax) comes back as its 422,
which `explained` ties to the control it came from.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from services.gateway.sources.models import MAX_SOURCES, SOURCE_MAX_BYTES, TextSource
from services.ui.client import ApiError, json_bytes
from services.ui.limits import bounds

# The extensions the gateway reads (services/gateway/sources/extract.py), by kind. The uploader
# takes any file, so that another type gets this list as its answer rather than Streamlit's.
EXTENSIONS = {
    "HTML": (".html", ".htm", ".xhtml"),
    "Markdown": (".md", ".markdown"),
    "plain text": (".txt", ".text"),
    "PDF": (".pdf",),
    "DOCX": (".docx",),
}
SUPPORTED = frozenset(e for group in EXTENSIONS.values() for e in group)
_PARAM = re.compile(r"^sources\.(\d+)(?:\.|$)")


class Refused(Exception):
    """The sources as given cannot be sent; the message says which limit they break."""


def size(n: int) -> str:
    """Bytes as a person reads them: 512 bytes, 768 KiB, 10 MiB."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _types() -> str:
    named = [f"{kind} ({', '.join(ext)})" for kind, ext in EXTENSIONS.items()]
    return ", ".join(named[:-1]) + " or " + named[-1]


@dataclass
class SourcesInput:
    """What the box holds when the form is submitted."""

    urls: str = ""
    files: list[UploadedFile] = field(default_factory=list)
    title: str = ""
    text: str = ""
    require_citations: bool = False


@dataclass
class Sourced:
    """The request's `sources`, and for each the control it came from (for the gateway's 422)."""

    specs: list[dict[str, Any]] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)


def sources_box(max_body_bytes: int) -> SourcesInput:
    """The box's controls; call inside the form."""
    st.markdown("**Sources**")
    urls = st.text_area(
        "Source URLs, one a line",
        placeholder="https://example.com/press/solar-2026",
        help="The workers fetch each page or document (HTML, PDF, DOCX, Markdown, text); "
        "addresses that are not public are refused and robots.txt is honoured.",
        key="source_urls",
    )
    files = st.file_uploader(
        "Source files",
        accept_multiple_files=True,
        max_upload_size=SOURCE_MAX_BYTES >> 20,  # in MiB: the browser refuses bigger files
        help=f"{_types()}; each at most {size(SOURCE_MAX_BYTES)}.",
        key="source_files",
    )
    # Room for files: the request limit less a few KB for the rest of the form, times 3/4.
    room = max(0, (max_body_bytes - 16 * 1024) * 3 // 4)
    st.caption(
        f"Files travel inside the request as base64, and the gateway takes requests of at most "
        f"{size(max_body_bytes)} (ARTICLEFORGE_MAX_BODY_BYTES): about {size(room)} of files in "
        "all. Give larger documents as URLs."
    )
    left, right = st.columns([1, 2])
    title = left.text_input(
        "Title of the pasted text",
        max_chars=bounds(TextSource, "title").max_length,
        placeholder="Press release, 3 March 2026",
        key="source_title",
    )
    text = right.text_area(
        "Pasted text",
        max_chars=bounds(TextSource, "text").max_length,
        placeholder="The text of a press release, notes, an earlier post…",
        key="source_text",
    )
    require = st.checkbox(
        "Require citations",
        key="require_citations",
        help="A section that cites none of its sources is written once more; if it still "
        "cites nothing it is kept and listed in the provenance.",
    )
    return SourcesInput(urls, list(files or []), title, text, require)


def collect(given: SourcesInput) -> Sourced:
    """The request's sources: URLs, then files, then the pasted text. Raises `Refused`."""
    urls = [(n, line.strip()) for n, line in enumerate(given.urls.splitlines(), 1) if line.strip()]
    title, text = given.title.strip(), given.text.strip()
    pasted = 1 if title or text else 0
    counts = {"URLs": len(urls), "files": len(given.files), "pasted text": pasted}
    if sum(counts.values()) > MAX_SOURCES:
        counted = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
        raise Refused(
            f"{sum(counts.values())} sources given ({counted}); an article takes at most "
            f"{MAX_SOURCES}."
        )
    out = Sourced()
    for number, url in urls:
        out.specs.append({"type": "url", "url": url})
        out.origins.append(f"URL line {number} ({url})")
    for upload in given.files:
        name = PurePosixPath(upload.name).name
        if PurePosixPath(name).suffix.lower() not in SUPPORTED:
            raise Refused(f"`{name}` is not a type the gateway reads: upload {_types()}.")
        if upload.size > SOURCE_MAX_BYTES:
            raise Refused(
                f"`{name}` is {size(upload.size)} ({upload.size} bytes); a file source may be "
                f"at most {size(SOURCE_MAX_BYTES)} ({SOURCE_MAX_BYTES} bytes)."
            )
        if upload.size == 0:
            raise Refused(f"`{name}` is empty.")
        data = base64.b64encode(upload.getvalue()).decode("ascii")
        out.specs.append({"type": "file", "filename": name, "content_base64": data})
        out.origins.append(f"the file `{name}`")
    if text and not title:
        raise Refused("Give the pasted text a title: it is its entry in the references.")
    if title and not text:
        raise Refused(f"The pasted text “{title}” is empty.")
    if text:
        out.specs.append({"type": "text", "title": title, "text": text})
        out.origins.append(f"the pasted text “{title}”")
    return out


def check_fits(body: dict[str, Any], max_body_bytes: int) -> None:
    """Refuses a request body the gateway would answer with a 413."""
    sent = len(json_bytes(body))
    if sent <= max_body_bytes:
        return
    raise Refused(
        f"The request would be {size(sent)} ({sent} bytes): files travel as base64, 4/3 of "
        f"their size. The gateway takes at most {size(max_body_bytes)} ({max_body_bytes} bytes, "
        "ARTICLEFORGE_MAX_BODY_BYTES). Give large documents as URLs, or raise "
        "ARTICLEFORGE_MAX_BODY_BYTES for the gateway and the studio alike."
    )


def explained(error: ApiError, origins: list[str]) -> ApiError:
    """A 422 about `sources.k…` also names the control that source `k` came from."""
    found = _PARAM.match(error.param or "")
    if error.status != 422 or not found or int(found.group(1)) >= len(origins):
        return error
    where = origins[int(found.group(1))]
    return ApiError(
        f"{error.message} (source {int(found.group(1)) + 1}: {where})",
        status=error.status,
        type_=error.type,
        param=error.param,
        retry_after=error.retry_after,
    )
