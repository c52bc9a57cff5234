"""Batches through the real processes: the text, image and gateway servers and a worker pool on
the tiny models, publishing into a real WordPress.

A 20-row CSV goes in as one batch on a calendar (two slots a day, Berlin time) and comes out as
20 scheduled posts, one of which WordPress refuses (a must-use plugin refuses its tag) until the
plugin is removed and the failed item retried. Meanwhile another key's batch gets its own share
of slots and finishes long before the big one. A batch cancelled half-way keeps what it had
finished, posts included.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from standardwebhooks import Webhook

from tests.e2e.stack import SECRET, Stack, stack
from tests.publish.ghost_site import GhostSite
from tests.publish.ghost_site import missing as ghost_missing
from tests.publish.ghost_site import required as ghost_required
from tests.publish.test_ghost_live import admin_api, public_posts
from tests.publish.wordpress_site import WordPressSite, missing
from tests.redis_db import leased_db

pytestmark = pytest.mark.e2e

KEY_A, KEY_B = "sk-calendar-a", "sk-calendar-b"
SLOTS = 3
REFUSED_TAG = "refuse-me"
# Items that the tiny models finish in a few seconds: two short sections, one small image.
SMALL = {"target_words": 100, "sections": 2, "images": {"count": 1, "size": "64x64", "steps": 1}}
REFUSE_PLUGIN = """<?php
// Refuses to create one tag, as a site's policy plugin might refuse a post's terms.
add_filter('rest_pre_dispatch', function ($result, $server, $request) {
    if ($request->get_method() === 'POST' && $request->get_route() === '/wp/v2/tags'
        && $request->get_param('name') === 'REFUSED') {
        return new WP_Error('af_tag_refused', 'This site does not take that tag.',
            array('status' => 403));
    }
    return $result;
}, 10, 3);
""".replace("REFUSED", REFUSED_TAG)


@pytest.fixture(scope="module")
def site() -> Iterator[WordPressSite]:
    reason = missing()
    if reason:
        pytest.skip(f"no real WordPress here: {reason}")
    wordpress = WordPressSite(webhook_secret=SECRET).start()
    (wordpress.content / "mu-plugins" / "af-refuse-tag.php").write_text(REFUSE_PLUGIN)
    yield wordpress
    wordpress.stop()


@pytest.fixture(scope="module")
def ghost() -> Iterator[GhostSite | None]:
    """A real Ghost beside the WordPress, where one is installed (CI requires it); None here
    otherwise, and only the Ghost test skips."""
    reason = ghost_missing()
    if reason:
        if ghost_required():
            pytest.fail(f"ARTICLEFORGE_GHOST_REQUIRED is set, but {reason}")
        yield None
        return
    site = GhostSite()
    try:
        yield site.start()
    finally:
        site.stop()


@pytest.fixture(scope="module")
def calendar_stack(
    site: WordPressSite,
    ghost: GhostSite | None,
    cache_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    cms = {}
    if ghost is not None:
        cms = {
            "ARTICLEFORGE_PUBLISH_GHOST_URL": ghost.url,
            "ARTICLEFORGE_PUBLISH_GHOST_ADMIN_KEY": ghost.admin_key,
        }
    env = {
        **cms,
        "OMP_NUM_THREADS": "1",
        "ARTICLEFORGE_API_KEYS": f"{KEY_A},{KEY_B}",
        "ARTICLEFORGE_BATCH_SLOTS_PER_KEY": str(SLOTS),
        "ARTICLEFORGE_PUBLISH_WORDPRESS_URL": site.url,
        "ARTICLEFORGE_PUBLISH_WORDPRESS_USER": site.user,
        "ARTICLEFORGE_PUBLISH_WORDPRESS_APP_PASSWORD": site.app_password,
        "ARTICLEFORGE_PUBLISH_RETRY_INTERVALS": "1",
    }
    path = tmp_path_factory.mktemp("calendar")
    with leased_db() as redis_url, stack(cache_dir, path, redis_url, 4, env) as s:
        yield s


def client(s: Stack, key: str) -> httpx.Client:
    return httpx.Client(base_url=s.gateway, timeout=60, headers={"Authorization": f"Bearer {key}"})


def wait_batch(api: httpx.Client, batch_id: str, seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        batch = api.get(f"/v1/batches/{batch_id}", params={"limit": 500}).json()
        if batch["status"] != "running":
            return dict(batch)
        assert time.monotonic() < deadline, f"batch still running: {batch['counts']}"
        time.sleep(0.5)


def batch_hooks(s: Stack, batch_id: str) -> list[dict[str, Any]]:
    """The batch's webhook deliveries, each verified against the secret."""
    found = []
    for headers, raw in list(s.deliveries):
        event = Webhook(SECRET).verify(raw, headers)
        if event["data"]["id"] == batch_id:
            found.append({"webhook-id": headers["webhook-id"], **event})
    return found


