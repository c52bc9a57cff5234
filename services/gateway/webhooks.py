"""Webhook delivery, signed per the Standard Webhooks spec, with an SSRF guard.

Headers: ``webhook-id`` (stable across retries, so receivers can de-duplicate),
``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{ts}.{body}">``.
Signing uses the ``standardwebhooks`` package, the spec's reference library. A non-2xx answer
raises, and RQ's ``Retry`` schedules the next attempt.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from services.common.errors import InvalidRequest
from services.gateway.config import GatewaySettings

logger = logging.getLogger(__name__)


class WebhookRefused(InvalidRequest):
    """The URL points somewhere a webhook may not go."""


def check_url(url: str, allow_private: bool) -> None:
    """Refuses URLs that resolve to private, loopback, link-local or otherwise internal
    addresses (SSRF), unless ``allow_private``. Checked at submission and again at delivery,
    since DNS answers can change in between."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused(
            f"webhook.url must be an http(s) URL, got {url!r}", param="webhook.url"
        )
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise WebhookRefused(
            f"webhook.url host {parts.hostname!r} does not resolve: {exc}", param="webhook.url"
        ) from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global or address.is_multicast:
            raise WebhookRefused(
                f"webhook.url resolves to {address}, a private/loopback/link-local address; "
                "set ARTICLEFORGE_WEBHOOK_ALLOW_PRIVATE=true to allow it",
                param="webhook.url",
            )


def sign(secret: str, message_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    signature = Webhook(secret).sign(message_id, timestamp, body)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def deliver(
    config: GatewaySettings,
    url: str,
    event: str,
    article_id: str,
    data: dict[str, Any],
    message_id: str | None = None,
) -> None:
    """``message_id`` defaults to one per article and event; an event that can happen more than
    once (`article.updated`, per revision) passes its own."""
    check_url(url, config.webhook_allow_private)
    now = datetime.now(UTC)
    body = json.dumps({"type": event, "timestamp": now.isoformat(), "data": data})
    message_id = message_id or f"msg_{article_id}_{event.rsplit('.', 1)[-1]}"
    headers = sign(config.resolved_webhook_secret(), message_id, now, body)
    response = httpx.post(
        url,
        content=body,
        headers=headers,
        timeout=config.webhook_timeout_seconds,
        follow_redirects=False,
    )
    if not 200 <= response.status_code < 300:
        raise RuntimeError(f"webhook {url} answered {response.status_code}")
    logger.info("article %s: webhook %s delivered to %s", article_id, event, url)
