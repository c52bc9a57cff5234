"""A new revision is published into the same post by itself: the editorial loop's real
regeneration (POST /v1/articles/{id}/sections/1/regenerate), written by the real text service on
the `tiny` model, commits revision 2, and the publish job that follows updates the WordPress post
the article was published to, with the same media and no new post."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.processes import free_port, serve_all
from tests.publish.conftest import client_for, drain, hooks, written_article
from tests.publish.wordpress_site import WordPressSite


@pytest.fixture(scope="module")
def text_url(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ports = {"text": free_port()}
    env = {"ARTICLEFORGE_CACHE_DIR": str(cache_dir)}
    with ExitStack() as stack:
        serve_all(stack, ("text",), ports, env, tmp_path_factory.mktemp("logs"))
        yield f"http://127.0.0.1:{ports['text']}"


@pytest.fixture()
def env_extra(text_url: str) -> dict[str, str]:
    return {"ARTICLEFORGE_TEXT_URL": text_url}


def count(api: httpx.Client, path: str, **params: Any) -> int:
    return int(api.get(path, params={"per_page": 1, **params}).headers["X-WP-Total"])


def test_a_regenerated_section_is_published_into_the_same_post(
    env: dict[str, str], connection: redis.Redis, site: WordPressSite, hook_url: str
) -> None:
    body = {
        "topic": "The future of solar power",
        "sections": 3,
        "keywords": ["photovoltaics"],
        "images": {"count": 2, "size": "256x256"},
        "publish": {"target": "wordpress", "status": "draft"},
        "webhook": {"url": hook_url},
    }
    article_id = written_article(connection, body)
    drain(connection)
    api = site.api()
    with client_for() as client:
        first = client.get(f"/v1/articles/{article_id}").json()
        published = first["publish"]["wordpress"]
        assert published["state"] == "published" and published["revision"] == 1, published
        before = {
            "posts": count(api, "/wp/v2/posts", status="publish,draft"),
            "media": count(api, "/wp/v2/media"),
        }
        accepted = client.post(
            f"/v1/articles/{article_id}/sections/1/regenerate",
            json={"instructions": "shorter", "seed": 11, "temperature": 1.0},
        )
        assert accepted.status_code == 202, accepted.text
        drain(connection)  # the regeneration, then the publish it queues, then the webhooks
        status = client.get(f"/v1/articles/{article_id}").json()
    assert status["revision"] == 2 and status["edit"]["status"] == "succeeded", status["edit"]
    revised = status["publish"]["wordpress"]
    assert revised["state"] == "published" and revised["revision"] == 2, revised
    assert revised["post_id"] == published["post_id"]
    assert revised["media_ids"] == published["media_ids"] and revised["status"] == "draft"

    post = api.get(f"/wp/v2/posts/{published['post_id']}", params={"context": "edit"}).json()
    old_section = first["article"]["sections"][1]["html"]
    new_section = status["article"]["sections"][1]["html"]
    assert old_section != new_section
    assert new_section in post["content"]["raw"] and old_section not in post["content"]["raw"]
    assert status["article"]["sections"][0]["html"] in post["content"]["raw"]
    assert post["status"] == "draft"
    assert {
        "posts": count(api, "/wp/v2/posts", status="publish,draft"),
        "media": count(api, "/wp/v2/media"),
    } == before
    assert [h["type"] for h in hooks(article_id)] == [
        "article.succeeded",
        "article.published",
        "article.updated",
        "article.published",
    ]
