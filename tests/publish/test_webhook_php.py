"""The WordPress webhook receiver of docs/api.md, run as it is in the real WordPress (it is one
of the site's must-use plugins, taken from the docs): the gateway's signed `article.published`
delivery is accepted and the article's id lands on the post; a forged signature and a stale
timestamp are refused with a 401."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import redis

from services.gateway.webhooks import sign
from tests.publish.conftest import SECRET, client_for, drain, written_article
from tests.publish.wordpress_site import WordPressSite

OTHER_SECRET = "whsec_bm90LXRoZS1zZWNyZXQtb2YtdGhpcy1zaXRlLTAxMjM0NTY3"


def receiver(site: WordPressSite) -> str:
    return f"{site.url}/wp-json/articleforge/v1/webhook"


def test_the_documented_receiver_keeps_the_article_id_on_the_published_post(
    env: dict[str, str], connection: redis.Redis, site: WordPressSite
) -> None:
    body = {
        "topic": "The future of solar power",
        "sections": 3,
        "images": {"count": 2, "size": "256x256"},
        "publish": {"target": "wordpress", "status": "draft"},
        "webhook": {"url": receiver(site)},
    }
    article_id = written_article(connection, body)
    drain(connection)  # assemble, publish, and both webhooks, delivered to WordPress
    with client_for() as client:
        state = client.get(f"/v1/articles/{article_id}").json()["publish"]["wordpress"]
    assert state["state"] == "published", state
    post = site.api().get(f"/wp/v2/posts/{state['post_id']}", params={"context": "edit"}).json()
    assert post["meta"]["articleforge_id"] == article_id
    webhook_jobs = [k.decode() for k in connection.keys(f"rq:job:{article_id}-webhook*")]
    assert len(webhook_jobs) == 2
    for key in webhook_jobs:
        assert connection.hget(key, "status") == b"finished"  # WordPress answered 2xx


@pytest.mark.parametrize(
    ("secret", "age", "code"),
    [
        (SECRET, timedelta(0), 204),
        (OTHER_SECRET, timedelta(0), 401),  # signed with another secret
        (SECRET, timedelta(minutes=10), 401),  # a replay of an old delivery
    ],
)
def test_forged_and_stale_deliveries_are_refused(
    site: WordPressSite, secret: str, age: timedelta, code: int
) -> None:
    body = json.dumps({"type": "article.succeeded", "data": {"id": "art_" + "0" * 24}})
    headers = sign(secret, "msg_test", datetime.now(UTC) - age, body)
    response = httpx.post(receiver(site), content=body, headers=headers, timeout=30)
    assert response.status_code == code, response.text
    if code == 401:
        assert response.json()["code"] == "bad_signature"
