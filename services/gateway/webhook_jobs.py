"""The webhook jobs: every event of an article, queued once and delivered with RQ's retries.

``enqueue_webhook`` announces the end of an article (`article.succeeded`, `.failed`,
`.cancelled`) under the fixed job id ``{id}-webhook``; ``enqueue_event`` announces anything
else (`article.awaiting_review`, `.updated`, `.published`, `.publish_failed`) once per article
and suffix. Either way a second enqueue of the same event finds the job and leaves it, and the
``webhook-id`` is as stable, so a receiver can drop a redelivery. Delivery itself (signing, the
SSRF guard) is ``services.gateway.webhooks``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rq import Queue, Retry
from rq.job import Job

from services.gateway.config import GatewaySettings
from services.gateway.job_base import ARTICLES_QUEUE, adopt_request_id, settings, store_for
from services.gateway.revisions import at_revision
from services.gateway.store import ArticleStore
from services.gateway.views import status_view
from services.gateway.webhooks import deliver

logger = logging.getLogger(__name__)


def _enqueue(
    store: ArticleStore,
    config: GatewaySettings,
    article_id: str,
    job_id: str,
    function: Callable[..., None],
    *args: Any,
) -> None:
    intervals = config.webhook_retry_intervals
    Queue(ARTICLES_QUEUE, connection=store.redis).enqueue(
        function,
        article_id,
        *args,
        job_id=job_id,
        retry=Retry(max=len(intervals), interval=intervals) if intervals else None,
        job_timeout=int(config.webhook_timeout_seconds) + 30,
        result_ttl=3600,
        meta={"article_id": article_id, "stage": "webhook"},
    )


def _hook_url(store: ArticleStore, config: GatewaySettings, article_id: str) -> str | None:
    """The request's `webhook.url`, else the gateway's ARTICLEFORGE_WEBHOOK_DEFAULT_URL."""
    webhook = (store.get(article_id, "request") or {}).get("webhook")
    return str(webhook["url"]) if webhook else config.webhook_default_url


# Named by path: that module sits above this one.
ITEM_EVENT_JOB = "services.gateway.batches.dispatch.item_event_job"


def note_batch_item(store: ArticleStore, article_id: str) -> None:
    """A batch item ended, or its publish did: its batch frees the slot and checks its own end
    (``batches.dispatch.item_event_job``)."""
    if store.redis.hexists(store.key(article_id), "batch"):
        Queue(ARTICLES_QUEUE, connection=store.redis).enqueue(
            ITEM_EVENT_JOB, article_id, result_ttl=60, meta={"article_id": article_id}
        )


def enqueue_webhook(
    store: ArticleStore, config: GatewaySettings, article_id: str, event: str
) -> None:
    """The article's end (`article.succeeded`, `.failed`, `.cancelled`)."""
    note_batch_item(store, article_id)
    url = _hook_url(store, config, article_id)
    job_id = f"{article_id}-webhook"
    if url is None or Job.exists(job_id, connection=store.redis):
        return  # queued once per article: RQ would overwrite the job and deliver it again
    _enqueue(store, config, article_id, job_id, webhook_job, event, url)


def webhook_job(article_id: str, event: str, url: str) -> None:
    config, store = settings(), store_for(settings())
    adopt_request_id(store, article_id)
    status = store.load_article(article_id) if event == "article.succeeded" else None
    if status is None:
        status = status_view(article_id, store.fields(article_id))
    deliver(config, url, event, article_id, status.model_dump(mode="json"))


def enqueue_event(
    store: ArticleStore,
    config: GatewaySettings,
    article_id: str,
    event: str,
    suffix: str,
    revision: int | None = None,
) -> None:
    """Queues ``event`` once per article and ``suffix`` (its webhook-id is as stable)."""
    url = _hook_url(store, config, article_id)
    job_id = f"{article_id}-webhook-{suffix}"
    if url is None or Job.exists(job_id, connection=store.redis):
        return
    message_id = f"msg_{article_id}_{suffix}"
    _enqueue(store, config, article_id, job_id, event_webhook_job, event, url, message_id, revision)


def event_webhook_job(
    article_id: str, event: str, url: str, message_id: str, revision: int | None
) -> None:
    config, store = settings(), store_for(settings())
    fields = store.fields(article_id)
    status = status_view(article_id, fields) if fields else store.load_article(article_id)
    if status is None:
        logger.warning("article %s: gone before its %s webhook", article_id, event)
        return
    if revision is not None and status.article is not None:
        status = at_revision(store, status, revision)
    deliver(config, url, event, article_id, status.model_dump(mode="json"), message_id)
