"""The publish job: one RQ job per article and target, with retries, and its record.

``enqueue_publish`` claims the article's publish slot for the target (a Redis key with a
lifetime: one publish at a time per article and target; a request meanwhile gets the current
state back), writes the record as `queued` and queues ``publish_job``. The job uploads what is
missing, writes the post, and notes every remote change in the record as it goes (Redis field
``publish:{target}`` and ``publish/{id}/{target}.json`` in the storage), so a retry resumes
where the last attempt stopped and a republish updates the same post with the same media.

Failures (``on_publish_failure``): a 429, a 5xx or a transport error is retried after each of
ARTICLEFORGE_PUBLISH_RETRY_INTERVALS; a CMS 4xx fails at once. Either way the article itself is
untouched: only the record turns `failed`, `article.publish_failed` is sent, and the slot is
free for another POST /v1/articles/{id}/publish.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Callback, Queue, Retry
from rq.job import Job

from services.common.errors import InvalidRequest, Unprocessable
from services.gateway.batches import links
from services.gateway.config import GatewaySettings
from services.gateway.job_base import (
    ARTICLES_QUEUE,
    LOST,
    adopt_request_id,
    runs_again,
    settings,
    store_for,
)
from services.gateway.publish import metrics
from services.gateway.publish.common import (
    PublishRecord,
    PublishTransient,
    Target,
    error_info,
    now_iso,
)
from services.gateway.publish.ghost import Ghost
from services.gateway.publish.schemas import PublishInfo, PublishOptions
from services.gateway.publish.wordpress import WordPress
from services.gateway.schemas import Article
from services.gateway.store import ArticleStore, article_key
from services.gateway.views import status_view
from services.gateway.webhook_jobs import enqueue_event, note_batch_item

logger = logging.getLogger(__name__)

# Revisions committed while a publish ran are published by the same job, at most this often.
MAX_ROUNDS = 3


def job_id(article_id: str, target: str) -> str:
    return f"{article_id}-publish-{target}"


def job_timeout(config: GatewaySettings) -> int:
    # Up to 8 uploads, 10 tags, the post and a few lookups, each bounded by the timeout.
    return int(config.publish_timeout_seconds * 25) + 60


def check_target(config: GatewaySettings, target: str, param: str) -> None:
    configured = config.publish_targets()
    if target not in configured:
        known = "wordpress (ARTICLEFORGE_PUBLISH_WORDPRESS_URL, _USER, _APP_PASSWORD) or ghost "
        known += "(ARTICLEFORGE_PUBLISH_GHOST_URL, _ADMIN_KEY)"
        raise InvalidRequest(
            f"{param} must be a publishing target configured on this gateway "
            f"({', '.join(configured) or 'none is'}); got {target!r}. Targets: {known}",
            param=param,
        )


def check_publish(config: GatewaySettings, options: PublishOptions, prefix: str = "") -> None:
    """The target is configured, and a schedule lies ahead when asked for (the article may
    finish after it; the job then publishes at once). The time is checked here, at the request,
    not in the model, which stored requests re-read long after their time."""
    check_target(config, options.target, f"{prefix}target")
    param = f"{prefix}at"
    if options.at is not None and options.at <= datetime.now(UTC):
        raise Unprocessable(
            f"{param} must be in the future (now is {now_iso()}); got {options.at_utc()}",
            param=param,
        )


def make_target(config: GatewaySettings, target: str) -> Target:
    if target == "wordpress":
        assert config.publish_wordpress_url and config.publish_wordpress_user
        return WordPress(
            config.publish_wordpress_url,
            config.publish_wordpress_user,
            config.publish_wordpress_app_password or "",
            config.publish_timeout_seconds,
        )
    if target == "ghost":
        assert config.publish_ghost_url and config.publish_ghost_admin_key
        return Ghost(
            config.publish_ghost_url, config.publish_ghost_admin_key, config.publish_timeout_seconds
        )
    raise ValueError(f"unknown publishing target {target!r}")


# --- the record ---


def records_prefix(article_id: str) -> str:
    article_key(article_id)  # checks the id
    return f"publish/{article_id}/"


def record_key(article_id: str, target: str) -> str:
    return f"{records_prefix(article_id)}{target}.json"


def load_record(store: ArticleStore, article_id: str, target: str) -> PublishRecord | None:
    """Redis first, then the stored copy (which outlives the Redis record)."""
    raw = store.redis.hget(store.key(article_id), f"publish:{target}")
    if raw is not None:
        return PublishRecord.model_validate_json(raw)
    kept = store.blobs.get(record_key(article_id, target))
    return None if kept is None else PublishRecord.model_validate_json(kept)


def save_record(store: ArticleStore, article_id: str, record: PublishRecord) -> None:
    text = record.model_dump_json()
    store.blobs.put(record_key(article_id, record.target), text.encode())
    key = store.key(article_id)
    if store.redis.exists(key):  # an expired record is not brought back half-made
        store.redis.hset(key, f"publish:{record.target}", text)


# `{article_id}:{target}` of every publish queued or running: the lost-job supervisor
# (services.gateway.worker.requeue_lost_jobs) looks after their jobs, as after the stages'.
PUBLISHING = "af:publishing"


def lock_key(article_id: str, target: str) -> str:
    return f"{ArticleStore.key(article_id)}:publishing:{target}"


def _release(store: ArticleStore, article_id: str, target: str) -> None:
    pipe = store.redis.pipeline(transaction=True)
    pipe.delete(lock_key(article_id, target))
    pipe.srem(PUBLISHING, f"{article_id}:{target}")
    pipe.execute()


def _refresh_disk_copy(store: ArticleStore, article_id: str) -> None:
    """The finished article in the storage shows the publish state too (it is what GET serves
    once the Redis record has expired)."""
    fields = store.fields(article_id)
    if fields.get("status") == "succeeded":
        store.save_article(status_view(article_id, fields))
        return
    found = store.load_article_with_owner(article_id)
    if found is not None:
        status, owner = found
        records = {}
        for key in store.blobs.list(records_prefix(article_id)):
            kept = store.blobs.get(key)
            if key.endswith(".json") and kept is not None:
                name = key.rsplit("/", 1)[1].removesuffix(".json")
                records[name] = PublishRecord.model_validate_json(kept).info()
        store.save_article(status.model_copy(update={"publish": records}), owner)


def _png(store: ArticleStore, article_id: str, image_id: str) -> bytes:
    png = store.load_image(image_id)
    if png is None:
        raise InvalidRequest(f"article {article_id}: its image {image_id} is not in the storage")
    return png


def current_article(store: ArticleStore, article_id: str) -> Article | None:
    raw = store.redis.hget(store.key(article_id), "article")
    if raw is not None:
        return Article.model_validate_json(raw)
    status = store.load_article(article_id)
    return None if status is None else status.article


# --- queueing ---


def enqueue_publish(
    store: ArticleStore,
    config: GatewaySettings,
    article_id: str,
    options: PublishOptions,
    request_id: str = "",
) -> PublishInfo:
    """Queues a publish unless one is queued or running for this article and target; returns
    the record's public state either way."""
    target = options.target
    intervals = config.publish_retry_intervals
    hold = job_timeout(config) * (len(intervals) + 1) + sum(intervals) + 60
    record = load_record(store, article_id, target) or PublishRecord(
        target=target, state="queued", status=options.status
    )
    if not store.redis.set(lock_key(article_id, target), request_id or "1", nx=True, ex=hold):
        return record.info()
    store.redis.sadd(PUBLISHING, f"{article_id}:{target}")
    record = record.model_copy(
        update={
            "state": "queued",
            "status": options.status,
            "at": options.at_utc(),
            "attempts": 0,
            "error": None,
            "requested_at": now_iso(),
            "seq": record.seq + 1,
        }
    )
    save_record(store, article_id, record)
    try:
        Queue(ARTICLES_QUEUE, connection=store.redis).enqueue(
            publish_job,
            article_id,
            target,
            job_id=job_id(article_id, target),
            job_timeout=job_timeout(config),
            result_ttl=3600,
            failure_ttl=config.result_ttl_seconds,
            retry=Retry(max=len(intervals), interval=intervals) if intervals else None,
            on_failure=Callback(on_publish_failure),
            meta={
                "article_id": article_id,
                "stage": "publish",
                "target": target,
                "request_id": request_id,
            },
        )
    except RedisError:
        _release(store, article_id, target)
        raise
    logger.info("article %s: publish to %s queued (%s)", article_id, target, options.status)
    return record.info()


