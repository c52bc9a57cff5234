"""Ghost through its Admin API (`/ghost/api/admin/`), with an Admin API key.

Each request carries a fresh token: a JWT signed HS256 with the key's hex-decoded secret, its
header naming the key (`kid`), its payload `aud: "/admin/"` and five minutes from `iat` to
`exp` (Ghost refuses longer). Images go to `/images/upload/` once each (reused while their
bytes are the same); the post is created with `?source=html`, so that Ghost converts the HTML
into its own editor format, and updated with the `updated_at` Ghost last gave it (Ghost's guard
against overwriting an editor's change). Tags are sent by name; Ghost finds or creates them.

Not run against a live Ghost (it has no Debian package): tests/publish/test_ghost.py checks the
token and the requests against the Admin API's documented format.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx
import jwt

from services.gateway.publish.common import (
    MediaRecord,
    PublishRecord,
    PublishTransient,
    Save,
    call,
    describe,
    post_body,
    sha256,
)
from services.gateway.schemas import Article

logger = logging.getLogger(__name__)

ACCEPT_VERSION = "v5.0"
TOKEN_SECONDS = 5 * 60


def admin_token(key: str, now: float | None = None) -> str:
    """The Admin API JWT for ``key`` (`id:secret`, as Ghost shows it)."""
    key_id, _, secret = key.partition(":")
    iat = int(time.time() if now is None else now)
    return jwt.encode(
        {"iat": iat, "exp": iat + TOKEN_SECONDS, "aud": "/admin/"},
        bytes.fromhex(secret),
        algorithm="HS256",
        headers={"kid": key_id},
    )


class _GhostAuth(httpx.Auth):
    def __init__(self, key: str) -> None:
        self.key = key

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers["Authorization"] = f"Ghost {admin_token(self.key)}"
        yield request


class Ghost:
    name = "ghost"

    def __init__(self, url: str, admin_key: str, timeout: float) -> None:
        self.site = url.rstrip("/")
        self.client = httpx.Client(
            base_url=f"{self.site}/ghost/api/admin",
            auth=_GhostAuth(admin_key),
            timeout=timeout,
            headers={"Accept-Version": ACCEPT_VERSION, "User-Agent": "articleforge-publisher"},
        )

    def close(self) -> None:
        self.client.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return call(self.client, self.name, method, path, **kwargs)

    def _images(
        self, article: Article, pngs: Mapping[str, bytes], record: PublishRecord, save: Save
    ) -> None:
        for k, image in enumerate(article.images):
            png = pngs[image.id]
            known = record.media.get(image.id)
            if known is not None and known.sha256 == sha256(png):
                continue
            filename = f"{article.slug or article.id}-{k + 1}.png"
            reply = self._call(
                "POST",
                "/images/upload/",
                files={"file": (filename, png, "image/png")},
                data={"purpose": "image", "ref": image.id},
            ).json()
            url = reply["images"][0]["url"]
            record.media[image.id] = MediaRecord(id=url, url=url, sha256=sha256(png))
            save(record)
            logger.info("article %s: image %s uploaded to %s", article.id, image.id, url)

    def post_payload(self, article: Article, record: PublishRecord) -> dict[str, Any]:
        images: dict[str, tuple[str, dict[str, str]]] = {
            image_id: (m.url, {}) for image_id, m in record.media.items()
        }
        featured = article.featured_image
        payload: dict[str, Any] = {
            "title": article.title,
            "html": post_body(article, images),
            "slug": article.slug,
            "status": "published" if record.status == "publish" else "draft",
            "custom_excerpt": article.excerpt[:300],
            "tags": [{"name": tag} for tag in article.tags],
            "meta_title": article.seo_title or None,
            "meta_description": article.meta_description[:500] or None,
            "feature_image": record.media[featured.id].url if featured else None,
            "feature_image_alt": featured.alt[:191] if featured else None,
            # Ghost renders the caption as HTML; ours is text.
            "feature_image_caption": html.escape(featured.caption, quote=False)
            if featured
            else None,
        }
        return payload

    def publish(
        self, article: Article, pngs: Mapping[str, bytes], record: PublishRecord, save: Save
    ) -> PublishRecord:
        self._images(article, pngs, record, save)
        payload = self.post_payload(article, record)
        post = None
        if record.post_id is not None:
            current = self._call("GET", f"/posts/{record.post_id}/", ok=(200, 404))
            if current.status_code == 200:
                payload["updated_at"] = current.json()["posts"][0]["updated_at"]
                response = self._call(
                    "PUT",
                    f"/posts/{record.post_id}/",
                    params={"source": "html"},
                    json={"posts": [payload]},
                    ok=(200, 409),
                )
                if response.status_code == 409:  # an editor saved in between: read it again
                    raise PublishTransient(
                        f"ghost PUT /posts/{record.post_id}/ answered 409 {describe(response)}",
                        409,
                    )
                post = response.json()["posts"][0]
            else:
                logger.warning(
                    "article %s: post %s is gone from Ghost; creating a new one",
                    article.id,
                    record.post_id,
                )
        if post is None:
            post = self._call(
                "POST", "/posts/", params={"source": "html"}, json={"posts": [payload]}
            ).json()["posts"][0]
        record.post_id = str(post["id"])
        save(record)
        record.url = post.get("url")
        record.edit_url = f"{self.site}/ghost/#/editor/post/{post['id']}"
        record.media_ids = {image.id: record.media[image.id].url for image in article.images}
        record.featured_media = payload["feature_image"]
        record.tag_ids = [str(t["id"]) for t in post.get("tags", []) if "id" in t]
        record.seo_meta = [k for k in ("meta_title", "meta_description") if payload.get(k)]
        return record
