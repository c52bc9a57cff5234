"""WordPress through its REST API (`/wp-json/wp/v2/`, or `?rest_route=` on a site with plain
permalinks), with an application password.

One publish: each PNG goes to `/media` once (alt text, caption, title; reused while its bytes
are the same), tags are found or created by name (`term_exists` carries the id of the tag that
is already there), the SEO description and title go into the Yoast / Rank Math post meta that
the site registered for REST, and the post is created once and updated ever after. The body is
the article's HTML without its `<h1>` and featured figure, each `<img>` pointing at the media
library's URL with the `wp-image-ID` class (from which WordPress adds `srcset` and lazy loading).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from services.gateway.publish.common import (
    MediaRecord,
    PublishRecord,
    PublishRejected,
    Save,
    call,
    marker,
    media_marker,
    post_body,
    scheduled_for,
    sha256,
)
from services.gateway.schemas import Article, ImageRef

logger = logging.getLogger(__name__)

# Post meta keys for the SEO description and title, by plugin; written where registered.
SEO_META = {
    "_yoast_wpseo_metadesc": "meta_description",
    "_yoast_wpseo_title": "seo_title",
    "rank_math_description": "meta_description",
    "rank_math_title": "seo_title",
}
WP_TIME = "%Y-%m-%dT%H:%M:%S"  # `date_gmt`: UTC, without an offset
# Every status a post of ours may have been left in by an editor.
ANY_STATUS = "publish,future,draft,pending,private"


class WordPress:
    name = "wordpress"

    def __init__(self, url: str, user: str, app_password: str, timeout: float) -> None:
        self.site = url.rstrip("/")
        self.client = httpx.Client(
            base_url=self.site,
            auth=httpx.BasicAuth(user, app_password),
            timeout=timeout,
            headers={"User-Agent": "articleforge-publisher"},
        )

        # `/wp-json/...` with pretty permalinks, `/?rest_route=/...` without (see _discover).
        self.plain_permalinks = False

    def close(self) -> None:
        self.client.close()

    def _discover(self) -> None:
        """Finds the REST API: `/wp-json/`, or `?rest_route=` on a site with plain permalinks
        (where `/wp-json/` is the home page or a 404)."""
        for plain in (False, True):
            self.plain_permalinks = plain
            response = self._call("GET", "/", ok=(200, 404))
            try:
                index = response.json()
            except ValueError:  # the home page: WordPress did not route /wp-json/ to the API
                continue
            if isinstance(index, dict) and "wp/v2" in index.get("namespaces", []):
                return
        raise PublishRejected(
            f"no WordPress REST API at {self.site}/wp-json/ nor {self.site}/?rest_route=/ "
            "(ARTICLEFORGE_PUBLISH_WORDPRESS_URL must be the site's URL, without /wp-json)"
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self.plain_permalinks:
            url, kwargs["params"] = "/", {"rest_route": path, **kwargs.get("params", {})}
        else:
            url = "/wp-json" + path
        try:
            return call(self.client, self.name, method, url, shown=path, **kwargs)
        except PublishRejected as exc:
            if exc.status_code not in (401, 403):
                raise
            # WordPress answers a wrong application password as if none was sent.
            raise PublishRejected(
                f"{exc} (check ARTICLEFORGE_PUBLISH_WORDPRESS_USER and _APP_PASSWORD, and that "
                "the user may edit posts, upload files and manage tags)",
                exc.status_code,
            ) from None

    # --- media ---

    def _existing_media(self, ids: list[str]) -> set[str]:
        """Which of our media ids are still in the library (an editor may have deleted one)."""
        if not ids:
            return set()
        found = self._call(
            "GET",
            "/wp/v2/media",
            params={"include": ",".join(ids), "per_page": 100, "_fields": "id"},
        ).json()
        return {str(item["id"]) for item in found}

    def _find_marked(
        self, path: str, word: str, field: str, **params: str
    ) -> dict[str, Any] | None:
        """The item under ``path`` whose raw ``field`` carries ``word``: what an attempt whose
        answer never arrived made (WordPress's search looks in the content and descriptions)."""
        found = self._call(
            "GET",
            path,
            params={"search": word, "context": "edit", "_fields": f"id,{field}", **params},
        ).json()
        for item in found:
            if word in (item.get(field) or {}).get("raw", ""):
                return dict(item)
        return None

    def _upload(
        self,
        article: Article,
        image: ImageRef,
        png: bytes,
        k: int,
        record: PublishRecord,
        save: Save,
    ) -> MediaRecord:
        digest = sha256(png)
        title = article.title if k == 0 else image.caption
        fields = {"alt_text": image.alt, "caption": image.caption, "title": title}
        # An earlier attempt that sent these bytes and never heard back may have stored them.
        lost = None
        if record.uploading.get(image.id) == digest:
            word = media_marker(article.id, digest)
            lost = self._find_marked("/wp/v2/media", word, "description")
        else:
            record.uploading[image.id] = digest
            save(record)
        if lost is not None:
            reply = self._call("POST", f"/wp/v2/media/{lost['id']}", json=fields).json()
            logger.info(
                "article %s: image %s was already uploaded as media %s (its answer was lost)",
                article.id,
                image.id,
                reply["id"],
            )
        else:
            filename = f"{article.slug or article.id}-{k + 1}.png"
            reply = self._call(
                "POST",
                "/wp/v2/media",
                files={"file": (filename, png, "image/png")},
                data={**fields, "description": f"<!-- {media_marker(article.id, digest)} -->"},
            ).json()
            logger.info(
                "article %s: image %s uploaded as media %s", article.id, image.id, reply["id"]
            )
        return MediaRecord(
            id=str(reply["id"]),
            url=reply["source_url"],
            sha256=digest,
            alt=image.alt,
            caption=image.caption,
            title=title,
        )

    def _media(
        self, article: Article, pngs: Mapping[str, bytes], record: PublishRecord, save: Save
    ) -> None:
        still_there = self._existing_media([m.id for m in record.media.values()])
        for k, image in enumerate(article.images):
            png = pngs[image.id]
            known = record.media.get(image.id)
            if known is None or known.sha256 != sha256(png) or known.id not in still_there:
                record.media[image.id] = self._upload(article, image, png, k, record, save)
                record.uploading.pop(image.id, None)
                save(record)
                continue
            title = article.title if k == 0 else image.caption
            if (known.alt, known.caption, known.title) != (image.alt, image.caption, title):
                self._call(
                    "POST",
                    f"/wp/v2/media/{known.id}",
                    json={"alt_text": image.alt, "caption": image.caption, "title": title},
                )
                record.media[image.id] = known.model_copy(
                    update={"alt": image.alt, "caption": image.caption, "title": title}
                )
                save(record)

    # --- tags and SEO meta ---

    def _tag_id(self, name: str) -> str:
        response = self._call("POST", "/wp/v2/tags", json={"name": name}, ok=(201, 400))
        body = response.json()
        if response.status_code == 201:
            return str(body["id"])
        if body.get("code") == "term_exists":
            return str(body["data"]["term_id"])
        raise PublishRejected(
            f"wordpress POST /wp/v2/tags answered 400 {body.get('code')}: {body.get('message')}",
            400,
        )

    def _seo_meta(self, article: Article) -> dict[str, str]:
        """The SEO post meta this site accepts: keys registered with `show_in_rest` appear in
        the posts schema (an unregistered key would be dropped without a word)."""
        schema = self._call("OPTIONS", "/wp/v2/posts").json().get("schema", {})
        registered = schema.get("properties", {}).get("meta", {}).get("properties", {})
        return {
            key: getattr(article, field)
            for key, field in SEO_META.items()
            if key in registered and getattr(article, field)
        }

    # --- the post ---

    @staticmethod
    def _when(record: PublishRecord) -> dict[str, str]:
        """Status and time: `future` at `date_gmt` for a schedule still ahead; `publish` now
        (with the time now, since WordPress turns a `publish` whose date is ahead back into
        `future`); `draft` as it is."""
        moment = scheduled_for(record)
        if moment is not None:
            return {"status": "future", "date_gmt": moment.strftime(WP_TIME)}
        if record.status == "publish":
            return {"status": "publish", "date_gmt": datetime.now(UTC).strftime(WP_TIME)}
        return {"status": "draft"}

    def publish(
        self, article: Article, pngs: Mapping[str, bytes], record: PublishRecord, save: Save
    ) -> PublishRecord:
        self._discover()
        self._media(article, pngs, record, save)
        images = {
            image_id: (media.url, {"class": f"wp-image-{media.id}"})
            for image_id, media in record.media.items()
        }
        tags = [self._tag_id(name) for name in article.tags]
        meta = self._seo_meta(article)
        featured = record.media.get(article.featured_image.id) if article.featured_image else None
        payload: dict[str, Any] = {
            "title": article.title,
            "content": marker(article.id) + "\n" + post_body(article, images),
            "excerpt": article.excerpt,
            "slug": article.slug,
            "featured_media": int(featured.id) if featured else 0,
            "tags": [int(t) for t in tags],
            **self._when(record),
        }
        if meta:
            payload["meta"] = meta
        if (
            record.post_id is None
            and (
                lost := self._find_marked(
                    # the slug may have been made unique, the marker stays
                    "/wp/v2/posts",
                    f"articleforge:{article.id}",
                    "content",
                    status=ANY_STATUS,
                )
            )
            is not None
        ):
            record.post_id = str(lost["id"])
            logger.warning("article %s: found post %s from a lost answer", article.id, lost["id"])
        post = None
        if record.post_id is not None:
            response = self._call(
                "POST", f"/wp/v2/posts/{record.post_id}", json=payload, ok=(200, 404, 410)
            )
            if response.status_code == 200:
                post = response.json()
            else:  # deleted for good in WordPress: make it again
                logger.warning(
                    "article %s: post %s is gone from WordPress; creating a new one",
                    article.id,
                    record.post_id,
                )
        if post is None:
            post = self._call("POST", "/wp/v2/posts", json=payload).json()
        record.post_id = str(post["id"])
        save(record)
        for image_id, media in list(record.media.items()):
            if not media.attached:  # the library's "Uploaded to" this post
                self._call("POST", f"/wp/v2/media/{media.id}", json={"post": post["id"]})
                record.media[image_id] = media.model_copy(update={"attached": True})
        record.url = post.get("link")
        record.post_status = post.get("status")
        record.edit_url = f"{self.site}/wp-admin/post.php?post={post['id']}&action=edit"
        record.media_ids = {image.id: record.media[image.id].id for image in article.images}
        record.featured_media = featured.id if featured else None
        record.tag_ids = tags
        record.seo_meta = sorted(meta)
        return record