def same_options(record: PublishInfo) -> PublishOptions:
    """The options of the publish ``record`` shows, for publishing the same post again (a new
    revision, a link, a retry): its status, and its schedule, if any."""
    return PublishOptions(target=record.target, status=record.status, at=record.at)


def republish_after_revision(store: ArticleStore, config: GatewaySettings, article_id: str) -> None:
    """A new revision goes to every target the article was published to (the same post)."""
    for target in config.publish_targets():
        record = load_record(store, article_id, target)
        if record is not None and record.post_id is not None:
            enqueue_publish(store, config, article_id, same_options(record))


# --- the job ---


def publish_job(article_id: str, target: str) -> None:
    config = settings()
    store = store_for(config)
    adopt_request_id(store, article_id)
    record = load_record(store, article_id, target)
    if record is None:
        logger.warning(
            "article %s: publish record for %s is gone; nothing to do", article_id, target
        )
        _release(store, article_id, target)
        return
    if target not in config.publish_targets():
        raise InvalidRequest(f"this worker has no settings for the publishing target {target!r}")
    record.state, record.attempts = "publishing", record.attempts + 1
    save_record(store, article_id, record)
    begun = time.monotonic()
    client = make_target(config, target)
    try:
        for _ in range(MAX_ROUNDS):
            article = current_article(store, article_id)
            if article is None:
                raise InvalidRequest(f"article {article_id} has no finished article to publish")
            pngs = {image.id: _png(store, article_id, image.id) for image in article.images}
            shown, record.links = links.plan(store, article, target)
            record = client.publish(
                shown, pngs, record, lambda r: save_record(store, article_id, r)
            )
            record.revision = article.revision
            save_record(store, article_id, record)
            latest = current_article(store, article_id)
            if latest is None or latest.revision == article.revision:
                break
            logger.info(
                "article %s: revision %d came meanwhile; publishing it", article_id, latest.revision
            )
    finally:
        close = getattr(client, "close", None)
        if close is not None:
            close()
    record.state, record.error, record.published_at = "published", None, now_iso()
    save_record(store, article_id, record)
    _release(store, article_id, target)
    metrics.attempt(store.redis, target, "ok", time.monotonic() - begun)
    metrics.finished(store.redis, target, "published", record.attempts)
    _refresh_disk_copy(store, article_id)
    _relink(store, config, article_id, record)
    logger.info(
        "article %s: published to %s as post %s (%s)",
        article_id,
        target,
        record.post_id,
        record.url,
    )
    _announce(store, config, article_id, record, "article.published")


