"""Loading sources: a spec in, a `Source` out. A bad source never raises; its ``error`` says why.

``load_source`` is a coroutine: the network part is async (httpx), and extraction, which is
blocking CPU work (trafilatura, pypdf, python-docx), runs in a worker thread so that an event
loop serving other requests is not held up. RQ jobs, which are synchronous, call
``asyncio.run(load_sources(specs, ...))``.

``timeout`` bounds the whole fetch of a URL (robots.txt, redirects and body), not the
extraction after it, which the byte limit bounds instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio
import httpx

from services.gateway.sources.extract import (
    MEDIA_TYPES,
    SUPPORTED,
    UNDECIDED,
    Unreadable,
    base_type,
    clean,
    clean_title,
    decide_kind,
    extract,
    truncate,
)
from services.gateway.sources.fetch import Fetcher, Refused, RobotsCache, mib, parse_networks
from services.gateway.sources.models import (
    FETCH_TIMEOUT_S,
    SOURCE_MAX_BYTES,
    FileSource,
    Source,
    SourceError,
    SourceErrorType,
    SourceSpec,
    TextSource,
    UrlSource,
)

logger = logging.getLogger(__name__)

_WORD = re.compile(r"\w")


async def load_source(
    spec: SourceSpec,
    index: int,
    *,
    allow_private: bool = False,
    allow_networks: Sequence[str] = (),
    client: httpx.AsyncClient | None = None,
    user_agent: str = "articleforge",
    timeout: float = FETCH_TIMEOUT_S,
    max_bytes: int = SOURCE_MAX_BYTES,
    robots: RobotsCache | None = None,
) -> Source:
    """Loads the source at ``index`` (0-based position in the request; its id is
    ``src_{index + 1}``).

    ``allow_networks`` are CIDRs let through the address guard although not public; a malformed
    one is a ValueError (a configuration mistake, not a bad source). A ``client`` passed in must
    connect directly, not through a proxy, since the guard checks the address it connects to.
    """
    networks = parse_networks(allow_networks)
    source = _blank(spec, f"src_{index + 1}")
    try:
        if isinstance(spec, TextSource):
            return _finish(source, spec.text, None, spec.text.encode(), titled=True)
        if isinstance(spec, FileSource):
            data = spec.data()
            if len(data) > max_bytes:
                return _failed(source, "too_large", f"is larger than the {mib(max_bytes)} limit")
            media_type, charset = base_type(spec.media_type)
            return await _from_bytes(
                source,
                data,
                media_type,
                charset,
                spec.filename,
                None,
                titled=spec.title is not None,
            )
        async with _http(client, timeout, user_agent) as http:
            fetcher = Fetcher(
                http,
                allow_private=allow_private,
                networks=networks,
                user_agent=user_agent,
                max_bytes=max_bytes,
                robots=robots,
            )
            with anyio.fail_after(timeout):
                fetched = await fetcher.fetch(str(spec.url))
        source = source.model_copy(update={"final_url": fetched.final_url})
        path = httpx.URL(fetched.final_url).path
        return await _from_bytes(
            source,
            fetched.data,
            fetched.media_type,
            fetched.charset,
            path,
            fetched.final_url,
            titled=spec.title is not None,
        )
    except Refused as refused:
        return _failed(source, refused.type, refused.cause)
    except (TimeoutError, httpx.TimeoutException):
        return _failed(source, "timeout", f"was not fetched within the {timeout:g} s limit")
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
        reason = str(exc) or type(exc).__name__
        return _failed(source, "fetch_failed", f"could not be fetched ({reason})")
    except Exception as exc:  # a bug here must still not fail the article
        logger.exception("source %s: loading failed", source.id)
        return _failed(source, "fetch_failed", f"could not be loaded ({type(exc).__name__})")


async def load_sources(
    specs: Sequence[SourceSpec],
    *,
    allow_private: bool = False,
    allow_networks: Sequence[str] = (),
    client: httpx.AsyncClient | None = None,
    user_agent: str = "articleforge",
    timeout: float = FETCH_TIMEOUT_S,
    max_bytes: int = SOURCE_MAX_BYTES,
) -> list[Source]:
    """All of a request's sources, concurrently, in request order, over one client, with
    one robots.txt fetch per origin."""
    robots: RobotsCache = {}
    async with _http(client, timeout, user_agent) as http:
        return list(
            await asyncio.gather(
                *(
                    load_source(
                        spec,
                        index,
                        allow_private=allow_private,
                        allow_networks=allow_networks,
                        client=http,
                        user_agent=user_agent,
                        timeout=timeout,
                        max_bytes=max_bytes,
                        robots=robots,
                    )
                    for index, spec in enumerate(specs)
                )
            )
        )


@asynccontextmanager
async def _http(
    client: httpx.AsyncClient | None, timeout: float, user_agent: str
) -> AsyncIterator[httpx.AsyncClient]:
    if client is not None:
        yield client
        return
    # trust_env=False: a proxy from the environment would make the guard check the proxy's
    # address instead of the source's.
    async with httpx.AsyncClient(
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": user_agent},
    ) as own:
        yield own


def _blank(spec: SourceSpec, source_id: str) -> Source:
    if isinstance(spec, UrlSource):
        url = str(spec.url)
        return Source(id=source_id, type="url", title=clean_title(spec.title) or url, url=url)
    if isinstance(spec, FileSource):
        return Source(
            id=source_id,
            type="file",
            title=clean_title(spec.title) or spec.filename,
            filename=spec.filename,
            media_type=spec.media_type,
        )
    title = clean_title(spec.title) or "Untitled"
    return Source(id=source_id, type="text", title=title, media_type="text/plain")


def _where(source: Source) -> str:
    if source.url:
        return source.url
    if source.filename:
        return source.filename
    return f"“{source.title}”"


def _failed(source: Source, type: SourceErrorType, cause: str) -> Source:
    message = f"Source {source.id} ({_where(source)}) {cause}."
    logger.info("source %s: %s", source.id, message)
    error = SourceError(type=type, message=message)
    return source.model_copy(update={"text": "", "chars": 0, "error": error})


def _finish(
    source: Source, raw_text: str, title: str | None, data: bytes, *, titled: bool
) -> Source:
    text, truncated = truncate(clean(raw_text))
    source = source.model_copy(update={"sha256": hashlib.sha256(data).hexdigest()})
    if not _WORD.search(text):
        return _failed(source, "no_text", "has no extractable text")
    update: dict[str, object] = {"text": text, "chars": len(text), "truncated": truncated}
    if title and not titled:  # the request's title, else the document's, else URL or filename
        update["title"] = title
    logger.info("source %s: %d characters of text%s", source.id, len(text), " (cut)" * truncated)
    return source.model_copy(update=update)


async def _from_bytes(
    source: Source,
    data: bytes,
    media_type: str,
    charset: str | None,
    name: str | None,
    url: str | None,
    *,
    titled: bool,
) -> Source:
    source = source.model_copy(update={"sha256": hashlib.sha256(data).hexdigest()})
    kind = decide_kind(data, media_type, name)
    if kind is None:
        label = media_type if media_type not in UNDECIDED else "of no type that can be told"
        source = source.model_copy(update={"media_type": media_type or None})
        return _failed(source, "unsupported_type", f"is {label}, not {SUPPORTED}")
    source = source.model_copy(update={"media_type": MEDIA_TYPES[kind]})
    try:
        extracted = await anyio.to_thread.run_sync(extract, kind, data, charset, url)
    except Unreadable as unreadable:
        return _failed(source, unreadable.type, unreadable.cause)
    return _finish(source, extracted.text, clean_title(extracted.title), data, titled=titled)
