"""What the WordPress and Ghost targets share: the record of what exists remotely, the post
body made from the article, and HTTP calls whose failures say whether a retry can help."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, Field

from services.gateway.assemble import figure, references, sections_html, xhtml
from services.gateway.publish.schemas import PublishError, PublishInfo, parse_utc
from services.gateway.schemas import Article, ImageRef

logger = logging.getLogger(__name__)


class PublishTransient(Exception):
    """A 429, a 5xx or no answer at all: the next attempt (RQ Retry) may succeed."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class PublishRejected(Exception):
    """The CMS refused the request (a 4xx other than 429); repeating it would not help."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def error_info(exc: BaseException, retries_left: int = 0) -> PublishError:
    if isinstance(exc, PublishRejected):
        return PublishError(type="cms_rejected", message=str(exc), status_code=exc.status_code)
    if isinstance(exc, PublishTransient):
        message = str(exc) + (f" ({retries_left} retries left)" if retries_left else "")
        return PublishError(type="cms_unavailable", message=message, status_code=exc.status_code)
    return PublishError(type="publish_failed", message=f"{type(exc).__name__}: {exc}")


class MediaRecord(BaseModel):
    """One article image as it exists in the CMS, and the bytes it was made from."""

    id: str = Field(description="WordPress media id; Ghost has none and repeats the URL.")
    url: str
    sha256: str
    alt: str = ""
    caption: str = ""
    title: str = ""
    attached: bool = False  # WordPress: attached to the post (its "Uploaded to")


class PublishRecord(PublishInfo):
    """``PublishInfo`` plus the private bookkeeping that makes publishing idempotent."""

    media: dict[str, MediaRecord] = Field(default_factory=dict)
    # Image id -> SHA-256 of an upload sent but not answered yet: only such an image can be in
    # the CMS unrecorded (its answer lost), so only such an image is looked for before upload.
    uploading: dict[str, str] = Field(default_factory=dict)
    seq: int = 0  # counts publish requests; webhook ids are stable per request
    # `link_related` (services.gateway.batches.links): the batch articles this post mentions,
    # id -> the URL its link was drawn with (None: that article had no post yet).
    links: dict[str, str | None] = Field(default_factory=dict)

    def info(self) -> PublishInfo:
        private = {"media", "uploading", "seq", "links"}
        return PublishInfo.model_validate(self.model_dump(exclude=private))


Save = Callable[[PublishRecord], None]


class Target(Protocol):
    name: str

    def publish(
        self, article: Article, pngs: Mapping[str, bytes], record: PublishRecord, save: Save
    ) -> PublishRecord:
        """Creates or updates the post for ``article``; calls ``save`` after every remote
        change, so that an attempt that dies half-way is resumed, never repeated."""
        ...


# A schedule this close to now is published at once: a CMS refuses a `future`/`scheduled`
# time already past by the time the request reaches it.
SCHEDULE_MARGIN = timedelta(seconds=60)


def scheduled_for(record: PublishInfo) -> datetime | None:
    """When the post goes public, if it is still ahead: `at` asked with status `publish` and
    more than SCHEDULE_MARGIN away. None means now (or never, for a draft)."""
    if record.at is None or record.status != "publish":
        return None
    moment = parse_utc(record.at)
    return moment if moment > datetime.now(UTC) + SCHEDULE_MARGIN else None


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def marker(article_id: str) -> str:
    """An HTML comment at the top of the post body, to find a post whose creation answer was
    lost (the CMS made it, the worker never heard)."""
    return f"<!-- articleforge:{article_id} -->"


def media_marker(article_id: str, png_sha256: str) -> str:
    """A word in an uploaded image's description (a hidden HTML comment), to find an upload
    whose answer was lost: the article's id and the first 16 hex digits of the PNG's SHA-256."""
    return f"articleforge:{article_id}:{png_sha256[:16]}"


def call(
    client: httpx.Client,
    target: str,
    method: str,
    path: str,
    ok: tuple[int, ...] = (200, 201),
    shown: str | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """One request; an answer outside ``ok`` raises PublishTransient or PublishRejected with the
    CMS's own error code and message (naming the request as ``shown``, by default ``path``).
    Callers that handle a status themselves list it in ``ok``."""
    shown = shown or path
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        raise PublishTransient(f"{target} {method} {shown}: no answer ({exc!r})") from exc
    if response.status_code in ok:
        return response
    detail = describe(response)
    message = f"{target} {method} {shown} answered {response.status_code} {detail}".rstrip()
    if response.status_code == 429 or response.status_code >= 500:
        raise PublishTransient(message, response.status_code)
    raise PublishRejected(message, response.status_code)


def describe(response: httpx.Response) -> str:
    """The error a CMS put in its body: WordPress `{code, message}`, Ghost `{errors: [...]}`."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict) and "code" in body:
        return f"{body.get('code')}: {body.get('message', '')}"
    if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
        first = body["errors"][0]
        context = f" ({first['context']})" if first.get("context") else ""
        return f"{first.get('type', 'error')}: {first.get('message', '')}{context}"
    return str(body)[:300]


def post_body(article: Article, images: Mapping[str, tuple[str, dict[str, str]]]) -> str:
    """The article's sections as a post body, drawn as the article's own HTML is
    (``assemble.sections_html``) but without the title (the post has its own) or the featured
    figure (the CMS shows the featured image; in the body too it would appear twice). ``images``
    maps an article image id to the CMS's URL for it and attributes for its `<img>`
    (WordPress: its `wp-image-ID` class)."""

    def image(ref: ImageRef) -> str:
        src, attrs = images.get(ref.id, (ref.url, {}))
        return figure(ref, src, attrs)

    body = xhtml(sections_html(article.sections, image))
    _, cited = references(article)  # the list the sections' [n] links point at
    return body + ("\n" + cited if cited else "")
