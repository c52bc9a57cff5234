"""Batches at work: creating one, starting its items as slots free, ending, cancelling, retrying.

Fairness. A batch's items are article records from the start (each has its id and shows
`queued`), but they wait outside the active set and the job queues, in their key's FIFO list
(``record.waiting_key``). ``dispatch`` starts them while the key holds fewer than
ARTICLEFORGE_BATCH_SLOTS_PER_KEY started items and the active set has room below
ARTICLEFORGE_MAX_ACTIVE_ARTICLES less one key's share (so single articles always find room).
So a key's 500 items never hold more than their share of the workers: another key's single
articles queue behind at most one share per key with a batch running, and another key's batch
starts its own share at once. A key's batches share its slots in the order they came.

``dispatch`` runs for the key at submission, whenever one of its items ends (``item_event_job``,
queued by the article's end and by its publish's end: ``webhook_jobs.note_batch_item``), and in
every worker maintenance pass (``sweep``), which also catches an end whose event was lost. One
dispatcher per key at a time (a Redis lock), so slots are never handed out twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from redis import Redis
from redis.exceptions import LockError, RedisError
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError

from services.common.errors import Conflict, Overloaded, Unprocessable
from services.gateway import jobs
from services.gateway.batches import calendar, record
from services.gateway.batches.schemas import BatchOptions, BatchRequest
from services.gateway.config import GatewaySettings
from services.gateway.job_base import ARTICLES_QUEUE, settings, store_for
from services.gateway.publish.common import SCHEDULE_MARGIN
from services.gateway.publish.job import (
    check_publish,
    enqueue_publish,
    load_record,
    same_options,
)
from services.gateway.publish.schemas import PublishOptions, utc_iso
from services.gateway.schemas import TERMINAL, ArticleRequest
from services.gateway.store import ArticleStore
from services.gateway.webhooks import check_url, deliver

logger = logging.getLogger(__name__)

# Moves a batch from `running` to its outcome once (two items ending at once both find the
# batch ended; one of them announces it).
_END = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished', ARGV[2])
return 1
"""


# --- creating ---


def new_batch_id() -> str:
    return "bat_" + secrets.token_hex(12)


def fingerprint(body: BatchRequest) -> str:
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


def check(
    config: GatewaySettings, body: BatchRequest, lines: list[int] | None = None
) -> BatchRequest:
    """Checks what the schema cannot (settings, the clock, webhook addresses) and gives each
    item its calendar slot; returns the request with the slots in its items."""

    def where(k: int) -> str:
        return f" (CSV line {lines[k]})" if lines else ""

    if len(body.items) > config.batch_max_items:
        raise Unprocessable(
            f"a batch holds at most {config.batch_max_items} items "
            f"(ARTICLEFORGE_BATCH_MAX_ITEMS); got {len(body.items)}",
            param="items",
        )
    if body.webhook is not None:
        check_url(str(body.webhook.url), config.webhook_allow_private)
    items = list(body.items)
    if body.schedule is not None:
        items = _scheduled(body, where)
    for k, item in enumerate(items):
        if item.webhook is not None:
            check_url(str(item.webhook.url), config.webhook_allow_private)
        if item.publish is not None:
            try:
                check_publish(config, item.publish, f"items.{k}.publish.")
            except Unprocessable as exc:
                raise Unprocessable(exc.message + where(k), param=exc.param) from None
    return body.model_copy(update={"items": items})


def _scheduled(body: BatchRequest, where: Callable[[int], str]) -> list[ArticleRequest]:
    assert body.schedule is not None
    try:
        calendar.zone(body.schedule.timezone)
    except ValueError as exc:
        raise Unprocessable(str(exc), param="schedule.timezone") from None
    unslotted = [k for k, item in enumerate(body.items) if not (item.publish and item.publish.at)]
    for k in unslotted:
        publish = body.items[k].publish
        if publish is None:
            raise Unprocessable(
                f"items.{k} has no publish target{where(k)}: a schedule publishes every item; "
                "give `defaults.publish.target` or the item's own",
                param=f"items.{k}.publish",
            )
        if "status" in publish.model_fields_set and publish.status != "publish":
            raise Unprocessable(
                f"items.{k}.publish.status is {publish.status!r}{where(k)}, but the schedule "
                "publishes it; leave it out or give `publish`",
                param=f"items.{k}.publish.status",
            )
    # A day as the start means its slots still ahead; a moment must itself be ahead.
    soon = datetime.now(UTC) + SCHEDULE_MARGIN
    day = not isinstance(body.schedule.start, datetime)
    slots = calendar.take(body.schedule, len(unslotted), soon if day else None)
    if slots and slots[0] <= datetime.now(UTC):
        raise Unprocessable(
            f"schedule.start must give a first slot in the future; it gives {utc_iso(slots[0])}",
            param="schedule.start",
        )
    items = list(body.items)
    for k, moment in zip(unslotted, slots, strict=True):
        publish = items[k].publish
        assert publish is not None
        timed = PublishOptions(target=publish.target, status="publish", at=moment)
        items[k] = items[k].model_copy(update={"publish": timed})
    return items


