"""Publishing into a real Ghost 6 (npm, SQLite; tests/publish/ghost_site.py): an article with 2
images is assembled and published by the real jobs on an in-process RQ worker, and read back
as an editor and a reader would see it: through the Admin API (status, body, tags, feature
image, excerpt, meta fields), the Content API (what the public site serves) and the uploaded
image files. Publishing again restores the article over an editor's change, in the same post.
A schedule, a new time, an unschedule and a publish each reach Ghost as Ghost's own statuses
(`scheduled` at that `published_at`, `draft`, `published` now), in the same post."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from services.gateway.publish.ghost import admin_token
from tests.publish.conftest import base_env, client_for, drain, hooks, set_env, written_article
from tests.publish.ghost_site import GhostSite
from tests.redis_server import OwnRedis

# One worker runs this module (`--dist loadgroup`), so one Ghost serves it.
pytestmark = pytest.mark.xdist_group("ghost")

BODY: dict[str, Any] = {
    "topic": "The future of solar power",
    "sections": 3,
    "keywords": ["photovoltaics", "net metering"],
    "images": {"count": 2, "size": "256x256", "seed": 100},
    "publish": {"target": "ghost", "status": "publish"},
}
HEADINGS = ("Why solar now", "What it costs", "Storing the sun")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def env(
    ghost: GhostSite,
    own_redis: OwnRedis,
    connection: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    values = {
        **base_env(own_redis, tmp_path / "data"),
        "ARTICLEFORGE_PUBLISH_GHOST_URL": ghost.url,
        "ARTICLEFORGE_PUBLISH_GHOST_ADMIN_KEY": ghost.admin_key,
    }
    set_env(monkeypatch, values)
    return values


class _Token(httpx.Auth):
    def __init__(self, key: str) -> None:
        self.key = key

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers["Authorization"] = f"Ghost {admin_token(self.key)}"
        yield request


def admin_api(ghost: GhostSite) -> httpx.Client:
    return httpx.Client(
        base_url=f"{ghost.url}/ghost/api/admin", auth=_Token(ghost.admin_key), timeout=30
    )


def read_post(ghost: GhostSite, post_id: str) -> dict[str, Any]:
    """The post as an editor's Ghost has it, with its body as HTML and its tags."""
    with admin_api(ghost) as api:
        reply = api.get(f"/posts/{post_id}/", params={"formats": "html", "include": "tags"})
    reply.raise_for_status()
    return dict(reply.json()["posts"][0])


def public_posts(ghost: GhostSite, post_id: str) -> list[dict[str, Any]]:
    """What the Content API (the public site's) serves of this post: [] or [post]."""
    reply = httpx.get(
        f"{ghost.url}/ghost/api/content/posts/",
        params={"key": ghost.content_key, "filter": f"id:{post_id}", "formats": "html"},
        timeout=30,
    )
    reply.raise_for_status()
    return list(reply.json()["posts"])


def publish(
    client: Any, connection: redis.Redis, article_id: str, **options: Any
) -> dict[str, Any]:
    """POST /v1/articles/{id}/publish to Ghost, the jobs run, and the publish state after."""
    accepted = client.post(
        f"/v1/articles/{article_id}/publish", json={"target": "ghost", **options}
    )
    assert accepted.status_code == 202, accepted.text
    drain(connection)
    return publish_state(client, article_id)


def publish_state(client: Any, article_id: str) -> dict[str, Any]:
    status = client.get(f"/v1/articles/{article_id}").json()
    assert status["status"] == "succeeded", status  # publishing never changes the article's
    state = dict(status["publish"]["ghost"])
    assert state["state"] == "published" and state["error"] is None, state
    return state


