"""What a source is: the three request shapes, their limits, and the loaded result.

The request side (`UrlSource`, `TextSource`, `FileSource`, the `SourceSpec` union) validates
itself: a bad base64 or an oversize upload is a pydantic error on ``content_base64`` that states
the limit, which the gateway answers with a 422. The result side (`Source`, `SourceError`) is
what the article keeps and shows in its status; it round-trips through JSON with
``model_dump_json()`` / ``model_validate_json()``.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator

# A fetched or uploaded document, before extraction.
SOURCE_MAX_BYTES = 10 * 1024 * 1024
# Extracted text kept per source (about 30 000 English words); the rest is cut at a word break.
SOURCE_MAX_CHARS = 200_000
MAX_SOURCES = 10
# The whole fetch of one URL source: robots.txt, every redirect and the body.
FETCH_TIMEOUT_S = 10.0
MAX_REDIRECTS = 5
# RFC 9309 asks crawlers to read at least 500 KiB of a robots.txt; the rest is ignored.
ROBOTS_MAX_BYTES = 500 * 1024
# A DOCX is a zip; its parts together may not unpack to more than this (a zip bomb stops here).
DOCX_MAX_UNPACKED_BYTES = 100 * 1024 * 1024
TITLE_MAX_CHARS = 300

SourceType = Literal["url", "text", "file"]
SourceErrorType = Literal[
    "fetch_failed",
    "too_large",
    "private_address",
    "robots_disallowed",
    "unsupported_type",
    "no_text",
    "timeout",
]

# Request bodies refuse unknown fields by name, like the rest of the gateway's requests.
_REQUEST = ConfigDict(extra="forbid")
_WHITESPACE = re.compile(r"\s+")


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):g} MiB"


class UrlSource(BaseModel):
    model_config = _REQUEST

    type: Literal["url"] = Field(description="A web page or document to fetch.", examples=["url"])
    url: AnyHttpUrl = Field(
        description=(
            "http(s) URL of an HTML page, PDF, DOCX, Markdown or plain-text document. The "
            "workers fetch it with robots.txt honoured, at most "
            f"{MAX_REDIRECTS} redirects, {_mib(SOURCE_MAX_BYTES)} and {FETCH_TIMEOUT_S:g} s; "
            "addresses that are not public are refused."
        ),
        examples=["https://en.wikipedia.org/wiki/Rance_Tidal_Power_Station"],
    )
    title: str | None = Field(
        default=None,
        min_length=1,
        max_length=TITLE_MAX_CHARS,
        description="Title for the references list; the document's own title when absent.",
        examples=["Rance Tidal Power Station"],
    )


class TextSource(BaseModel):
    model_config = _REQUEST

    type: Literal["text"] = Field(description="Text given inline.", examples=["text"])
    title: str = Field(
        min_length=1,
        max_length=TITLE_MAX_CHARS,
        description="Title for the references list.",
        examples=["Press release, 3 March 2025"],
    )
    text: str = Field(
        min_length=1,
        max_length=SOURCE_MAX_CHARS,
        description=f"The source's text, plain or Markdown, up to {SOURCE_MAX_CHARS} characters.",
        examples=["The Rance tidal power station opened in 1966 and produces 240 MW at peak."],
    )


class FileSource(BaseModel):
    model_config = _REQUEST

    type: Literal["file"] = Field(description="An uploaded document.", examples=["file"])
    filename: str = Field(
        min_length=1,
        max_length=255,
        description="The file's name; its extension helps tell the type when media_type is absent.",
        examples=["annual-report-2024.pdf"],
    )
    content_base64: str = Field(
        min_length=1,
        description=(
            "The file's bytes in standard base64 (line breaks allowed), at most "
            f"{_mib(SOURCE_MAX_BYTES)} ({SOURCE_MAX_BYTES} bytes) once decoded. HTML, Markdown, "
            "plain text, PDF and DOCX are read."
        ),
        examples=["SGVsbG8sIHdvcmxkLg=="],
    )
    media_type: str | None = Field(
        default=None,
        max_length=255,
        description=(
            "MIME type such as application/pdf; when absent (or application/octet-stream) the "
            "extension, then the first bytes, tell the type."
        ),
        examples=["application/pdf"],
    )
    title: str | None = Field(
        default=None,
        min_length=1,
        max_length=TITLE_MAX_CHARS,
        description="Title for the references list; the document's own title when absent.",
        examples=["Annual report 2024"],
    )

    @field_validator("content_base64")
    @classmethod
    def _decodes_within_limit(cls, value: str) -> str:
        compact = _WHITESPACE.sub("", value)
        # Checked before decoding, so that an oversize upload costs no second copy in memory.
        padding = len(compact) - len(compact.rstrip("="))
        size = len(compact) * 3 // 4 - padding
        if size > SOURCE_MAX_BYTES:
            raise ValueError(
                f"content_base64 decodes to about {size} bytes; a file source may be at most "
                f"{SOURCE_MAX_BYTES} bytes ({_mib(SOURCE_MAX_BYTES)})"
            )
        try:
            base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"content_base64 is not valid base64 ({exc})") from exc
        return value

    def data(self) -> bytes:
        """The decoded bytes (validation has checked that they decode and fit the limit)."""
        return base64.b64decode(_WHITESPACE.sub("", self.content_base64), validate=True)


SourceSpec = Annotated[UrlSource | TextSource | FileSource, Field(discriminator="type")]
# The request field, ready to use: `sources: SourceSpecs = []`.
SourceSpecs = Annotated[
    list[SourceSpec],
    Field(
        max_length=MAX_SOURCES,
        description=(
            f"Up to {MAX_SOURCES} sources the article is written from and cites: URLs, "
            "uploaded files (base64) or inline text."
        ),
    ),
]


class SourceError(BaseModel):
    type: SourceErrorType = Field(
        description="Why the source is unusable.", examples=["private_address"]
    )
    message: str = Field(
        description="One sentence naming the source and the limit or cause.",
        examples=[
            "Source src_2 (http://example.com/old) redirects to http://169.254.169.254/, whose "
            "address 169.254.169.254 is not public."
        ],
    )


class SourceInfo(BaseModel):
    """A loaded source as the status and the article show it: everything but its text."""

    id: str = Field(description="src_1, src_2, … by position in the request.", examples=["src_1"])
    type: SourceType = Field(description="How the source was given.", examples=["url"])
    title: str = Field(
        description="The given title, else the document's own, else its URL or filename.",
        examples=["Rance Tidal Power Station"],
    )
    url: str | None = Field(
        default=None,
        description="The URL as given (url sources).",
        examples=["https://en.wikipedia.org/wiki/Rance_Tidal_Power_Station"],
    )
    final_url: str | None = Field(
        default=None,
        description="Where the redirects ended (url sources that were fetched).",
        examples=["https://en.wikipedia.org/wiki/Rance_Tidal_Power_Station"],
    )
    filename: str | None = Field(
        default=None, description="The uploaded file's name.", examples=["report.pdf"]
    )
    media_type: str | None = Field(
        default=None,
        description="The type the text was extracted as (or the unsupported type received).",
        examples=["text/html"],
    )
    sha256: str | None = Field(
        default=None,
        description="Hex SHA-256 of the document's bytes (of the UTF-8 text for text sources).",
        examples=["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
    )
    chars: int = Field(default=0, description="len(text).", examples=[5120])
    truncated: bool = Field(
        default=False,
        description=f"The extracted text was over {SOURCE_MAX_CHARS} characters and was cut.",
        examples=[False],
    )
    error: SourceError | None = Field(
        default=None, description="Set when the source is unusable.", examples=[None]
    )


class Source(SourceInfo):
    """A loaded source. ``text`` is what retrieval and citations read; "" when ``error`` is set."""

    text: str = Field(default="", description="The extracted text.", examples=["The Rance …"])

    @property
    def usable(self) -> bool:
        return self.error is None and bool(self.text)
