"""Prometheus metrics of the gateway: what it admits, and the queue state read from Redis.

Jobs run in worker processes, which nobody scrapes, so the queue and worker gauges are read from
Redis (RQ's own registries) each time /metrics is scraped, by whichever gateway answers; so are
the publishing counts the workers keep there (services.gateway.publish.metrics).
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge
from rq import Queue, Worker

from services.gateway.batches.record import WAITING_KEYS, waiting_key
from services.gateway.publish.metrics import PublishCollector
from services.gateway.store import ArticleStore

ARTICLES_CREATED = Counter(
    "articleforge_gateway_articles_created_total", "Articles accepted by POST /v1/articles."
)
REJECTED = Counter(
    "articleforge_gateway_rejected_total",
    "Article requests refused with 429, by reason (rate_limit, queue_full).",
    ["reason"],
)
ACTIVE = Gauge("articleforge_gateway_active_articles", "Articles queued or in progress.")
QUEUE_LENGTH = Gauge(
    "articleforge_gateway_queue_length", "Jobs waiting in each RQ queue.", ["queue"]
)
FAILED_JOBS = Gauge(
    "articleforge_gateway_failed_jobs", "Jobs in each RQ queue's failed registry.", ["queue"]
)
CANCELLED_JOBS = Gauge(
    "articleforge_gateway_cancelled_jobs",
    "Jobs in each RQ queue's cancelled registry: dropped or stopped by a cancel (never counted "
    "as failed).",
    ["queue"],
)
WORKERS = Gauge("articleforge_gateway_workers", "RQ workers registered in Redis.")
BATCHES_CREATED = Counter(
    "articleforge_gateway_batches_created_total", "Batches accepted by POST /v1/batches."
)
BATCH_ITEMS_WAITING = Gauge(
    "articleforge_gateway_batch_items_waiting",
    "Batch items waiting for one of their key's slots (ARTICLEFORGE_BATCH_SLOTS_PER_KEY).",
)
PUBLISH = PublishCollector()
REGISTRY.register(PUBLISH)


def refresh(store: ArticleStore, queues: tuple[str, ...]) -> None:
    ACTIVE.set(store.active_count())
    for name in queues:
        queue = Queue(name, connection=store.redis)
        QUEUE_LENGTH.labels(name).set(queue.count)
        FAILED_JOBS.labels(name).set(queue.failed_job_registry.count)
        CANCELLED_JOBS.labels(name).set(queue.canceled_job_registry.count)
    WORKERS.set(Worker.count(connection=store.redis))
    scopes = [raw.decode() for raw in store.redis.smembers(WAITING_KEYS)]
    BATCH_ITEMS_WAITING.set(sum(int(store.redis.llen(waiting_key(s))) for s in scopes))
    PUBLISH.load(store.redis)
