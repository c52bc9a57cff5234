"""Signed image URLs, in the manner of S3 presigned URLs (or the store's own presigned URLs).

An article's images are embedded by CMS pages, which send no API key, so each image URL carries
``signature = HMAC-SHA256(key, "{image_id}.{expires}")`` (base64url, unpadded) and, when
``ARTICLEFORGE_IMAGE_URL_TTL_SECONDS`` is set, ``expires`` (Unix seconds; absent = 0 = never).
The key is the server-only URL signing secret, not the webhook secret: webhook receivers hold
that one, and could then sign URLs for images of other keys.

With ``ARTICLEFORGE_STORAGE_IMAGE_URLS=presigned`` (images in an S3 bucket), ``signed_image_url``
gives the store's presigned GET URL instead, valid for ARTICLEFORGE_IMAGE_URL_TTL_SECONDS: the
client fetches the PNG from the store, not through the gateway. The gateway's own route still
serves every image, for a key or for one of its signed URLs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

from services.gateway.config import GatewaySettings
from services.gateway.storage import kept_secret
from services.gateway.store import image_key

SECRET_FILE = "url_signing_secret"


def signing_key(config: GatewaySettings) -> bytes:
    """The configured secret, or the one kept in the storage (created on first use; the
    workers sign too, when they save an image)."""
    if config.url_signing_secret:
        return config.url_signing_secret.encode()
    return kept_secret(config.storage(), SECRET_FILE, lambda: secrets.token_urlsafe(32)).encode()


def signature(key: bytes, image_id: str, expires: int) -> str:
    mac = hmac.new(key, f"{image_id}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def signed_image_url(config: GatewaySettings, image_id: str, now: float | None = None) -> str:
    """The public URL of an image, valid without a key (until it expires, if a TTL is set):
    the gateway's, or the store's presigned one (ARTICLEFORGE_STORAGE_IMAGE_URLS)."""
    if config.storage_image_urls == "presigned":
        return config.storage().presigned_url(image_key(image_id), config.image_url_ttl_seconds)
    base = f"{config.public_url.rstrip('/')}/v1/images/{image_id}"
    expires = 0
    if config.image_url_ttl_seconds:
        expires = int(now if now is not None else time.time()) + config.image_url_ttl_seconds
    query = f"expires={expires}&" if expires else ""
    return f"{base}?{query}signature={signature(signing_key(config), image_id, expires)}"


def check(key: bytes, image_id: str, expires: int, given: str, now: float) -> str | None:
    """None when ``given`` signs this image and has not expired, else what is wrong."""
    if not hmac.compare_digest(signature(key, image_id, expires).encode(), given.encode()):
        return "the image URL's signature is not valid"
    if expires and now > expires:
        return "the image URL expired (ARTICLEFORGE_IMAGE_URL_TTL_SECONDS); send an API key"
    return None
