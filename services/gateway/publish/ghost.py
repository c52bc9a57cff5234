"""Ghost through its Admin API (`/ghost/api/admin/`), with an Admin API key.

Each request carries a fresh token: a JWT signed HS256 with the key's hex-decoded secret, its
header naming the key (`kid`), its payload `aud: "/admin/"` and five minutes from `iat` to
`exp` (Ghost refuses longer). Images go to `/images/upload/` once each (reused while their
bytes are the same); the post is created with `?source=html`, so that Ghost converts the HTML
into its own editor format, and updated with the `updated_at` Ghost last gave it (Ghost's guard
against overwriting an editor's change; without it Ghost answers 422). Tags are sent by name;
Ghost finds or creates them. `Accept-Version: v5.0` is the oldest Admin API this speaks; Ghost 6
answers it as it is.

The status, as Ghost's post model has it (tests/publish/test_ghost_live.py shows each case):
a schedule is `scheduled` with `published_at`, at least two minutes ahead (Ghost refuses a
nearer one, so a nearer time is published at once). A post that goes public now gets
`published_at: null`, which Ghost stamps with its own now: a scheduled or unscheduled post keeps
its old `published_at` otherwise, and would go "public" dated in the future. An already public
post keeps the date it went public. A draft drops its `published_at` (else a later publish would
reuse a stale schedule). Ghost refuses `published` -> `scheduled` outright, so a public post that
is given a schedule is first turned back into a draft.

Run against a live Ghost 6 (npm, SQLite; scripts/install-ghost.sh) by
tests/publish/test_ghost_live.py; tests/publish/test_ghost.py checks the token and the requests
against the Admin API's documented format.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
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
    scheduled_for,
    sha256,
)
from services.gateway.publish.schemas import utc_iso
from services.gateway.schemas import Article

logger = logging.getLogger(__name__)

ACCEPT_VERSION = "v5.0"
TOKEN_SECONDS = 5 * 60
# Ghost's `times.cannotScheduleAPostBeforeInMinutes` (2), and time for the request to arrive.
SCHEDULE_AHEAD = timedelta(minutes=2, seconds=15)


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

    def status_fields(
        self, article: Article, record: PublishRecord, current: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """`status` and, where it must change, `published_at`, given the post as Ghost has it
        now (``current``; None for a new post)."""
        moment = scheduled_for(record)
        if moment is not None and moment < datetime.now(UTC) + SCHEDULE_AHEAD:
            logger.info(
                "article %s: %s is under %s ahead, nearer than Ghost schedules; publishing now",
                article.id,
                record.at,
                SCHEDULE_AHEAD,
            )
            moment = None
        if moment is not None:
            return {"status": "scheduled", "published_at": utc_iso(moment)}
        if record.status == "publish":
            if current is not None and current.get("status") == "published":
                return {"status": "published"}  # keeps the date it went public
            return {"status": "published", "published_at": None}  # Ghost's now
        return {"status": "draft", "published_at": None}

    def _update(self, post_id: str, fields: dict[str, Any], updated_at: str) -> dict[str, Any]:
        response = self._call(
            "PUT",
            f"/posts/{post_id}/",
            params={"source": "html"},
            json={"posts": [{**fields, "updated_at": updated_at}]},
            ok=(200, 409),
        )
        if response.status_code == 409:  # an editor saved in between: read it again
            raise PublishTransient(
                f"ghost PUT /posts/{post_id}/ answered 409 {describe(response)}", 409
            )
        return dict(response.json()["posts"][0])

    def publish(
        self, article: Article, pngs: Mapping[str, bytes], record: PublishRecord, save: Save
    ) -> PublishRecord:
        self._images(article, pngs, record, save)
        payload = self.post_payload(article, record)
        post = None
        if record.post_id is not None:
            found = self._call("GET", f"/posts/{record.post_id}/", ok=(200, 404))
            if found.status_code == 200:
                current = found.json()["posts"][0]
                status = self.status_fields(article, record, current)
                updated_at = current["updated_at"]
                if status["status"] == "scheduled" and current.get("status") == "published":
                    logger.info(
                        "article %s: post %s is public; unpublishing it to schedule it",
                        article.id,
                        record.post_id,
                    )
                    draft = {"status": "draft", "published_at": None}
                    updated_at = self._update(record.post_id, draft, updated_at)["updated_at"]
                post = self._update(record.post_id, {**payload, **status}, updated_at)
            else:
                logger.warning(
                    "article %s: post %s is gone from Ghost; creating a new one",
                    article.id,
                    record.post_id,
                )
        if post is None:
            payload.update(self.status_fields(article, record, None))
            post = self._call(
                "POST", "/posts/", params={"source": "html"}, json={"posts": [payload]}
            ).json()["posts"][0]
        record.post_id = str(post["id"])
        save(record)
        record.url = post.get("url")
        record.post_status = post.get("status")
        record.edit_url = f"{self.site}/ghost/#/editor/post/{post['id']}"
        record.media_ids = {image.id: record.media[image.id].url for image in article.images}
        record.featured_media = payload["feature_image"]
        record.tag_ids = [str(t["id"]) for t in post.get("tags", []) if "id" in t]
        record.seo_meta = [k for k in ("meta_title", "meta_description") if payload.get(k)]
        return record