def ghost_time(moment: datetime) -> str:
    """A time as Ghost writes `published_at`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_an_article_with_two_images_is_published_into_ghost_and_reads_back(
    env: dict[str, str], connection: redis.Redis, ghost: GhostSite, hook_url: str
) -> None:
    assert ghost.version.startswith("6.")
    before = datetime.now(UTC).replace(microsecond=0)
    article_id = written_article(connection, {**BODY, "webhook": {"url": hook_url}})
    drain(connection)
    with client_for() as client:
        state = publish_state(client, article_id)
        article = client.get(f"/v1/articles/{article_id}").json()["article"]
    featured_image, section_image = article["images"]
    featured_url = state["media_ids"][featured_image["id"]]
    section_url = state["media_ids"][section_image["id"]]
    assert state["attempts"] == 1 and state["revision"] == 1
    assert state["post_status"] == "published" and state["at"] is None
    assert state["featured_media"] == featured_url
    assert state["edit_url"] == f"{ghost.url}/ghost/#/editor/post/{state['post_id']}"

    post = read_post(ghost, state["post_id"])
    assert post["status"] == "published" and post["url"] == state["url"]
    assert post["title"] == article["title"] == "The Future of Solar Power"
    assert post["slug"].startswith(article["slug"])  # Ghost appends -2 to a slug taken
    assert state["url"] == f"{ghost.url}/{post['slug']}/"
    published_at = datetime.fromisoformat(post["published_at"])
    assert before <= published_at <= datetime.now(UTC)
    assert post["custom_excerpt"] == article["excerpt"]
    assert post["meta_title"] == article["seo_title"]
    assert post["meta_description"] == article["meta_description"]
    assert sorted(state["seo_meta"]) == ["meta_description", "meta_title"]
    assert post["feature_image"] == featured_url
    assert post["feature_image_alt"] == featured_image["alt"]
    assert post["feature_image_caption"] == featured_image["caption"]
    assert [t["name"] for t in post["tags"]] == article["tags"]
    assert [t["id"] for t in post["tags"]] == state["tag_ids"]

    # The body, as Ghost renders it from its editor format: every section heading, the section
    # image from Ghost's own storage with its alt text and caption; no title, no featured image
    # (Ghost shows that itself), nothing from the gateway.
    body = post["html"]
    for heading in HEADINGS:
        slug = heading.lower().replace(" ", "-")
        assert f'<h2 id="{slug}">{heading}</h2>' in body
    assert "<h1" not in body and "http://testserver" not in body and featured_url not in body
    assert body.count("<img") == 1
    assert f'<img src="{section_url}" class="kg-image" alt="{section_image["alt"]}"' in body
    assert f"<figcaption>{section_image['caption']}</figcaption>" in body

    # The images: uploaded into Ghost's content/images, served as the very PNGs.
    for url, image in ((featured_url, featured_image), (section_url, section_image)):
        assert url.startswith(f"{ghost.url}/content/images/")
        served = httpx.get(url, timeout=30)
        assert served.status_code == 200 and served.headers["content-type"] == "image/png"
        png = (Path(env["ARTICLEFORGE_DATA_DIR"]) / "images" / f"{image['id']}.png").read_bytes()
        assert served.content[:8] == PNG_SIGNATURE and served.content == png

    # The public site serves it.
    [public] = public_posts(ghost, state["post_id"])
    assert public["title"] == article["title"] and public["url"] == state["url"]
    assert public["html"] == body and public["feature_image"] == featured_url
    assert public["excerpt"] == article["excerpt"]

    events = hooks(article_id)
    assert [h["type"] for h in events] == ["article.succeeded", "article.published"]
    assert events[1]["data"]["publish"]["ghost"]["post_id"] == state["post_id"]


def test_publishing_again_puts_the_article_back_over_an_editors_change(
    env: dict[str, str], connection: redis.Redis, ghost: GhostSite
) -> None:
    article_id = written_article(connection, BODY)
    drain(connection)
    with client_for() as client:
        first = publish_state(client, article_id)
        article = client.get(f"/v1/articles/{article_id}").json()["article"]
        post = read_post(ghost, first["post_id"])

        # An editor rewrites the post in Ghost.
        with admin_api(ghost) as api:
            edited = api.put(
                f"/posts/{first['post_id']}/",
                params={"source": "html"},
                json={
                    "posts": [
                        {
                            "title": "Edited in Ghost",
                            "html": "<p>An editor's words.</p>",
                            "tags": [{"name": "edited"}],
                            "updated_at": post["updated_at"],
                        }
                    ]
                },
            )
        assert edited.status_code == 200, edited.text
        assert read_post(ghost, first["post_id"])["title"] == "Edited in Ghost"

        again = publish(client, connection, article_id, status="publish")
    assert again["post_id"] == first["post_id"] and again["attempts"] == 1
    assert again["media_ids"] == first["media_ids"]  # nothing uploaded again
    assert again["tag_ids"] == first["tag_ids"] and again["post_status"] == "published"
    restored = read_post(ghost, first["post_id"])
    assert restored["title"] == article["title"]
    assert restored["html"] == post["html"] and "An editor's words." not in restored["html"]
    assert [t["name"] for t in restored["tags"]] == article["tags"]
    # Still the same public post, still dated when it first went public.
    assert restored["published_at"] == post["published_at"]
    [public] = public_posts(ghost, first["post_id"])
    assert public["title"] == article["title"]


def test_a_schedule_is_ghosts_scheduled_and_moves_unschedules_and_publishes_the_same_post(
    env: dict[str, str], connection: redis.Redis, ghost: GhostSite
) -> None:
    at = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0, second=0)
    body = {**BODY, "publish": {"target": "ghost", "at": rfc3339(at)}}
    article_id = written_article(connection, body)
    drain(connection)
    with client_for() as client:
        scheduled = publish_state(client, article_id)
        post_id = scheduled["post_id"]
        assert scheduled["status"] == "publish" and scheduled["at"] == rfc3339(at)
        assert scheduled["post_status"] == "scheduled"
        post = read_post(ghost, post_id)
        assert post["status"] == "scheduled" and post["published_at"] == ghost_time(at)
        assert public_posts(ghost, post_id) == []  # not public before its time

        # Another time: the same post, rescheduled.
        later = at + timedelta(days=1, hours=3)
        moved = publish(client, connection, article_id, at=rfc3339(later))
        assert moved["post_id"] == post_id and moved["at"] == rfc3339(later)
        post = read_post(ghost, post_id)
        assert post["status"] == "scheduled" and post["published_at"] == ghost_time(later)
        assert moved["post_status"] == "scheduled"

        # A draft with no time: unscheduled, and its old time gone with it.
        unscheduled = publish(client, connection, article_id, status="draft")
        assert unscheduled["post_id"] == post_id and unscheduled["at"] is None
        post = read_post(ghost, post_id)
        assert post["status"] == "draft" and post["published_at"] is None
        assert unscheduled["post_status"] == "draft"
        assert public_posts(ghost, post_id) == []

        # Published: public now, dated now (not at the schedule it once had).
        before = datetime.now(UTC).replace(microsecond=0)
        public = publish(client, connection, article_id, status="publish")
        assert public["post_id"] == post_id and public["post_status"] == "published"
        post = read_post(ghost, post_id)
        assert post["status"] == "published"
        assert before <= datetime.fromisoformat(post["published_at"]) <= datetime.now(UTC)
        [served] = public_posts(ghost, post_id)
        # The Content API writes times in the site's zone (`+00:00`), the Admin API in UTC (`Z`).
        assert datetime.fromisoformat(served["published_at"]) == datetime.fromisoformat(
            post["published_at"]
        )
        assert served["url"] == public["url"]
        assert public["url"] == f"{ghost.url}/{post['slug']}/"


def test_a_scheduled_post_published_at_once_goes_public_now(
    env: dict[str, str], connection: redis.Redis, ghost: GhostSite
) -> None:
    at = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    article_id = written_article(
        connection, {**BODY, "publish": {"target": "ghost", "at": rfc3339(at)}}
    )
    drain(connection)
    with client_for() as client:
        scheduled = publish_state(client, article_id)
        assert read_post(ghost, scheduled["post_id"])["status"] == "scheduled"
        before = datetime.now(UTC).replace(microsecond=0)
        now = publish(client, connection, article_id, status="publish")
    # Ghost would keep the scheduled date on a `published` post (public, dated in 3 days).
    post = read_post(ghost, scheduled["post_id"])
    assert now["post_id"] == scheduled["post_id"] and post["status"] == "published"
    assert before <= datetime.fromisoformat(post["published_at"]) <= datetime.now(UTC)
    assert [p["id"] for p in public_posts(ghost, scheduled["post_id"])] == [post["id"]]


def test_a_public_post_given_a_schedule_leaves_the_site_until_then(
    env: dict[str, str], connection: redis.Redis, ghost: GhostSite
) -> None:
    article_id = written_article(connection, BODY)
    drain(connection)
    at = (datetime.now(UTC) + timedelta(days=4)).replace(microsecond=0)
    with client_for() as client:
        first = publish_state(client, article_id)
        assert len(public_posts(ghost, first["post_id"])) == 1
        # Ghost refuses `published` -> `scheduled`; the publisher unpublishes first.
        scheduled = publish(client, connection, article_id, at=rfc3339(at))
    post = read_post(ghost, first["post_id"])
    assert scheduled["post_id"] == first["post_id"] and scheduled["post_status"] == "scheduled"
    assert post["status"] == "scheduled" and post["published_at"] == ghost_time(at)
    assert public_posts(ghost, first["post_id"]) == []


def test_a_time_nearer_than_ghost_schedules_is_published_at_once(
    env: dict[str, str], connection: redis.Redis, ghost: GhostSite
) -> None:
    # Ghost refuses a schedule less than 2 minutes ahead; the article goes public now instead.
    at = (datetime.now(UTC) + timedelta(seconds=100)).replace(microsecond=0)
    before = datetime.now(UTC).replace(microsecond=0)
    article_id = written_article(
        connection, {**BODY, "publish": {"target": "ghost", "at": rfc3339(at)}}
    )
    drain(connection)
    with client_for() as client:
        state = publish_state(client, article_id)
    post = read_post(ghost, state["post_id"])
    assert state["at"] == rfc3339(at) and state["post_status"] == "published"
    assert post["status"] == "published"
    assert before <= datetime.fromisoformat(post["published_at"]) <= datetime.now(UTC)
    assert len(public_posts(ghost, state["post_id"])) == 1
