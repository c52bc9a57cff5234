"""Fetching a URL source: the address guard on every hop, robots.txt, and a bounded body.

The guard is the webhooks' rule (``services/gateway/webhooks.py``): a host whose addresses are
not all global unicast is refused, unless ``allow_private`` or one of ``allow_networks`` covers
them. Redirects are followed here, not by httpx, so that each ``Location`` is resolved and
checked before anything connects to it; after connecting, the peer's address is checked again,
which catches a DNS answer that changed in between (rebinding) before a byte of body is read.

robots.txt follows RFC 9309, parsed by Protego (Scrapy's parser: wildcards, ``$``, longest match,
the spec's user-agent groups; the stdlib parser knows none of those). It is fetched once per
origin with the same guard and limits: a 4xx (a missing file) allows everything, a 5xx
disallows everything, a file past 500 KiB is read up to there.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import httpx
from protego import Protego

from services.gateway.sources.extract import base_type
from services.gateway.sources.models import MAX_REDIRECTS, ROBOTS_MAX_BYTES, SourceErrorType

logger = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_ACCEPT = (
    "text/html,application/xhtml+xml,application/pdf,"
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document,"
    "text/markdown,text/plain;q=0.9,*/*;q=0.1"
)
_ALLOW_ALL = ""
_DISALLOW_ALL = "User-agent: *\nDisallow: /\n"


class Refused(Exception):
    """The fetch stopped; ``cause`` completes "Source src_1 (URL) …"."""

    def __init__(self, type: SourceErrorType, cause: str) -> None:
        super().__init__(cause)
        self.type: SourceErrorType = type
        self.cause = cause


@dataclass(frozen=True)
class Fetched:
    final_url: str
    media_type: str  # the Content-Type without parameters, lowercased; "" when absent
    charset: str | None
    data: bytes


def parse_networks(networks: Sequence[str]) -> list[Network]:
    """CIDRs such as ``127.0.0.1/32``; a bad one is a ValueError (a configuration mistake)."""
    return [ipaddress.ip_network(network, strict=False) for network in networks]


def mib(size: int) -> str:
    return f"{size / (1024 * 1024):g} MiB"


# origin -> the parse of its robots.txt, fetched once for every source of a request
RobotsCache = dict[str, "asyncio.Future[Protego]"]


class Fetcher:
    """One source's fetch: a client, the guard's settings and the robots.txt seen so far."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        allow_private: bool,
        networks: Sequence[Network],
        user_agent: str,
        max_bytes: int,
        robots: RobotsCache | None = None,
    ) -> None:
        self.client = client
        self.allow_private = allow_private
        self.networks = list(networks)
        self.user_agent = user_agent
        self.max_bytes = max_bytes
        # Shared by the sources of one request (``load_sources``): one robots.txt per origin.
        self._robots: RobotsCache = {} if robots is None else robots

    async def fetch(self, url: str) -> Fetched:
        current = url
        for hop in range(MAX_REDIRECTS + 1):
            where = "" if hop == 0 else f"redirects to {current}, which "
            await self._check_address(current, where)
            if not await self._robots_allow(current):
                origin = _origin(httpx.URL(current))
                raise Refused(
                    "robots_disallowed",
                    f"{where}is disallowed by {origin}/robots.txt for user agent "
                    f"{self.user_agent!r}",
                )
            response = await self._open(current, where)
            try:
                if response.status_code in _REDIRECTS:
                    current = _next_url(current, response)
                    continue
                if not 200 <= response.status_code < 300:
                    raise Refused("fetch_failed", f"{where}answered HTTP {response.status_code}")
                data = await _read(response, self.max_bytes, where)
            finally:
                await response.aclose()
            media_type, charset = base_type(response.headers.get("content-type"))
            logger.info("source %s: fetched %d bytes of %s", url, len(data), media_type or "?")
            return Fetched(current, media_type, charset, data)
        raise Refused("fetch_failed", f"redirects more than {MAX_REDIRECTS} times")

    def allowed(self, address: Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
        if self.allow_private or any(address in network for network in self.networks):
            return True
        return address.is_global and not address.is_multicast

    async def _check_address(self, url: str, where: str) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise Refused("fetch_failed", f"{where}is not an http(s) URL")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            infos = await anyio.getaddrinfo(parsed.host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise Refused(
                "fetch_failed", f"{where}names a host that does not resolve ({parsed.host})"
            ) from exc
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if not self.allowed(address):
                raise Refused(
                    "private_address",
                    f"{where}resolves to {address}, an address that is not public "
                    "(private, loopback, link-local or reserved)",
                )

    async def _open(self, url: str, where: str) -> httpx.Response:
        request = self.client.build_request(
            "GET", url, headers={"User-Agent": self.user_agent, "Accept": _ACCEPT}
        )
        response = await self.client.send(request, stream=True, follow_redirects=False)
        stream = response.extensions.get("network_stream")
        peer = stream.get_extra_info("server_addr") if stream is not None else None
        if peer:
            address = ipaddress.ip_address(str(peer[0]).split("%")[0])
            if not self.allowed(address):
                await response.aclose()
                raise Refused(
                    "private_address",
                    f"{where}connected to {address}, an address that is not public "
                    "(the host's DNS answer changed after it was checked)",
                )
        return response

    async def _robots_allow(self, url: str) -> bool:
        parsed = httpx.URL(url)
        origin = _origin(parsed)
        task = self._robots.get(origin)
        if task is None:  # the first source of this origin fetches it; the others wait for it
            task = self._robots[origin] = asyncio.ensure_future(self._parse_robots(origin))
        # shielded: a source that times out stops waiting without cancelling the others' fetch
        rules = await asyncio.shield(task)
        return bool(rules.can_fetch(url, self.user_agent))

    async def _parse_robots(self, origin: str) -> Protego:
        return Protego.parse(await self._robots_txt(origin))

    async def _robots_txt(self, origin: str) -> str:
        current = f"{origin}/robots.txt"
        for _ in range(MAX_REDIRECTS + 1):
            try:
                await self._check_address(current, "")
            except Refused:
                return _ALLOW_ALL  # RFC 9309: a robots.txt that cannot be reached is unavailable
            response = await self._open(current, "")
            try:
                status = response.status_code
                if status in _REDIRECTS:
                    try:
                        current = _next_url(current, response)
                    except Refused:
                        return _ALLOW_ALL
                    continue
                if 200 <= status < 300:
                    body = await _read(response, ROBOTS_MAX_BYTES, "", truncate=True)
                    return body.decode("utf-8", errors="replace")
            finally:
                await response.aclose()
            # RFC 9309 2.3.1: 4xx means no rules; 5xx (and 429, as Google reads it) means
            # the server cannot say, so nothing may be fetched.
            if status == 429 or status >= 500:
                logger.info("robots %s: HTTP %d, treated as disallow-all", current, status)
                return _DISALLOW_ALL
            return _ALLOW_ALL
        return _ALLOW_ALL  # more than five redirects: unavailable (RFC 9309 2.3.1.2)


def _origin(url: httpx.URL) -> str:
    port = f":{url.port}" if url.port else ""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}{port}"


def _next_url(current: str, response: httpx.Response) -> str:
    location = response.headers.get("location")
    if not location:
        raise Refused("fetch_failed", f"answered HTTP {response.status_code} without a Location")
    try:
        target = httpx.URL(current).join(location)
    except httpx.InvalidURL as exc:
        raise Refused("fetch_failed", f"redirects to an invalid URL {location!r}") from exc
    if target.scheme not in ("http", "https"):
        raise Refused("fetch_failed", f"redirects to {target}, which is not an http(s) URL")
    return str(target)


async def _read(response: httpx.Response, limit: int, where: str, truncate: bool = False) -> bytes:
    """The body, at most ``limit`` bytes (after content decoding): beyond that the download
    stops, and the source is too large (or, with ``truncate``, the first ``limit`` bytes)."""
    declared = response.headers.get("content-length", "")
    if not truncate and declared.isdigit() and int(declared) > limit:
        raise Refused("too_large", f"{where}is {int(declared)} bytes, over the {mib(limit)} limit")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            if truncate:
                return bytes(body[:limit])
            raise Refused(
                "too_large",
                f"{where}is larger than the {mib(limit)} limit ({limit} bytes); "
                "the download stopped there",
            )
    return bytes(body)
