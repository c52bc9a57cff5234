"""Scheduled publishing and batch links in a real WordPress (tests/publish/wordpress_site.py),
by the real jobs on an in-process worker: `publish.at` makes a `future` post at `date_gmt`;
publishing again with another time reschedules the same post, `draft` unschedules it, and
`publish` makes it public now. Two articles of a `link_related` batch that mention each other's
topics end up linking each other's posts, whichever is published first. The publishes show in
the gateway's /metrics."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from services.gateway.batches import record
from services.gateway.batches.schemas import BatchOptions
from tests.publish.conftest import client_for, drain, written_article
from tests.publish.wordpress_site import WordPressSite

BODY: dict[str, Any] = {
    "topic": "The future of solar power",
    "sections": 3,
    "images": {"count": 1, "size": "256x256", "seed": 100},
}


def ahead(days: int) -> str:
    moment = datetime.now(UTC).replace(microsecond=0, second=0) + timedelta(days=days)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def wp_post(site: WordPressSite, post_id: str) -> dict[str, Any]:
    with site.api() as api:
        reply = api.get(f"/wp/v2/posts/{post_id}", params={"context": "edit"})
    reply.raise_for_status()
    return dict(reply.json())


def publish(client: Any, connection: redis.Redis, article_id: str, **options: Any) -> Any:
    reply = client.post(
        f"/v1/articles/{article_id}/publish", json={"target": "wordpress", **options}
    )
    assert reply.status_code == 202, reply.text
    drain(connection)
    return client.get(f"/v1/articles/{article_id}").json()["publish"]["wordpress"]


def test_a_scheduled_post_is_rescheduled_unscheduled_and_published_in_place(
    env: dict[str, str], connection: redis.Redis, site: WordPressSite
) -> None:
    first = ahead(3)
    article_id = written_article(
        connection, {**BODY, "publish": {"target": "wordpress", "at": first}}
    )
    drain(connection)
    with client_for() as client:
        state = client.get(f"/v1/articles/{article_id}").json()["publish"]["wordpress"]
        assert state["state"] == "published" and state["status"] == "publish"
        assert state["at"] == first and state["post_status"] == "future"
        post = wp_post(site, state["post_id"])
        assert post["status"] == "future" and post["date_gmt"] + "Z" == first

        later = ahead(10)
        moved = publish(client, connection, article_id, at=later)
        assert moved["post_id"] == state["post_id"]
        assert (moved["at"], moved["post_status"]) == (later, "future")
        assert wp_post(site, state["post_id"])["date_gmt"] + "Z" == later

        unscheduled = publish(client, connection, article_id, status="draft")
        assert unscheduled["post_id"] == state["post_id"]
        assert (unscheduled["at"], unscheduled["post_status"]) == (None, "draft")
        assert wp_post(site, state["post_id"])["status"] == "draft"

        before = datetime.now(UTC) - timedelta(seconds=5)
        public = publish(client, connection, article_id, status="publish")
        assert public["post_status"] == "publish"
        post = wp_post(site, state["post_id"])
        assert post["status"] == "publish"
        published = datetime.fromisoformat(post["date_gmt"]).replace(tzinfo=UTC)
        assert before <= published <= datetime.now(UTC) + timedelta(seconds=5)

        refused = client.post(
            f"/v1/articles/{article_id}/publish",
            json={"target": "wordpress", "at": "2020-01-01T00:00:00Z"},
        )
        assert refused.status_code == 422
        assert refused.json()["error"]["param"] == "at"
        assert "must be in the future" in refused.json()["error"]["message"]

        metrics = client.get("/metrics").text
    assert 'articleforge_gateway_publish_total{outcome="published",target="wordpress"}' in metrics
    assert 'articleforge_gateway_publish_attempts_total{result="ok",target="wordpress"}' in metrics
    assert 'articleforge_gateway_publish_duration_seconds_count{target="wordpress"}' in metrics


def join_batch(connection: redis.Redis, article_ids: list[str], topics: list[str]) -> str:
    """Makes the articles the items of one `link_related` batch, as POST /v1/batches records
    them (the articles themselves were written without the model services)."""
    batch_id = "bat_" + "ab" * 12
    connection.hset(
        record.key(batch_id),
        mapping={
            "owner": json.dumps(None),
            "options": BatchOptions(link_related=True).model_dump_json(),
            "topics": json.dumps(topics),
            "status": "running",
            "created": "0",
            "retries": "0",
        },
    )
    connection.rpush(record.items_key(batch_id), *article_ids)
    for index, article_id in enumerate(article_ids):
        batch = {"id": batch_id, "index": index, "target": "wordpress"}
        connection.hset(f"af:article:{article_id}", "batch", json.dumps(batch))
    return batch_id


def test_batch_articles_that_mention_each_other_link_each_others_posts(
    env: dict[str, str], connection: redis.Redis, site: WordPressSite
) -> None:
    # Both bodies (tests/publish/conftest.py BODIES) mention "net metering" and "solar panels":
    # each article's topic is a phrase the other one uses.
    metering = written_article(connection, {**BODY, "topic": "Net metering"})
    panels = written_article(connection, {**BODY, "topic": "Solar panels"})
    join_batch(connection, [metering, panels], ["Net metering", "Solar panels"])
    drain(connection)  # both assembled
    with client_for() as client:
        first = publish(client, connection, metering, status="publish")
        # The other article has no post yet: its topic stays plain text here for now.
        second = client.get(f"/v1/articles/{panels}").json()["publish"]
        assert second == {}  # the second article was never asked to publish yet
        body = wp_post(site, first["post_id"])["content"]["raw"]
        assert "<a href" not in body

        # Publishing it links it to the first post, and publishes the first again with the
        # link to it (the same post, updated).
        other = publish(client, connection, panels, status="publish")
        again = client.get(f"/v1/articles/{metering}").json()["publish"]["wordpress"]
    metering_post = wp_post(site, again["post_id"])
    panels_post = wp_post(site, other["post_id"])
    assert again["post_id"] == first["post_id"]  # the same post, updated
    assert f'<a href="{other["url"]}">Solar panels</a>' in metering_post["content"]["raw"]
    assert f'<a href="{again["url"]}">Net metering</a>' in panels_post["content"]["raw"]
    # One link per topic and section: the first mention only.
    assert metering_post["content"]["raw"].count(f'href="{other["url"]}"') == 1