def create(
    store: ArticleStore,
    config: GatewaySettings,
    scope: str,
    body: BatchRequest,
    request_id: str,
    batch_id: str,
) -> None:
    """Writes the batch and its item records (all `queued`, waiting), then starts what the
    key's share allows."""
    waiting = int(store.redis.llen(record.waiting_key(scope)))
    if waiting + len(body.items) > config.batch_max_waiting_per_key:
        raise Overloaded(
            f"this key has {waiting} batch items waiting; with {len(body.items)} more it would "
            f"pass {config.batch_max_waiting_per_key} (ARTICLEFORGE_BATCH_MAX_WAITING_PER_KEY); "
            "retry when some have started",
            retry_after=60,
        )
    ids = ["art_" + secrets.token_hex(12) for _ in body.items]
    made: list[str] = []
    try:
        for k, (article_id, item) in enumerate(zip(ids, body.items, strict=True)):
            target = item.publish.target if item.publish is not None else None
            fields = jobs.record_fields(item, request_id, scope)
            fields["batch"] = {"id": batch_id, "index": k, "target": target}
            fields["waiting"] = True
            store.create(article_id, fields, active=False)
            made.append(article_id)
        _write(store, scope, body, request_id, batch_id, ids)
    except RedisError:
        # The request answers 503 and nothing of it may stay half-made: items that no batch
        # would ever start are cancelled (best effort: Redis may still be failing).
        with contextlib.suppress(RedisError):
            for article_id in made:
                store.transition(article_id, "cancelled")
        raise
    logger.info("batch %s: %d items queued for key %s", batch_id, len(ids), scope)
    dispatch(store, config, scope)


def _write(
    store: ArticleStore,
    scope: str,
    body: BatchRequest,
    request_id: str,
    batch_id: str,
    ids: list[str],
) -> None:
    """The batch's own records, in one transaction: the hash, its items, the indexes, the
    key's waiting list."""
    options = BatchOptions.model_validate(body.model_dump(exclude={"items"}))
    now = time.time()
    pipe = store.redis.pipeline()
    pipe.hset(
        record.key(batch_id),
        mapping={
            "owner": json.dumps(scope),
            "options": options.model_dump_json(),
            "topics": json.dumps([item.topic for item in body.items]),
            "status": "running",
            "created": str(now),
            "retries": "0",
            "request_id": request_id,
        },
    )
    pipe.rpush(record.items_key(batch_id), *ids)
    pipe.zadd(record.INDEX, {batch_id: now})
    pipe.zadd(record.index_key(scope), {batch_id: now})
    pipe.sadd(record.RUNNING, batch_id)
    pipe.rpush(record.waiting_key(scope), *ids)
    pipe.sadd(record.WAITING_KEYS, scope)
    pipe.execute()


# --- starting items as slots free ---


def dispatch(store: ArticleStore, config: GatewaySettings, scope: str, wait: float = 10) -> int:
    """Starts the key's waiting items while it has free slots; returns how many started.
    Waits up to ``wait`` seconds for another dispatcher of the key to finish."""
    lock = store.redis.lock(
        f"{record.PREFIX}:batches:lock:{scope}", timeout=60, blocking_timeout=wait
    )
    if not lock.acquire():
        return 0  # another dispatcher holds the key; it hands out what is free
    try:
        return _dispatch(store, config, scope)
    finally:
        with contextlib.suppress(LockError):
            lock.release()


