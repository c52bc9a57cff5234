"""POST /v1/batches and what follows, on the real Redis and the real jobs: the model services are
unreachable here (the discard port), so every article fails at its outline, fast. That is
enough to watch the per-key slots hand out work, the batch end, cancel and retry; the whole
flow to published posts is tests/e2e/test_batch_flow.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
import redis
from fastapi.testclient import TestClient
from rq import Queue
from rq.job import Job

from services.gateway import jobs
from services.gateway.auth import key_scope
from services.gateway.batches import dispatch, record
from services.gateway.job_base import store_for
from services.gateway.webhook_jobs import ITEM_EVENT_JOB
from services.gateway.worker import InProcessWorker
from tests.gateway.conftest import KEY, OTHER_KEY, make_client
from tests.webhook_receiver import Receiver

SLOTS = 3


@pytest.fixture()
def batch_env(gateway_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    extra = {
        "ARTICLEFORGE_BATCH_SLOTS_PER_KEY": str(SLOTS),
        "ARTICLEFORGE_BATCH_MAX_ITEMS": "40",
        "ARTICLEFORGE_BATCH_MAX_WAITING_PER_KEY": "60",
        "ARTICLEFORGE_SERVICE_ATTEMPTS": "1",
        # A target to schedule for; nothing here publishes (every article fails first).
        "ARTICLEFORGE_PUBLISH_WORDPRESS_URL": "http://127.0.0.1:9",
        "ARTICLEFORGE_PUBLISH_WORDPRESS_USER": "editor",
        "ARTICLEFORGE_PUBLISH_WORDPRESS_APP_PASSWORD": "unused",
    }
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    jobs.settings.cache_clear()
    return {**gateway_env, **extra}


@pytest.fixture()
def api(batch_env: dict[str, str]) -> Iterator[TestClient]:
    with make_client() as c:
        c.headers["Authorization"] = f"Bearer {KEY}"
        yield c


@pytest.fixture()
def other(batch_env: dict[str, str]) -> Iterator[TestClient]:
    with make_client() as c:
        c.headers["Authorization"] = f"Bearer {OTHER_KEY}"
        yield c


def items(count: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"topic": f"Garden topic {k}", **extra} for k in range(count)]


def queued_articles(connection: redis.Redis) -> list[str]:
    """The article of each outline job waiting on the articles queue, in queue order (an
    article's first job: the article has started)."""
    ids = Queue(jobs.ARTICLES_QUEUE, connection=connection).get_job_ids()
    return [i.removesuffix("-outline") for i in ids if i.endswith("-outline")]


class SlotWatcher(InProcessWorker):
    """Runs the jobs in this process and notes, after each, how many items each key holds."""

    most: dict[str, int]

    def perform_job(self, job: Job, queue: Queue, *args: Any) -> bool:
        done = super().perform_job(job, queue, *args)
        for scope in (key_scope(KEY), key_scope(OTHER_KEY)):
            held = int(self.connection.scard(record.started_key(scope)))
            self.most[scope] = max(self.most.get(scope, 0), held)
        return done


def run_all(connection: redis.Redis) -> dict[str, int]:
    queues = [Queue(name, connection=connection) for name in (jobs.ARTICLES_QUEUE, "images")]
    worker = SlotWatcher(queues, connection=connection)
    worker.most = {}
    worker.work(burst=True)
    return worker.most


def test_a_batch_starts_only_its_keys_share_and_the_rest_wait(
    api: TestClient, redis_db: redis.Redis
) -> None:
    reply = api.post("/v1/batches", json={"name": "December", "items": items(10)})
    assert reply.status_code == 202, reply.text
    batch = reply.json()
    assert batch["id"].startswith("bat_") and reply.headers["Location"] == batch["links"]["self"]
    assert batch["status"] == "running" and batch["name"] == "December"
    assert batch["counts"]["total"] == 10
    assert batch["counts"]["waiting"] == 10 - SLOTS
    assert batch["counts"]["ended"] == 0
    assert [i["index"] for i in batch["items"]] == list(range(10))
    assert [i["waiting"] for i in batch["items"]] == [False] * SLOTS + [True] * (10 - SLOTS)
    ids = [i["article_id"] for i in batch["items"]]
    assert queued_articles(redis_db) == ids[:SLOTS]  # only the share's outlines are queued
    # Each item is an ordinary article that names its batch.
    article = api.get(f"/v1/articles/{ids[5]}").json()
    assert article["status"] == "queued"
    assert article["batch"] == {"id": batch["id"], "index": 5, "waiting": True}


def test_another_keys_single_article_and_batch_do_not_wait_behind_a_big_batch(
    api: TestClient, other: TestClient, redis_db: redis.Redis
) -> None:
    big = api.post("/v1/batches", json={"items": items(30)}).json()
    single = other.post("/v1/articles", json={"topic": "Pruning roses"}).json()
    theirs = other.post("/v1/batches", json={"items": items(4)}).json()
    order = queued_articles(redis_db)
    # The single article waits behind the big batch's share only, not its 30 items...
    assert order.index(single["id"]) == SLOTS
    # ...and the other key's batch gets its own share at once.
    assert theirs["counts"]["waiting"] == 4 - SLOTS
    started = [i["article_id"] for i in theirs["items"][:SLOTS]]
    assert order[SLOTS + 1 :] == started

    most = run_all(redis_db)  # every article fails at its outline; each end starts the next
    assert most == {key_scope(KEY): SLOTS, key_scope(OTHER_KEY): SLOTS}
    for batch in (big, theirs):
        final = api.get(f"/v1/batches/{batch['id']}") if batch is big else None
        final = (final or other.get(f"/v1/batches/{batch['id']}")).json()
        assert final["status"] == "failed"
        assert final["counts"]["by_status"] == {"failed": batch["counts"]["total"]}
        assert final["counts"]["waiting"] == 0
        assert final["counts"]["ended"] == final["counts"]["total"]
        assert final["finished_at"] is not None
    assert redis_db.scard(record.RUNNING) == 0
    assert redis_db.scard(record.WAITING_KEYS) == 0


def test_cancel_stops_every_item_not_yet_ended_and_a_second_cancel_is_409(
    api: TestClient, redis_db: redis.Redis
) -> None:
    batch = api.post("/v1/batches", json={"items": items(6)}).json()
    first = batch["items"][0]["article_id"]
    # One item ends before the cancel: the first job on the queue, its outline, fails.
    queue = Queue(jobs.ARTICLES_QUEUE, connection=redis_db)
    InProcessWorker([queue], connection=redis_db).work(burst=True, max_jobs=1)
    assert api.get(f"/v1/articles/{first}").json()["status"] == "failed"

    reply = api.delete(f"/v1/batches/{batch['id']}")
    assert reply.status_code == 200, reply.text
    cancelled = reply.json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["counts"]["by_status"] == {"failed": 1, "cancelled": 5}
    assert cancelled["counts"]["waiting"] == 0
    assert queued_articles(redis_db) == []  # the started items' jobs are gone from the queue
    assert redis_db.llen(record.waiting_key(key_scope(KEY))) == 0  # nor do they count as waiting
    again = api.delete(f"/v1/batches/{batch['id']}")
    assert again.status_code == 409
    assert (
        again.json()["error"]["message"]
        == f"batch {batch['id']} already cancelled; nothing to cancel"
    )
    assert api.post(f"/v1/batches/{batch['id']}/retry").status_code == 409
    run_all(redis_db)  # nothing waiting starts after a cancel
    final = api.get(f"/v1/batches/{batch['id']}").json()
    assert final["counts"]["by_status"] == {"failed": 1, "cancelled": 5}


def test_retry_runs_only_the_failed_items_again_as_new_articles(
    api: TestClient, redis_db: redis.Redis
) -> None:
    batch = api.post("/v1/batches", json={"items": items(4)}).json()
    run_all(redis_db)
    failed = api.get(f"/v1/batches/{batch['id']}").json()
    assert failed["status"] == "failed"
    assert api.post("/v1/batches/bat_000000000000000000000000/retry").status_code == 404

    reply = api.post(f"/v1/batches/{batch['id']}/retry")
    assert reply.status_code == 202, reply.text
    retried = reply.json()
    assert retried["status"] == "running" and retried["retries"] == 1
    assert retried["finished_at"] is None
    for before, after in zip(failed["items"], retried["items"], strict=True):
        assert after["article_id"] != before["article_id"]
        assert after["earlier_ids"] == [before["article_id"]]
        assert after["status"] == "queued"
    assert retried["counts"]["waiting"] == 4 - SLOTS
    run_all(redis_db)
    final = api.get(f"/v1/batches/{batch['id']}").json()
    assert final["status"] == "failed" and final["retries"] == 1
    # The earlier articles stay as they were, readable by their ids.
    assert api.get(f"/v1/articles/{failed['items'][0]['article_id']}").json()["status"] == "failed"


class BatchHooks(Receiver):
    deliveries: ClassVar[list[tuple[dict[str, str], bytes]]] = []


@pytest.fixture()
def hook_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    BatchHooks.deliveries = []
    monkeypatch.setenv("ARTICLEFORGE_WEBHOOK_ALLOW_PRIVATE", "true")
    server = ThreadingHTTPServer(("127.0.0.1", 0), BatchHooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


class WithoutItemEvents(InProcessWorker):
    """Drops each batch item's event job, as if the worker that held it had died."""

    def perform_job(self, job: Job, queue: Queue, *args: Any) -> bool:
        if job.func_name == ITEM_EVENT_JOB:
            return True
        return bool(super().perform_job(job, queue, *args))


def batch_hooks(batch_id: str) -> list[str]:
    return [
        json.loads(raw)["type"]
        for _, raw in BatchHooks.deliveries
        if json.loads(raw)["data"]["id"] == batch_id
    ]


def test_an_end_cut_short_is_finished_by_the_next_pass_and_announced_once(
    hook_url: str, api: TestClient, redis_db: redis.Redis
) -> None:
    batch = api.post("/v1/batches", json={"items": items(2), "webhook": {"url": hook_url}}).json()
    queue = Queue(jobs.ARTICLES_QUEUE, connection=redis_db)
    WithoutItemEvents([queue], connection=redis_db).work(burst=True)
    assert api.get(f"/v1/batches/{batch['id']}").json()["status"] == "running"  # events lost

    # A process turns the batch `failed`, and dies before it queues the webhook.
    store = store_for(jobs.settings(), redis_db)
    assert dispatch.end(store, batch["id"], "failed")
    job_id = f"{batch['id']}-webhook-0-failed"
    assert not Job.exists(job_id, connection=redis_db)
    assert redis_db.sismember(record.RUNNING, batch["id"])

    # The maintenance pass finishes it; another pass and a late item event queue nothing more.
    dispatch.sweep(redis_db)
    dispatch.sweep(redis_db)
    assert dispatch.refresh(store, jobs.settings(), batch["id"]) is None
    assert queue.get_job_ids().count(job_id) == 1
    assert redis_db.scard(record.RUNNING) == 0
    InProcessWorker([queue], connection=redis_db).work(burst=True)
    assert batch_hooks(batch["id"]) == ["batch.failed"]


def test_a_cancel_cut_short_is_finished_by_the_next_pass(
    hook_url: str, api: TestClient, redis_db: redis.Redis
) -> None:
    batch = api.post("/v1/batches", json={"items": items(6), "webhook": {"url": hook_url}}).json()
    assert batch["counts"]["waiting"] == 6 - SLOTS
    # The cancel turns the batch `cancelled`, and its process dies before it stops any item.
    store = store_for(jobs.settings(), redis_db)
    assert dispatch.end(store, batch["id"], "cancelled")

    dispatch.sweep(redis_db)
    final = api.get(f"/v1/batches/{batch['id']}").json()
    assert final["status"] == "cancelled"
    assert final["counts"]["by_status"] == {"cancelled": 6}
    assert final["counts"]["waiting"] == 0
    assert queued_articles(redis_db) == []
    assert redis_db.llen(record.waiting_key(key_scope(KEY))) == 0
    assert redis_db.scard(record.RUNNING) == 0
    run_all(redis_db)  # the webhooks; no item starts
    assert batch_hooks(batch["id"]) == ["batch.cancelled"]
    after = api.get(f"/v1/batches/{batch['id']}").json()
    assert after["counts"]["by_status"] == {"cancelled": 6}


def test_an_idempotency_key_replays_the_same_batch_and_refuses_another_body(
    api: TestClient,
) -> None:
    body = {"items": items(2)}
    first = api.post("/v1/batches", json=body, headers={"Idempotency-Key": "cal-1"})
    again = api.post("/v1/batches", json=body, headers={"Idempotency-Key": "cal-1"})
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other_body = api.post(
        "/v1/batches", json={"items": items(3)}, headers={"Idempotency-Key": "cal-1"}
    )
    assert other_body.status_code == 409
    assert other_body.json()["error"]["param"] == "Idempotency-Key"
    # The same key for an article is another namespace: it makes an article.
    article = api.post("/v1/articles", json={"topic": "Cal"}, headers={"Idempotency-Key": "cal-1"})
    assert article.status_code == 202 and article.json()["id"].startswith("art_")


def test_a_batch_is_its_keys_alone(api: TestClient, other: TestClient) -> None:
    mine = api.post("/v1/batches", json={"items": items(1)}).json()
    theirs = other.post("/v1/batches", json={"items": items(1)}).json()
    assert other.get(f"/v1/batches/{mine['id']}").status_code == 404
    assert other.delete(f"/v1/batches/{mine['id']}").status_code == 404
    assert other.post(f"/v1/batches/{mine['id']}/retry").status_code == 404
    listed = api.get("/v1/batches").json()["data"]
    assert [b["id"] for b in listed] == [mine["id"]]
    assert listed[0]["items"] == []  # the list carries counts, not items
    assert [b["id"] for b in other.get("/v1/batches").json()["data"]] == [theirs["id"]]


def test_items_page_through_the_cursor(api: TestClient) -> None:
    batch = api.post("/v1/batches", json={"items": items(7)}).json()
    seen, cursor = [], 0
    while True:
        page = api.get(f"/v1/batches/{batch['id']}", params={"limit": 3, "cursor": cursor})
        body = page.json()
        seen += [i["index"] for i in body["items"]]
        if body["next_cursor"] is None:
            break
        cursor = int(body["next_cursor"])
    assert seen == list(range(7))


def error(reply: Any) -> tuple[int, str, str]:
    found = reply.json()["error"]
    return reply.status_code, found["param"], found["message"]


def test_bad_batches_are_refused_naming_the_field_and_the_limit(api: TestClient) -> None:
    status, param, message = error(api.post("/v1/batches", json={"items": items(41)}))
    assert (status, param) == (422, "items")
    assert "at most 40 items (ARTICLEFORGE_BATCH_MAX_ITEMS); got 41" in message

    bad_item = items(3)
    bad_item[2]["sections"] = 99
    status, param, message = error(api.post("/v1/batches", json={"items": bad_item}))
    assert (status, param) == (422, "items.2.sections")

    status, param, _ = error(
        api.post(
            "/v1/batches",
            json={"items": items(1), "schedule": {"start": "2030-01-01", "times": ["25:00"]}},
        )
    )
    assert (status, param) == (422, "schedule.times")
    status, param, _ = error(api.post("/v1/batches", json={"items": [], "name": "empty"}))
    assert (status, param) == (422, "items")
    status, param, message = error(
        api.post(
            "/v1/batches",
            json={"items": items(1), "defaults": {"publish": {"target": "ghost"}}},
        )
    )
    assert (status, param) == (400, "items.0.publish.target")
    assert "configured on this gateway" in message


def test_too_many_waiting_items_for_one_key_is_a_429(api: TestClient) -> None:
    assert api.post("/v1/batches", json={"items": items(40)}).status_code == 202
    reply = api.post("/v1/batches", json={"items": items(30)})
    assert reply.status_code == 429
    assert reply.headers["Retry-After"] == "60"
    assert "ARTICLEFORGE_BATCH_MAX_WAITING_PER_KEY" in reply.json()["error"]["message"]


CSV = (
    "\ufefftopic,Keywords, words ,images,style\n"
    'Heat pumps in old houses,"heat pump; insulation",400,1,watercolor\n'
    "\n"
    "Solar roof tiles,,,0,\n"
)


def test_a_csv_upload_becomes_the_same_items_as_json(
    api: TestClient, redis_db: redis.Redis
) -> None:
    reply = api.post("/v1/batches", content=CSV.encode(), headers={"content-type": "text/csv"})
    assert reply.status_code == 202, reply.text
    batch = reply.json()
    assert [i["topic"] for i in batch["items"]] == ["Heat pumps in old houses", "Solar roof tiles"]
    stored = json.loads(redis_db.hget(f"af:article:{batch['items'][0]['article_id']}", "request"))
    assert stored["keywords"] == ["heat pump", "insulation"]
    assert stored["target_words"] == 400
    assert stored["images"]["count"] == 1 and stored["images"]["style"] == "watercolor"
    second = json.loads(redis_db.hget(f"af:article:{batch['items'][1]['article_id']}", "request"))
    assert second["keywords"] == [] and second["target_words"] is None

    options = json.dumps({"name": "From a form", "defaults": {"sections": 2}})
    as_file = api.post(  # `curl -F options=@options.json` sends the options as a file
        "/v1/batches",
        files={"file": ("t.csv", CSV.encode(), "text/csv"), "options": ("o.json", options)},
    )
    assert as_file.status_code == 202 and as_file.json()["name"] == "From a form"
    form = api.post(
        "/v1/batches",
        files={"file": ("topics.csv", CSV.encode(), "text/csv")},
        data={"options": options},
    )
    assert form.status_code == 202, form.text
    assert form.json()["name"] == "From a form"
    third = json.loads(
        redis_db.hget(f"af:article:{form.json()['items'][1]['article_id']}", "request")
    )
    assert third["sections"] == 2


@pytest.mark.parametrize(
    ("csv_text", "param", "needle"),
    [
        ("topic,wordz\nHeat pumps,400\n", "file", "unknown CSV column 'wordz'"),
        ("keywords\nheat\n", "file", "needs a `topic` column"),
        ("", "file", "the CSV is empty"),
        ("topic\n", "file", "a header but no rows"),
        (
            "topic,words\nHeat pumps,400\nSolar,lots\n",
            "items.1.target_words",
            "CSV line 3, column `words`",
        ),
        (
            "topic,publish_target,publish_at\nHeat pumps,wordpress,2020-01-01T00:00:00Z\n",
            "items.0.publish.at",
            "got 2020-01-01T00:00:00Z (CSV line 2)",
        ),
        (
            "topic,publish_at\nHeat pumps,2031-01-01T00:00:00Z\n",
            "items.0.publish.target",
            "CSV line 2",
        ),
    ],
)
def test_a_bad_csv_names_the_row_and_column(
    api: TestClient, csv_text: str, param: str, needle: str
) -> None:
    reply = api.post("/v1/batches", content=csv_text.encode(), headers={"content-type": "text/csv"})
    assert reply.status_code in (400, 422), reply.text
    assert reply.json()["error"]["param"].startswith(param)
    assert needle in reply.json()["error"]["message"]


def test_a_csv_that_is_not_utf8_or_a_body_of_another_type_is_refused(api: TestClient) -> None:
    reply = api.post(
        "/v1/batches", content=b"topic\n\xff\xfe\n", headers={"content-type": "text/csv"}
    )
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "file"
    reply = api.post("/v1/batches", content=b"<xml/>", headers={"content-type": "application/xml"})
    assert reply.status_code == 400 and "text/csv" in reply.json()["error"]["message"]
    reply = api.post("/v1/batches", files={"other": ("x.csv", b"topic\nA b c\n")})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "file"


WP = {"target": "wordpress"}


def test_a_schedule_gives_each_item_the_next_slot_of_the_calendar(
    api: TestClient, redis_db: redis.Redis
) -> None:
    body = {
        "items": [
            *items(2),
            {"topic": "Own time", "publish": {**WP, "at": "2031-06-01T12:00:00Z"}},
            *items(2),
        ],
        "defaults": {"publish": WP},
        "schedule": {
            "start": "2031-03-29",  # Europe/Berlin moves to summer time at 02:00 on the 30th
            "every": "1d",
            "times": ["09:00", "02:30"],
            "timezone": "Europe/Berlin",
        },
    }
    reply = api.post("/v1/batches", json=body)
    assert reply.status_code == 202, reply.text
    at = []
    for item in reply.json()["items"]:
        stored = json.loads(redis_db.hget(f"af:article:{item['article_id']}", "request"))
        assert stored["publish"]["status"] == "publish"
        at.append(stored["publish"]["at"])
    assert at == [
        "2031-03-29T01:30:00Z",  # 02:30 winter time (UTC+1)
        "2031-03-29T08:00:00Z",  # 09:00 winter time
        "2031-06-01T12:00:00Z",  # the item's own time is kept and takes no slot
        "2031-03-30T01:30:00Z",  # 02:30 does not exist that night: 03:30 summer time (UTC+2)
        "2031-03-30T07:00:00Z",  # 09:00 summer time
    ]
    assert reply.json()["schedule"]["times"] == ["02:30", "09:00"]


def test_times_in_the_past_and_contradictions_are_a_422_naming_the_field(
    api: TestClient,
) -> None:
    past = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status, param, message = error(
        api.post(
            "/v1/batches",
            json={
                "items": items(1),
                "defaults": {"publish": WP},
                "schedule": {"start": past, "every": "1h"},
            },
        )
    )
    assert (status, param) == (422, "schedule.start")
    assert "first slot in the future" in message
    status, param, message = error(
        api.post("/v1/batches", json={"items": [{"topic": "Late", "publish": {**WP, "at": past}}]})
    )
    assert (status, param) == (422, "items.0.publish.at")
    assert message.startswith("items.0.publish.at must be in the future")
    status, param, _ = error(
        api.post(
            "/v1/batches",
            json={
                "items": [{"topic": "Draft", "publish": {**WP, "status": "draft"}}],
                "schedule": {"start": "2031-01-01", "times": ["09:00"]},
            },
        )
    )
    assert (status, param) == (422, "items.0.publish.status")
    status, param, message = error(
        api.post(
            "/v1/batches",
            json={
                "items": items(1),
                "defaults": {"publish": WP},
                "schedule": {"start": "2031-01-01", "timezone": "Mars/Olympus"},
            },
        )
    )
    assert (status, param) == (422, "schedule.timezone")
    status, param, _ = error(
        api.post(
            "/v1/batches",
            json={
                "items": items(1),
                "schedule": {"start": "2031-01-01", "every": "12h", "times": ["09:00"]},
            },
        )
    )
    assert (status, param) == (422, "schedule")
    # The article route checks the same way.
    status, param, _ = error(
        api.post("/v1/articles", json={"topic": "Late", "publish": {**WP, "at": past}})
    )
    assert (status, param) == (422, "publish.at")


def test_a_calendar_from_today_begins_with_the_next_slot_still_ahead(
    api: TestClient, redis_db: redis.Redis
) -> None:
    today = datetime.now(UTC).date()
    reply = api.post(
        "/v1/batches",
        json={
            "items": items(2),
            "defaults": {"publish": WP},
            "schedule": {"start": today.isoformat(), "times": ["00:00", "23:59"]},
        },
    )
    assert reply.status_code == 202, reply.text
    soon = datetime.now(UTC) + timedelta(seconds=60)
    moments = [
        datetime.combine(today + timedelta(days=d), datetime.min.time(), tzinfo=UTC)
        + timedelta(minutes=m)
        for d in range(3)
        for m in (0, 23 * 60 + 59)
    ]
    expected = [m.strftime("%Y-%m-%dT%H:%M:%SZ") for m in moments if m > soon][:2]
    got = [
        json.loads(redis_db.hget(f"af:article:{i['article_id']}", "request"))["publish"]["at"]
        for i in reply.json()["items"]
    ]
    assert got == expected


def test_a_batch_counts_as_one_request_for_the_keys_rate_limit(
    batch_env: dict[str, str],
) -> None:
    # The limit counts per minute: a run that straddles a minute's end is done again with the
    # other key (its count starts at 0 too).
    for key in (KEY, OTHER_KEY):
        minute = int(time.time() // 60)
        with make_client(rate_limit_per_minute=2) as c:
            c.headers["Authorization"] = f"Bearer {key}"
            first = c.post("/v1/batches", json={"items": items(10)})  # 10 items, one request
            second = c.post("/v1/articles", json={"topic": "One more"})
            third = c.post("/v1/batches", json={"items": items(1)})
        if int(time.time() // 60) == minute:
            break
    assert (first.status_code, second.status_code) == (202, 202)
    assert third.status_code == 429 and "Retry-After" in third.headers
    assert "ARTICLEFORGE_RATE_LIMIT_PER_MINUTE" in third.json()["error"]["message"]