def batch_ends(s: Stack, batch_id: str, count: int, seconds: float = 60) -> list[dict[str, Any]]:
    """The batch's own `batch.*` webhooks once `count` have come. A batch's status turns final
    before its webhook job has run, so the delivery may follow the status by a moment."""
    deadline = time.monotonic() + seconds
    while True:
        ends = [h for h in batch_hooks(s, batch_id) if h["type"].startswith("batch.")]
        if len(ends) >= count or time.monotonic() > deadline:
            return ends
        time.sleep(0.2)


def calendar_csv(rows: int) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["topic", "keywords", "words", "sections", "images"])
    for k in range(rows):
        keywords = f"garden {k};{REFUSED_TAG}" if k == 7 else f"garden {k};soil"
        writer.writerow([f"Winter garden, part {k}", keywords, 100, 2, 1])
    return out.getvalue()


def expected_slots(first_day: date, count: int) -> list[str]:
    berlin = ZoneInfo("Europe/Berlin")
    slots = []
    day = first_day
    while len(slots) < count:
        for clock in ((9, 0), (17, 30)):
            moment = datetime(day.year, day.month, day.day, *clock, tzinfo=berlin)
            slots.append(moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        day += timedelta(days=1)
    return slots[:count]


def test_a_csv_calendar_batch_publishes_scheduled_posts_and_retries_its_failure(
    calendar_stack: Stack, site: WordPressSite
) -> None:
    s = calendar_stack
    first_day = datetime.now(ZoneInfo("Europe/Berlin")).date() + timedelta(days=1)
    options = {
        "name": "Winter garden calendar",
        "defaults": {
            "images": {"size": "64x64", "steps": 1},
            "publish": {"target": "wordpress"},
        },
        "schedule": {
            "start": first_day.isoformat(),
            "every": "1d",
            "times": ["09:00", "17:30"],
            "timezone": "Europe/Berlin",
        },
        "webhook": {"url": s.hook_url},
    }
    with client(s, KEY_A) as a, client(s, KEY_B) as b:
        reply = a.post(
            "/v1/batches",
            files={"file": ("calendar.csv", calendar_csv(20), "text/csv")},
            data={"options": json.dumps(options)},
        )
        assert reply.status_code == 202, reply.text
        big = reply.json()
        assert big["counts"]["total"] == 20
        assert big["counts"]["waiting"] == 20 - SLOTS  # the key's share started, the rest wait

        # Another key's batch, sent while the first has 17 items waiting: it starts at once.
        reply = b.post(
            "/v1/batches",
            json={
                "items": [{"topic": "Pruning roses"}, {"topic": "Bulbs in pots"}],
                "defaults": {"target_words": 100, "sections": 2, "images": {"count": 0}},
            },
        )
        assert reply.status_code == 202, reply.text
        small = reply.json()
        assert small["counts"]["waiting"] == 0
        assert b.get(f"/v1/batches/{big['id']}").status_code == 404  # not B's to see

        done_small = wait_batch(b, small["id"], 300)
        assert done_small["status"] == "succeeded"
        meanwhile = a.get(f"/v1/batches/{big['id']}", params={"limit": 0}).json()
        assert meanwhile["status"] == "running"
        assert meanwhile["counts"]["by_status"].get("succeeded", 0) < 20

        done = wait_batch(a, big["id"], 900)
        assert done["status"] == "failed"
        assert done["counts"]["by_status"] == {"succeeded": 20}
        assert done["counts"]["by_publish"] == {"published": 19, "failed": 1}
        assert done["counts"]["scheduled"] == 19
        refused = done["items"][7]
        assert refused["publish"]["state"] == "failed"
        assert refused["publish"]["error"]["type"] == "cms_rejected"
        assert "af_tag_refused" in refused["publish"]["error"]["message"]

        slots = expected_slots(first_day, 20)
        with site.api() as wp:
            for item in done["items"]:
                if item["index"] == 7:
                    continue
                assert item["publish"]["at"] == slots[item["index"]]
                post = wp.get(
                    f"/wp/v2/posts/{item['publish']['post_id']}", params={"context": "edit"}
                ).json()
                assert post["status"] == "future"
                assert post["date_gmt"] + "Z" == slots[item["index"]]
        ends = batch_ends(s, big["id"], 1)
        assert [h["type"] for h in ends] == ["batch.failed"]
        assert ends[0]["data"]["counts"]["by_publish"]["failed"] == 1

        # The site's plugin is fixed; only the failed item runs again, into its own slot.
        (site.content / "mu-plugins" / "af-refuse-tag.php").unlink()
        reply = a.post(f"/v1/batches/{big['id']}/retry")
        assert reply.status_code == 202, reply.text
        assert reply.json()["status"] == "running"
        again = wait_batch(a, big["id"], 300)
        assert again["status"] == "succeeded"
        assert again["retries"] == 1
        item = again["items"][7]
        assert item["article_id"] == refused["article_id"]  # the article was fine: same one
        assert item["publish"]["state"] == "published"
        assert item["publish"]["at"] == slots[7]
        with site.api() as wp:
            post = wp.get(f"/wp/v2/posts/{item['publish']['post_id']}", params={"context": "edit"})
            assert post.json()["status"] == "future"
            assert post.json()["date_gmt"] + "Z" == slots[7]
        assert [h["type"] for h in batch_ends(s, big["id"], 2)] == [
            "batch.failed",
            "batch.succeeded",
        ]

        metrics = httpx.get(f"{s.gateway}/metrics").text
        total = "articleforge_gateway_publish_total"
        assert f'{total}{{outcome="published",target="wordpress"}} 20.0' in metrics
        assert f'{total}{{outcome="failed",target="wordpress"}} 1.0' in metrics


def test_cancelling_half_way_keeps_the_finished_items_and_their_posts(
    calendar_stack: Stack, site: WordPressSite
) -> None:
    s = calendar_stack
    with client(s, KEY_A) as a:
        reply = a.post(
            "/v1/batches",
            json={
                "items": [{"topic": f"Composting, step {k}"} for k in range(10)],
                "defaults": {**SMALL, "publish": {"target": "wordpress", "status": "draft"}},
                "webhook": {"url": s.hook_url},
            },
        )
        assert reply.status_code == 202, reply.text
        batch_id = reply.json()["id"]
        deadline = time.monotonic() + 300
        while True:
            batch = a.get(f"/v1/batches/{batch_id}").json()
            if batch["counts"]["by_publish"].get("published", 0) >= 3:
                break
            assert time.monotonic() < deadline, batch["counts"]
            time.sleep(0.2)
        reply = a.delete(f"/v1/batches/{batch_id}")
        assert reply.status_code == 200, reply.text
        assert reply.json()["status"] == "cancelled"
        assert a.delete(f"/v1/batches/{batch_id}").status_code == 409

        time.sleep(3)  # anything still running would finish or publish now
        final = a.get(f"/v1/batches/{batch_id}").json()
        finished = [i for i in final["items"] if i["status"] == "succeeded"]
        stopped = [i for i in final["items"] if i["status"] == "cancelled"]
        assert len(finished) >= 3 and stopped
        assert len(finished) + len(stopped) == 10
        assert final["counts"]["waiting"] == 0
        with site.api() as wp:
            for item in finished:
                article = a.get(f"/v1/articles/{item['article_id']}").json()
                assert article["article"]["word_count"] > 0
                if item["publish"] and item["publish"]["state"] == "published":
                    post = wp.get(
                        f"/wp/v2/posts/{item['publish']['post_id']}", params={"context": "edit"}
                    ).json()
                    assert post["status"] == "draft"
            for item in stopped:
                assert item["publish"] is None or item["publish"]["post_id"] is None
        assert [h["type"] for h in batch_ends(s, batch_id, 1)] == ["batch.cancelled"]
        assert a.post(f"/v1/batches/{batch_id}/retry").status_code == 409


def test_a_calendar_batch_into_ghost_schedules_its_posts(
    calendar_stack: Stack, ghost: GhostSite | None
) -> None:
    if ghost is None:
        pytest.skip(f"no real Ghost here: {ghost_missing()}")
    s = calendar_stack
    start = (datetime.now(UTC) + timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
    with client(s, KEY_B) as b:
        reply = b.post(
            "/v1/batches",
            json={
                "items": [{"topic": f"Seed saving, part {k}"} for k in range(4)],
                "defaults": {**SMALL, "publish": {"target": "ghost"}},
                "schedule": {"start": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "every": "12h"},
            },
        )
        assert reply.status_code == 202, reply.text
        done = wait_batch(b, reply.json()["id"], 300)
    assert done["status"] == "succeeded", done["counts"]
    assert done["counts"]["scheduled"] == 4
    with admin_api(ghost) as api:
        for item in done["items"]:
            slot = (start + timedelta(hours=12 * item["index"])).strftime("%Y-%m-%dT%H:%M:%SZ")
            assert item["publish"]["at"] == slot
            assert item["publish"]["post_status"] == "scheduled"
            post = api.get(f"/posts/{item['publish']['post_id']}/").json()["posts"][0]
            assert post["status"] == "scheduled"
            assert post["published_at"].replace(".000Z", "Z") == slot
            assert public_posts(ghost, item["publish"]["post_id"]) == []  # not public yet