def _relink(
    store: ArticleStore, config: GatewaySettings, article_id: str, record: PublishRecord
) -> None:
    """`link_related`: the batch's posts that mention this one get its URL (published again),
    and this post again if a post it mentions got a URL while it was written. After the slot is
    released, so that one of the two always sees the other (docs: batches.links)."""
    others = links.siblings(store, article_id)
    if others is None:  # not a batch item with `link_related`
        return
    again = links.to_relink(store, article_id, others, record.target, record.url)
    if links.stale(store, record, record.target):
        again.append(article_id)
    for other in again:
        kept = load_record(store, other, record.target)
        if kept is not None:
            enqueue_publish(store, config, other, same_options(kept))
            logger.info("article %s: published again for its links to %s", other, article_id)


def _announce(
    store: ArticleStore, config: GatewaySettings, article_id: str, record: PublishRecord, event: str
) -> None:
    note_batch_item(store, article_id)
    kind = event.rsplit(".", 1)[-1]
    enqueue_event(store, config, article_id, event, f"{record.target}-{record.seq}-{kind}")


def on_publish_failure(
    job: Job, connection: Redis, exc_type: type[BaseException], value: BaseException, tb: Any
) -> None:
    """RQ calls this for every failed attempt (and ``worker.on_horse_killed`` for a killed work
    horse): the publish is retried, or its record fails; the article itself stays as it is."""
    config = settings()
    store = store_for(config, connection)
    article_id, target = job.meta["article_id"], job.meta["target"]
    record = load_record(store, article_id, target)
    seconds = 0.0
    if job.started_at is not None:  # the attempt's time, for the duration histogram
        started = job.started_at.replace(tzinfo=job.started_at.tzinfo or UTC)
        seconds = (datetime.now(UTC) - started).total_seconds()
    if runs_again(job, exc_type, (PublishTransient, *LOST)):
        metrics.attempt(store.redis, target, "retried", seconds)
        logger.warning(
            "article %s: publish to %s failed (%s); retrying (%d left)",
            article_id,
            target,
            value,
            job.retries_left,
        )
        if record is not None:
            record.state, record.error = "queued", error_info(value, job.retries_left or 0)
            save_record(store, article_id, record)
        return
    logger.error("article %s: publish to %s failed: %s", article_id, target, value)
    _release(store, article_id, target)
    metrics.attempt(store.redis, target, "failed", seconds)
    metrics.finished(store.redis, target, "failed", record.attempts if record else 1)
    if record is None:
        return
    record.state, record.error = "failed", error_info(value)
    save_record(store, article_id, record)
    _refresh_disk_copy(store, article_id)
    _announce(store, config, article_id, record, "article.publish_failed")