def _dispatch(store: ArticleStore, config: GatewaySettings, scope: str) -> int:
    started_key = record.started_key(scope)
    holding = [a.decode() for a in store.redis.smembers(started_key)]
    pipe = store.redis.pipeline(transaction=False)
    for article_id in holding:
        pipe.hget(store.key(article_id), "status")
    statuses = pipe.execute()
    done = [a for a, s in zip(holding, statuses, strict=True) if not s or s.decode() in TERMINAL]
    if done:
        store.redis.srem(started_key, *done)
    free = config.batch_slots_per_key - (len(holding) - len(done))
    room = max(1, config.max_active_articles - config.batch_slots_per_key)
    started = 0
    while free > 0 and store.active_count() < room:
        raw = store.redis.lpop(record.waiting_key(scope))
        if raw is None:
            store.redis.srem(record.WAITING_KEYS, scope)
            break
        article_id = raw.decode()
        if store.status(article_id) != "queued":  # cancelled while waiting, or gone
            continue
        store.redis.sadd(started_key, article_id)
        _start(store, config, article_id)
        free, started = free - 1, started + 1
    return started


def _start(store: ArticleStore, config: GatewaySettings, article_id: str) -> None:
    fields = store.fields(article_id)
    request = ArticleRequest.model_validate(json.loads(fields["request"]))
    request_id = json.loads(fields.get("request_id", '""'))
    store.redis.sadd(store.ACTIVE, article_id)
    store.redis.hdel(store.key(article_id), "waiting")
    ids = jobs.enqueue_article(store, config, article_id, request, request_id)
    if store.is_over(article_id):  # cancelled meanwhile: its cancel saw no jobs to stop
        store.redis.srem(store.ACTIVE, article_id)
        jobs.stop_jobs(store.redis, ids)
        return
    store.publish(article_id)
    logger.info("article %s: started (batch slot)", article_id)


def sweep(connection: Redis) -> None:
    """The maintenance pass: every key with waiting items gets its free slots, and every
    running batch is checked for its end."""
    config = settings()
    store = store_for(config, connection)
    for raw in store.redis.smembers(record.WAITING_KEYS):
        # A key whose dispatcher is busy is handed its slots by that one: the maintenance pass
        # never waits for it.
        dispatch(store, config, raw.decode(), wait=0)
    for raw in store.redis.smembers(record.RUNNING):
        refresh(store, config, raw.decode())


def item_event_job(article_id: str) -> None:
    """One of a batch's items ended, or its publish did: free its slot, start the next, and
    see whether the batch has ended."""
    config = settings()
    store = store_for(config)
    batch = record.of_article(store, article_id)
    if batch is None:
        return
    scope = record.owner(store, batch["id"])
    if scope is not None:
        dispatch(store, config, scope)
    refresh(store, config, batch["id"])


# --- the end ---


def refresh(store: ArticleStore, config: GatewaySettings, batch_id: str) -> str | None:
    """Ends the batch once every item has ended; returns the outcome when this call ended it.

    Ending is two steps: ``end`` turns the status (once, atomically), then ``_finish`` queues
    the webhook and takes the batch off the running set. A process that dies between the two
    leaves an ended batch in the running set, and the next call (an item's event or the
    maintenance pass) finishes it, so the batch's webhook is never lost."""
    found = record.fields(store, batch_id)
    if not found:
        store.redis.srem(record.RUNNING, batch_id)
        return None
    outcome = None
    if found["status"] == "running":
        states = record.item_states(store, record.item_ids(store, batch_id))
        if not all(state.ended for state in states):
            return None
        outcome = "succeeded" if all(state.good for state in states) else "failed"
        if not end(store, batch_id, outcome):
            return None
        logger.info("batch %s: %s (%d items)", batch_id, outcome, len(states))
    if store.redis.sismember(record.RUNNING, batch_id):
        with held(store, batch_id, wait=0) as taken:
            if taken:  # else a cancel or retry holds it, and finishes or restarts it itself
                _finish(store, config, batch_id)
    return outcome


def end(store: ArticleStore, batch_id: str, outcome: str) -> bool:
    """Moves a running batch to ``outcome``; False when it had already ended."""
    name = record.key(batch_id)
    changed = bool(store.redis.eval(_END, 1, name, outcome, str(time.time())))
    if changed:
        pipe = store.redis.pipeline()
        pipe.expire(name, store.ttl)
        pipe.expire(record.items_key(batch_id), store.ttl)
        pipe.execute()
    return changed


