"""Publishing into a real WordPress (Debian's package, PHP, MariaDB; tests/publish/
wordpress_site.py): an article with 2 images is assembled and published by the real jobs on an
in-process RQ worker, and everything is read back through WordPress's REST API: the post, its
media (alt text, caption, the very bytes), the featured image, the tags, the excerpt, the SEO
meta. Publishing again (also after a lost answer) updates the same post and duplicates
nothing (test_revision.py: a new revision). A refusal fails at once and a dead CMS is retried;
neither touches the article."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from services.gateway import jobs
from services.gateway.publish.job import load_record, save_record
from tests.processes import free_port
from tests.publish.conftest import (
    client_for,
    drain,
    hooks,
    written_article,
)
from tests.publish.wordpress_site import WordPressSite

BODY: dict[str, Any] = {
    "topic": "The future of solar power",
    "sections": 3,
    "keywords": ["photovoltaics", "net metering"],
    "images": {"count": 2, "size": "256x256", "seed": 100},
    "publish": {"target": "wordpress", "status": "publish"},
}


def total(api: httpx.Client, path: str, **params: Any) -> int:
    response = api.get(path, params={"per_page": 1, **params})
    response.raise_for_status()
    return int(response.headers["X-WP-Total"])


def forget_post_id(article_id: str) -> None:
    """The record as an attempt leaves it when WordPress made the post but the answer never
    came back: media known, no post id."""
    store = jobs.store_for(jobs.settings())
    record = load_record(store, article_id, "wordpress")
    assert record is not None and record.post_id is not None
    save_record(store, article_id, record.model_copy(update={"post_id": None}))


def forget_upload(article_id: str) -> str:
    """The record as an attempt leaves it when WordPress stored an image but the answer never
    came back: that image sent, not known. Returns its media id."""
    store = jobs.store_for(jobs.settings())
    record = load_record(store, article_id, "wordpress")
    assert record is not None and record.media
    image_id = sorted(record.media)[-1]
    media = record.media.pop(image_id)
    record.media_ids.pop(image_id, None)
    record.uploading[image_id] = media.sha256
    save_record(store, article_id, record)
    return media.id


def publish_again(
    client: Any, connection: redis.Redis, article_id: str, status: str = "draft"
) -> dict[str, Any]:
    """POST /v1/articles/{id}/publish, the jobs run, and the publish state after them."""
    accepted = client.post(
        f"/v1/articles/{article_id}/publish", json={"target": "wordpress", "status": status}
    )
    assert accepted.status_code == 202, accepted.text
    drain(connection)
    return publish_state(client, article_id)


def publish_state(client: Any, article_id: str) -> dict[str, Any]:
    status = client.get(f"/v1/articles/{article_id}").json()
    assert status["status"] == "succeeded", status  # publishing never changes the article's
    return dict(status["publish"]["wordpress"])


def test_an_article_with_two_images_is_published_and_reads_back_from_wordpress(
    env: dict[str, str], connection: redis.Redis, site: WordPressSite, hook_url: str
) -> None:
    api = site.api()
    # A tag the site already has: WordPress answers `term_exists` with its id.
    made = api.post("/wp/v2/tags", json={"name": "photovoltaics"})  # or made by an earlier test
    existing = made.json()["id"] if made.status_code == 201 else made.json()["data"]["term_id"]
    names_before = {t["name"] for t in api.get("/wp/v2/tags", params={"per_page": 100}).json()}
    article_id = written_article(connection, {**BODY, "webhook": {"url": hook_url}})
    drain(connection)

    with client_for() as client:
        state = publish_state(client, article_id)
        article = client.get(f"/v1/articles/{article_id}").json()["article"]
    assert state["state"] == "published" and state["attempts"] == 1, state
    assert state["error"] is None and state["revision"] == 1
    featured_image, section_image = article["images"]
    media_ids = state["media_ids"]
    assert set(media_ids) == {featured_image["id"], section_image["id"]}
    assert state["featured_media"] == media_ids[featured_image["id"]]

    post = api.get(f"/wp/v2/posts/{state['post_id']}", params={"context": "edit"}).json()
    assert post["link"] == state["url"] and post["status"] == "publish"
    assert post["title"]["raw"] == article["title"] == "The Future of Solar Power"
    assert post["slug"].startswith(article["slug"])  # WordPress may append -2 to a taken one
    assert post["excerpt"]["raw"] == article["excerpt"]
    assert post["featured_media"] == int(media_ids[featured_image["id"]])
    assert post["meta"]["_yoast_wpseo_metadesc"] == article["meta_description"]
    assert post["meta"]["rank_math_description"] == article["meta_description"]
    assert post["meta"]["_yoast_wpseo_title"] == article["seo_title"]
    assert sorted(state["seo_meta"]) == sorted(
        ["_yoast_wpseo_metadesc", "_yoast_wpseo_title", "rank_math_description", "rank_math_title"]
    )

    # The body: no title, no featured figure (WordPress shows the featured image itself),
    # every section, the section image from the media library, nothing from the gateway.
    body = post["content"]["raw"]
    edit = {"context": "edit"}
    section = api.get(f"/wp/v2/media/{media_ids[section_image['id']]}", params=edit).json()
    featured = api.get(f"/wp/v2/media/{media_ids[featured_image['id']]}", params=edit).json()
    assert "<h1" not in body and "http://testserver" not in body
    assert featured["source_url"] not in body
    assert body.count("<img") == 1 and f'src="{section["source_url"]}"' in body
    assert f'class="wp-image-{section["id"]}"' in body
    for heading in ("Why solar now", "What it costs", "Storing the sun"):
        assert f"<h2>{heading}</h2>" in body
    rendered = post["content"]["rendered"]
    assert "srcset=" in rendered  # WordPress found its attachment by the wp-image-ID class

    # The media: alt text, caption and title as the article has them, attached to the post,
    # and the very PNG the gateway serves.
    for media, image in ((featured, featured_image), (section, section_image)):
        assert media["alt_text"] == image["alt"]
        assert media["caption"]["raw"] == image["caption"]
        assert media["mime_type"] == "image/png" and media["post"] == post["id"]
        png = (Path(env["ARTICLEFORGE_DATA_DIR"]) / "images" / f"{image['id']}.png").read_bytes()
        assert httpx.get(media["source_url"]).content == png
    assert featured["title"]["raw"] == article["title"]
    assert section["title"]["raw"] == section_image["caption"]

    # Tags by name: the existing one reused, the new one created once.
    tags = api.get("/wp/v2/tags", params={"include": ",".join(state["tag_ids"])}).json()
    assert sorted(t["name"] for t in tags) == sorted(article["tags"])
    assert str(existing) in state["tag_ids"]
    assert "photovoltaics" in names_before
    assert total(api, "/wp/v2/tags") == len(names_before | set(article["tags"]))
    assert sorted(post["tags"]) == sorted(int(t) for t in state["tag_ids"])

    events = hooks(article_id)
    assert [h["type"] for h in events] == ["article.succeeded", "article.published"]
    assert events[1]["data"]["publish"]["wordpress"]["post_id"] == state["post_id"]


def test_republishing_updates_the_same_post_and_duplicates_nothing(
    env: dict[str, str], connection: redis.Redis, site: WordPressSite, hook_url: str
) -> None:
    api = site.api()
    article_id = written_article(connection, {**BODY, "webhook": {"url": hook_url}})
    drain(connection)
    with client_for() as client:
        first = publish_state(client, article_id)
        counts = {
            "posts": total(api, "/wp/v2/posts", status="publish,draft"),
            "media": total(api, "/wp/v2/media"),
            "tags": total(api, "/wp/v2/tags"),
        }

        # Again, as a draft this time: the same post, the same media, the same tags.
        accepted = client.post(
            f"/v1/articles/{article_id}/publish", json={"target": "wordpress", "status": "draft"}
        )
        assert accepted.status_code == 202, accepted.text
        assert (
            accepted.json()["state"] == "queued" and accepted.json()["post_id"] == first["post_id"]
        )
        drain(connection)
        again = publish_state(client, article_id)
        assert again["state"] == "published" and again["post_id"] == first["post_id"]
        assert again["media_ids"] == first["media_ids"] and again["tag_ids"] == first["tag_ids"]
        post = api.get(f"/wp/v2/posts/{first['post_id']}", params={"context": "edit"}).json()
        assert post["status"] == "draft"

        # The answer to the post's creation lost (the worker died after WordPress made it):
        # the next publish finds the post by its marker instead of making a second one.
        forget_post_id(article_id)
        assert publish_again(client, connection, article_id)["post_id"] == first["post_id"]

        # The answer to an image's upload lost: found by the marker in its description, and
        # reused instead of uploaded a second time.
        media_id = forget_upload(article_id)
        found = publish_again(client, connection, article_id)
        assert found["media_ids"] == first["media_ids"] and media_id in found["media_ids"].values()

        post = api.get(f"/wp/v2/posts/{first['post_id']}", params={"context": "edit"}).json()
        assert post["status"] == "draft"
        assert {
            "posts": total(api, "/wp/v2/posts", status="publish,draft"),
            "media": total(api, "/wp/v2/media"),
            "tags": total(api, "/wp/v2/tags"),
        } == counts

    published = [h for h in hooks(article_id) if h["type"] == "article.published"]
    assert len(published) == 4  # one per publish, each with its own webhook-id
    assert len({h["webhook-id"] for h in published}) == 4


def test_a_refusal_fails_at_once_a_dead_cms_is_retried_and_the_article_stays_intact(
    env: dict[str, str],
    connection: redis.Redis,
    site: WordPressSite,
    hook_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = site.api()
    posts_before = total(api, "/wp/v2/posts", status="publish,draft")
    monkeypatch.setenv("ARTICLEFORGE_PUBLISH_WORDPRESS_APP_PASSWORD", "abcd efgh ijkl mnop")
    jobs.settings.cache_clear()
    article_id = written_article(connection, {**BODY, "webhook": {"url": hook_url}})
    drain(connection)
    with client_for() as client:
        refused = publish_state(client, article_id)
        article = client.get(f"/v1/articles/{article_id}").json()["article"]
    # A 401 is not retried: one attempt, WordPress's own error code in the message.
    assert refused["state"] == "failed" and refused["attempts"] == 1, refused
    assert refused["error"]["type"] == "cms_rejected"
    assert refused["error"]["status_code"] == 401
    assert "rest_cannot_create" in refused["error"]["message"]  # WordPress's own code
    assert "ARTICLEFORGE_PUBLISH_WORDPRESS_USER and _APP_PASSWORD" in refused["error"]["message"]
    assert refused["post_id"] is None and article["title"] == "The Future of Solar Power"
    assert total(api, "/wp/v2/posts", status="publish,draft") == posts_before
    assert [h["type"] for h in hooks(article_id)] == ["article.succeeded", "article.publish_failed"]
    failed_hook = hooks(article_id)[1]["data"]["publish"]["wordpress"]
    assert failed_hook["error"]["type"] == "cms_rejected"

    # Nobody answers: retried after each of ARTICLEFORGE_PUBLISH_RETRY_INTERVALS (0,0), then
    # failed; the article is still there.
    monkeypatch.setenv("ARTICLEFORGE_PUBLISH_WORDPRESS_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ARTICLEFORGE_PUBLISH_WORDPRESS_APP_PASSWORD", site.app_password)
    jobs.settings.cache_clear()
    with client_for() as client:
        accepted = client.post(f"/v1/articles/{article_id}/publish", json={"target": "wordpress"})
        assert accepted.status_code == 202, accepted.text
        drain(connection)
        dead = publish_state(client, article_id)
        assert dead["state"] == "failed" and dead["attempts"] == 3, dead
        assert dead["error"]["type"] == "cms_unavailable"
        assert "no answer" in dead["error"]["message"]

    # The right settings again: the same request now publishes.
    monkeypatch.setenv("ARTICLEFORGE_PUBLISH_WORDPRESS_URL", site.url)
    jobs.settings.cache_clear()
    with client_for() as client:
        assert (
            client.post(
                f"/v1/articles/{article_id}/publish", json={"target": "wordpress"}
            ).status_code
            == 202
        )
        drain(connection)
        done = publish_state(client, article_id)
    assert done["state"] == "published" and done["error"] is None and done["status"] == "draft"
    assert total(api, "/wp/v2/posts", status="publish,draft") == posts_before + 1
    types = [h["type"] for h in hooks(article_id)]
    assert types == [
        "article.succeeded",
        "article.publish_failed",
        "article.publish_failed",
        "article.published",
    ]


def test_an_article_whose_redis_record_expired_is_still_published_into_the_same_post(
    env: dict[str, str], connection: redis.Redis, site: WordPressSite
) -> None:
    api = site.api()
    article_id = written_article(connection, BODY)
    drain(connection)
    with client_for() as client:
        first = publish_state(client, article_id)
        posts = total(api, "/wp/v2/posts", status="publish,draft")
        # The record outlived ARTICLEFORGE_RESULT_TTL_SECONDS: only the disk copies remain.
        connection.delete(f"af:article:{article_id}")
        accepted = client.post(
            f"/v1/articles/{article_id}/publish", json={"target": "wordpress", "status": "draft"}
        )
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["post_id"] == first["post_id"]
        drain(connection)
        again = publish_state(client, article_id)  # served from the disk copy
    assert not connection.exists(f"af:article:{article_id}")  # not brought back half-made
    assert again["state"] == "published" and again["status"] == "draft"
    assert again["post_id"] == first["post_id"] and again["media_ids"] == first["media_ids"]
    assert total(api, "/wp/v2/posts", status="publish,draft") == posts
    post = api.get(f"/wp/v2/posts/{first['post_id']}", params={"context": "edit"}).json()
    assert post["status"] == "draft"


def test_a_site_with_plain_permalinks_is_reached_through_rest_route(
    env: dict[str, str], connection: redis.Redis, site: WordPressSite
) -> None:
    article_id = written_article(connection, {k: v for k, v in BODY.items() if k != "publish"})
    drain(connection)
    site.set_option("permalink_structure", "")  # "Plain" in Settings -> Permalinks
    try:
        home = httpx.get(f"{site.url}/wp-json/wp/v2/posts")
        assert "json" not in home.headers.get("content-type", "")  # no API there now
        with client_for() as client:
            accepted = client.post(
                f"/v1/articles/{article_id}/publish", json={"target": "wordpress"}
            )
            assert accepted.status_code == 202, accepted.text
            drain(connection)
            state = publish_state(client, article_id)
    finally:
        site.set_option("permalink_structure", "/%postname%/")
    assert state["state"] == "published", state
    assert state["url"] == f"{site.url}/?p={state['post_id']}"
    post = site.api().get(f"/wp/v2/posts/{state['post_id']}", params={"context": "edit"}).json()
    assert post["featured_media"] == int(state["featured_media"]) and len(state["media_ids"]) == 2


def test_a_publish_popped_by_a_dead_worker_is_queued_again_and_publishes(
    env: dict[str, str], connection: redis.Redis, site: WordPressSite
) -> None:
    """An accepted publish is never lost: a worker that popped its job (BLPOP) and died before
    registering it leaves the job `queued` on no queue; the supervisor puts it back."""
    from services.gateway.publish.job import PUBLISHING, job_id
    from services.gateway.worker import requeue_lost_jobs

    body = {k: v for k, v in BODY.items() if k != "publish"}
    article_id = written_article(connection, body)
    drain(connection)  # assembled; nothing to publish yet
    with client_for() as client:
        accepted = client.post(f"/v1/articles/{article_id}/publish", json={"target": "wordpress"})
        assert accepted.status_code == 202, accepted.text
        lost = job_id(article_id, "wordpress")
        assert connection.lrem("rq:queue:articles", 0, lost) == 1  # popped, then the worker died
        assert requeue_lost_jobs(connection, lost_after=0) == []  # first seen: maybe registering
        assert requeue_lost_jobs(connection, lost_after=0) == [lost]
        drain(connection)
        state = publish_state(client, article_id)
    assert state["state"] == "published" and state["post_id"] is not None, state
    post = site.api().get(f"/wp/v2/posts/{state['post_id']}", params={"context": "edit"})
    assert post.status_code == 200 and post.json()["status"] == "draft"
    # Done: the supervisor no longer watches it.
    assert not connection.sismember(PUBLISHING, f"{article_id}:wordpress")
    assert requeue_lost_jobs(connection, lost_after=0) == []
