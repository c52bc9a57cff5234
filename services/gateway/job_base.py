"""What every RQ job of the gateway needs: the queues, the settings, the store, the backends, the
options a job is queued with, and the rule for when a failed job runs again.

The bottom of the job stack. Above it, each kind of job is one module that owns its jobs, its
queueing and its failure callback (RQ's per-job ``on_failure``): ``webhook_jobs`` (the signed
deliveries), ``publish.job`` (publishing into a CMS), ``jobs`` (the article stages) and
``editorial`` (outline review and regenerations). Each imports only the ones before it:

    job_base -> webhook_jobs -> publish.job -> jobs -> editorial -> worker, routes

tests/gateway/test_import_graph.py keeps the gateway's import graph free of cycles.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr
from redis import Redis
from redis.exceptions import RedisError
from rq import Callback, Retry
from rq.exceptions import AbandonedJobError
from rq.job import Job

from services.common.logging import request_id_var
from services.gateway.clients import HttpImage, HttpText, ServiceClient
from services.gateway.config import GatewaySettings
from services.gateway.openai_backends import OpenAIImage, OpenAIText
from services.gateway.storage import StorageError
from services.gateway.store import ArticleStore

ARTICLES_QUEUE = "articles"
IMAGES_QUEUE = "images"
# Failures that are no fault of the job itself: its worker died, Redis went down (or froze
# past the socket timeout), or the object store failed past its own retries. Only these are
# run again.
LOST = (AbandonedJobError, RedisError, StorageError)

# What RQ calls when a job fails: (job, connection, exc_type, exc_value, traceback).
FailureCallback = Callable[[Job, Redis, type, BaseException, Any], None]


@lru_cache(maxsize=1)
def settings() -> GatewaySettings:
    return GatewaySettings()


def redis_connection(config: GatewaySettings) -> Redis:
    return Redis.from_url(config.redis_url)


def store_for(config: GatewaySettings, connection: Redis | None = None) -> ArticleStore:
    """The article store on ``connection`` (a failure callback's), or on a new one."""
    redis = connection if connection is not None else redis_connection(config)
    return ArticleStore(redis, config.storage(), config.result_ttl_seconds)


def adopt_request_id(store: ArticleStore, article_id: str) -> None:
    """Log lines of this job carry the request id of the POST that created the article."""
    request_id = store.get(article_id, "request_id")
    if request_id:
        request_id_var.set(str(request_id))


# --- the services, as each job reaches them ---


def _client(
    config: GatewaySettings, name: str, urls: list[str], api_key: str | None, openai: bool
) -> ServiceClient:
    if openai:  # an OpenAI base URL, as the SDK takes it: `/v1` unless a path is given
        urls = [url if urlsplit(url).path.strip("/") else url + "/v1" for url in urls]
    return ServiceClient(
        name,
        urls,
        config.service_timeout_seconds,
        config.service_attempts,
        config.service_backoff_seconds,
        api_key=api_key,
        ready_timeout=config.service_ready_timeout_seconds,
        ready_cache=config.service_ready_cache_seconds,
    )


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def text_backend(config: GatewaySettings) -> HttpText | OpenAIText:
    openai = config.text_backend == "openai"
    client = _client(config, "text", config.text_urls(), _secret(config.text_api_key), openai)
    if openai:
        return OpenAIText(client, config.text_openai_model, config.text_openai_stream_usage)
    return HttpText(client)


def image_backend(config: GatewaySettings) -> HttpImage | OpenAIImage:
    openai = config.image_backend == "openai"
    client = _client(config, "image", config.image_urls(), _secret(config.image_api_key), openai)
    if openai:
        return OpenAIImage(client, config.image_openai_model, config.image_openai_extensions)
    return HttpImage(client)


# --- queueing and failing ---


def job_options(
    config: GatewaySettings, job_id: str, meta: dict[str, Any], on_failure: FailureCallback
) -> dict[str, Any]:
    """``enqueue`` arguments of a stage or a regeneration: its id, timeouts, a retry when its
    worker dies (at the queue's front, so that recovered work does not wait behind newer work),
    and the failure callback of the module that owns it."""
    return {
        "job_id": job_id,
        "job_timeout": config.job_timeout_seconds,
        "result_ttl": 3600,
        "failure_ttl": config.result_ttl_seconds,
        "retry": Retry(max=config.stage_retries, enqueue_at_front=True),
        "on_failure": Callback(on_failure),
        "meta": meta,
    }


def runs_again(job: Job, exc_type: type, retried: tuple[type[BaseException], ...] = LOST) -> bool:
    """For a failure callback: True when RQ will run ``job`` again (a ``retried`` failure with
    retries left). Otherwise the failure is final: the service calls inside the job were already
    retried, and a re-run would only repeat the error; RQ reads ``retries_left`` right after the
    callback, so it is set to 0 here."""
    if issubclass(exc_type, retried) and job.retries_left:
        return True
    job.retries_left = 0
    return False