def _finish(store: ArticleStore, config: GatewaySettings, batch_id: str) -> int:
    """What follows an end, under the batch's lock, safe to run again: a cancelled batch's
    unfinished items are stopped, the round's webhook is queued (once: its job id is fixed),
    and the batch leaves the running set. Returns how many items it stopped."""
    found = record.fields(store, batch_id)
    status = found.get("status")
    if status in (None, "running") or not store.redis.sismember(record.RUNNING, batch_id):
        return 0  # gone, started again by a retry, or finished already
    stopped = _stop_items(store, config, batch_id) if status == "cancelled" else 0
    announce(store, config, batch_id, found)
    store.redis.srem(record.RUNNING, batch_id)
    return stopped


def announce(
    store: ArticleStore, config: GatewaySettings, batch_id: str, found: dict[str, str]
) -> None:
    """Queues `batch.{status}` for the ended batch whose fields are ``found``, once per round
    (a retry starts another)."""
    options = BatchOptions.model_validate_json(found["options"])
    url = str(options.webhook.url) if options.webhook else config.webhook_default_url
    if url is None:
        return
    rounds, outcome = found.get("retries", "0"), found["status"]
    event = f"batch.{outcome}"
    intervals = config.webhook_retry_intervals
    with contextlib.suppress(DuplicateJobError):  # queued already, by a call that died after
        Queue(ARTICLES_QUEUE, connection=store.redis).enqueue(
            batch_webhook_job,
            batch_id,
            event,
            url,
            f"msg_{batch_id}_{rounds}_{outcome}",
            job_id=f"{batch_id}-webhook-{rounds}-{outcome}",
            unique=True,
            retry=Retry(max=len(intervals), interval=intervals) if intervals else None,
            job_timeout=int(config.webhook_timeout_seconds) + 30,
            result_ttl=3600,
            meta={"batch_id": batch_id, "stage": "webhook"},
        )


def batch_webhook_job(batch_id: str, event: str, url: str, message_id: str) -> None:
    config = settings()
    store = store_for(config)
    status = record.status_of(store, batch_id, limit=config.batch_max_items)
    if status is None:
        logger.warning("batch %s: gone before its %s webhook", batch_id, event)
        return
    deliver(config, url, event, batch_id, status.model_dump(mode="json"), message_id)


# --- cancel and retry ---


@contextlib.contextmanager
def held(store: ArticleStore, batch_id: str, wait: float) -> Iterator[bool]:
    """The batch's lock for one cancel, retry or finish at a time (two retries at once would
    renew an item twice), waited for up to ``wait`` seconds; yields whether it was taken."""
    lock = store.redis.lock(f"{record.key(batch_id)}:lock", timeout=120, blocking_timeout=wait)
    taken = bool(lock.acquire(blocking=wait > 0))
    try:
        yield taken
    finally:
        if taken:
            with contextlib.suppress(LockError):
                lock.release()


@contextlib.contextmanager
def exclusive(store: ArticleStore, batch_id: str) -> Iterator[None]:
    """The batch's lock for a request; a 409 after 10 s."""
    with held(store, batch_id, wait=10) as taken:
        if not taken:
            raise Conflict(f"batch {batch_id} is being cancelled or retried; try again", param="id")
        yield


def cancel(store: ArticleStore, config: GatewaySettings, batch_id: str) -> int:
    """Cancels every item not yet ended (a waiting one never starts); finished items, their
    posts and scheduled publishes stay as they are. Returns how many were cancelled."""
    with exclusive(store, batch_id):
        if not end(store, batch_id, "cancelled"):
            status = record.fields(store, batch_id).get("status")
            raise Conflict(f"batch {batch_id} already {status}; nothing to cancel", param="id")
        cancelled = _finish(store, config, batch_id)
    logger.info("batch %s: cancelled (%d items stopped)", batch_id, cancelled)
    return cancelled


def _stop_items(store: ArticleStore, config: GatewaySettings, batch_id: str) -> int:
    """Cancels the items not yet ended and takes the waiting ones off the key's list; returns
    how many it cancelled (none, the second time)."""
    cancelled, waited = 0, []
    for article_id in record.item_ids(store, batch_id):
        waiting = store.redis.hexists(store.key(article_id), "waiting")
        if jobs.cancel(store, config, article_id):
            cancelled += 1
            if waiting:
                waited.append(article_id)
    scope = record.owner(store, batch_id)
    if waited and scope is not None:  # out of the key's waiting list, so they count no more
        pipe = store.redis.pipeline(transaction=False)
        for article_id in waited:
            pipe.lrem(record.waiting_key(scope), 1, article_id)
        pipe.execute()
    return cancelled


def retry(
    store: ArticleStore, config: GatewaySettings, scope: str, batch_id: str, request_id: str
) -> int:
    """Runs the failed items again: a failed article as a new article (same request), a failed
    publish as a new publish of the same article. Returns how many."""
    with exclusive(store, batch_id):
        return _retry(store, config, scope, batch_id, request_id)


def _retry(
    store: ArticleStore, config: GatewaySettings, scope: str, batch_id: str, request_id: str
) -> int:
    _finish(store, config, batch_id)  # the last round's end first, if a crash left it
    found = record.fields(store, batch_id)
    if found.get("status") == "cancelled":
        raise Conflict(f"batch {batch_id} was cancelled; there is nothing to retry", param="id")
    ids = record.item_ids(store, batch_id)
    states = record.item_states(store, ids)
    failed_articles = [k for k, s in enumerate(states) if s.status == "failed"]
    failed_publishes = [
        k
        for k, s in enumerate(states)
        if s.status == "succeeded" and s.publish is not None and s.publish.state == "failed"
    ]
    if not failed_articles and not failed_publishes:
        raise Conflict(f"batch {batch_id} has no failed items to retry", param="id")
    # The new work first, the batch `running` after: a pass in between finds the batch ended
    # and finished, and leaves it.
    for k in failed_articles:
        _renew(store, scope, batch_id, k, ids[k], request_id)
    for k in failed_publishes:
        target = states[k].target
        kept = load_record(store, ids[k], target) if target else None
        if kept is not None:
            enqueue_publish(store, config, ids[k], same_options(kept), request_id)
    pipe = store.redis.pipeline()
    pipe.hincrby(record.key(batch_id), "retries", 1)
    pipe.hset(record.key(batch_id), "status", "running")
    pipe.hdel(record.key(batch_id), "finished")
    pipe.persist(record.key(batch_id))
    pipe.persist(record.items_key(batch_id))
    pipe.sadd(record.RUNNING, batch_id)
    pipe.execute()
    if failed_articles:
        store.redis.sadd(record.WAITING_KEYS, scope)
        dispatch(store, config, scope)
    logger.info(
        "batch %s: retrying %d articles and %d publishes",
        batch_id,
        len(failed_articles),
        len(failed_publishes),
    )
    return len(failed_articles) + len(failed_publishes)


def _renew(
    store: ArticleStore, scope: str, batch_id: str, index: int, old_id: str, request_id: str
) -> None:
    fields = store.fields(old_id)
    request = ArticleRequest.model_validate(json.loads(fields["request"]))
    new_id = "art_" + secrets.token_hex(12)
    values = jobs.record_fields(request, request_id, scope)
    values["batch"] = json.loads(fields["batch"])
    values["waiting"] = True
    store.create(new_id, values, active=False)
    earlier = json.loads(store.redis.hget(record.key(batch_id), f"earlier:{index}") or "[]")
    pipe = store.redis.pipeline()
    pipe.hset(record.key(batch_id), f"earlier:{index}", json.dumps([*earlier, old_id]))
    pipe.lset(record.items_key(batch_id), index, new_id)
    pipe.rpush(record.waiting_key(scope), new_id)
    pipe.execute()
    logger.info("batch %s: item %d runs again as %s (was %s)", batch_id, index, new_id, old_id)


def release_claim(store: ArticleStore, scope: str, key: str | None, batch_id: str) -> None:
    """After a failed creation, a retry with the same Idempotency-Key must not replay it."""
    if key is not None:
        with contextlib.suppress(RedisError):
            store.release_idempotency(idempotency_scope(scope), key, batch_id)


def idempotency_scope(scope: str) -> str:
    """Batch keys are their own namespace: an Idempotency-Key used for an article and for a
    batch names two things."""
    return f"{scope}:batches"
