"""Settings of the gateway and the workers (they share one class: workers run its jobs)."""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from services.common.config import CommonSettings
from services.gateway.storage import (
    PRESIGNED_MAX_SECONDS,
    Blobs,
    kept_secret,
    open_blobs,
    parse_s3_url,
)


def split_urls(value: str) -> list[str]:
    """A comma-separated list of URLs, blanks dropped, trailing slashes trimmed."""
    return [url.strip().rstrip("/") for url in value.split(",") if url.strip()]


class GatewaySettings(CommonSettings):
    # The queue and status store.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Where the gateway and workers reach the two model services: one URL, or several replicas
    # separated by commas (see the backends block below).
    text_url: str = "http://127.0.0.1:8001"
    image_url: str = "http://127.0.0.1:8002"
    # Articles (JSON) and images (PNG) on disk; survives a Redis restart.
    data_dir: Path = Path("./data")
    # Comma-separated Bearer keys; empty turns auth off (the gateway warns at start-up).
    api_keys: str = ""
    # `whsec_...` secret for signing webhooks; generated at first start and kept in DATA_DIR.
    webhook_secret: str | None = None
    # Allow webhook URLs that resolve to private, loopback or link-local addresses.
    webhook_allow_private: bool = False
    # Where an article's events go when its request names no `webhook.url` (e.g. the CMS
    # plugin that receives every article); a request's own URL wins. Checked like one.
    webhook_default_url: str | None = None
    # Sources (a request's `sources`): URL sources that resolve to private, loopback or
    # link-local addresses are refused (on every redirect hop) unless this is true.
    sources_allow_private: bool = False
    # Comma-separated CIDRs let through although private, e.g. an intranet wiki's
    # `10.20.0.0/16`; everything else stays refused.
    sources_allow_networks: str = ""
    # The User-Agent sources are fetched with, and robots.txt is read for.
    sources_user_agent: str = "articleforge"
    # Ranks a section's passages by BM25 fused with this sentence-embedding model's cosine
    # similarity (services/gateway/sources/embeddings.py; needs the `embeddings` extra):
    # `tiny` (random weights, built offline), a sentence-transformers id or a local folder.
    # Unset: BM25 alone.
    sources_embedding_model: str | None = None
    # Seconds between webhook delivery attempts (RQ Retry); one retry per entry.
    webhook_retry_intervals: Annotated[list[int], NoDecode] = Field(default=[10, 60, 300, 1800])
    # Seconds to wait for a webhook receiver to answer.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    # Article creations per API key per minute (kept in Redis); 0 turns the limit off.
    rate_limit_per_minute: int = Field(default=60, ge=0)
    # Most articles queued or in progress at once; beyond it POST /v1/articles answers 429.
    max_active_articles: int = Field(default=100, ge=1)
    # Most items in one POST /v1/batches (JSON items or CSV rows); more is a 422 on `items`.
    # (The body itself, JSON or CSV, is bounded by ARTICLEFORGE_MAX_BODY_BYTES, as any is.)
    batch_max_items: int = Field(default=500, ge=1, le=10_000)
    # Fairness (docs/api.md, "Batches"): a key's batch items in progress at once. The rest wait,
    # `queued`, outside the active set and the job queues, and start as slots free, so a key's
    # 500-item batch holds at most this many slots, and another key's articles and batches
    # start beside it. Single articles (POST /v1/articles) never wait for a batch slot.
    batch_slots_per_key: int = Field(default=8, ge=1)
    # Batch items one key may have waiting for a slot, across its batches; beyond it POST
    # /v1/batches answers 429.
    batch_max_waiting_per_key: int = Field(default=5000, ge=1)
    # Per-call timeout for the text and image services, in seconds.
    service_timeout_seconds: float = Field(default=300.0, gt=0)
    # Attempts per service call (connection errors and 5xx/429), with exponential backoff.
    service_attempts: int = Field(default=4, ge=1, le=20)
    # First backoff between attempts, in seconds (doubles each time, capped at 30 s).
    service_backoff_seconds: float = Field(default=1.0, ge=0)
    # RQ job timeout for the text stages and for each image, in seconds.
    job_timeout_seconds: int = Field(default=1800, ge=10)
    # How long finished records stay in Redis, in seconds (the JSON stays on disk).
    result_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    # Gateway's Redis socket timeout per command, in seconds: bounds how long a request waits
    # on a frozen Redis before it answers 503 (the SSE poll blocks for at most half of it).
    redis_socket_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    # Gateway's Redis connect timeout, in seconds: bounds a 503 when Redis's host is unreachable.
    redis_connect_timeout_seconds: float = Field(default=1.0, gt=0, le=60)
    # Seconds between the gateway's background Redis pings, which /readyz reports (so /readyz
    # never waits on Redis itself).
    redis_health_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    # Secret that signs image URLs (HMAC-SHA256); generated at first start and kept in DATA_DIR.
    # Server-only: unlike the webhook secret it is never shared with receivers.
    url_signing_secret: str | None = None
    # Lifetime of signed image URLs in articles, in seconds; 0 = they never expire, so a CMS page
    # can embed them for good (URLs are signed once, when the image is made).
    image_url_ttl_seconds: int = Field(default=0, ge=0)
    # Base URL clients use to reach the gateway; image URLs in articles start with it.
    public_url: str = "http://127.0.0.1:8000"
    # Bind address and port of `articleforge serve gateway`.
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8000, ge=1, le=65535)
    # RQ workers that one `articleforge worker` process runs (a pool: each forks its own work
    # horse per job, and a pool worker that dies is started again; ~12 MB each). A job mostly
    # waits on the text and image services, so one host runs many: 32 kept one H100 busy at 64
    # articles at once (4,158 articles/hour; 4 workers gave 2,062), docs/deployment.md says
    # more. `articleforge worker --pool-size` and `up --workers` override it.
    worker_pool_size: int = Field(default=32, ge=1, le=256)
    # Crash recovery (docs/reliability.md): a stage whose worker dies is abandoned at most
    # monitoring interval + heartbeat grace (5 + 15 s) after the kill, and queued again by the
    # next maintenance pass of any worker (measured: running again 20-35 s after the kill).
    # Seconds between a busy worker's heartbeats for its job (RQ's job_monitoring_interval).
    worker_job_monitoring_interval_seconds: int = Field(default=5, ge=1, le=300)
    # Seconds a job outlives a missed heartbeat before it counts as abandoned (RQ fixes 60).
    # Keep it above a few monitoring intervals so a slow but live worker is not declared dead.
    worker_heartbeat_grace_seconds: int = Field(default=15, ge=1, le=3600)
    # Seconds between each worker's RQ maintenance passes: abandoned jobs are re-queued and
    # ready jobs swept then (RQ's default is 600).
    worker_maintenance_interval_seconds: int = Field(default=5, ge=1, le=3600)
    # Re-runs of a stage whose worker died (RQ Retry); a stage that raises is not re-run, since
    # its service calls were already retried (SERVICE_ATTEMPTS).
    stage_retries: int = Field(default=3, ge=1, le=20)
    # Seconds an article with `"review": "outline"` waits in `awaiting_review` for an approval
    # or an edited outline; then it is `cancelled` (checked by the workers' maintenance pass,
    # every ARTICLEFORGE_WORKER_MAINTENANCE_INTERVAL_SECONDS).
    review_timeout_seconds: int = Field(default=24 * 3600, ge=1, le=30 * 24 * 3600)

    # Image previews in article status and events (progress.images[].preview): the image job
    # keeps at most one preview per image per this many milliseconds (the first and the last
    # always), so a fast GPU does not flood the event stream; 0 leaves previews out.
    preview_interval_ms: int = Field(default=500, ge=0, le=60_000)
    # Largest preview kept, in base64 characters. The image service's latent previews are 1/8
    # of the image's size (64x64, up to 17 KB, for 512x512; 128x128 for 1024x1024); a full-size
    # TAESD preview (ARTICLEFORGE_IMAGE_PREVIEW_VAE) is larger and is left out, so an event stays
    # bounded by images x this.
    preview_max_bytes: int = Field(default=128 * 1024, ge=1024, le=4 * 1024 * 1024)

    # --- Backends of the text and image stages (docs/deployment.md, "Backends and replicas") ---
    # Which API the text stages call: `articleforge` (the text service's /v1/generate) or
    # `openai` (/v1/chat/completions of any OpenAI-compatible server: vLLM, TGI, SGLang,
    # Ollama, OpenAI). With `openai`, ARTICLEFORGE_TEXT_URL is the SDK's base URL
    # (http://vllm:8000/v1); a URL without a path gets `/v1`.
    text_backend: Literal["articleforge", "openai"] = "articleforge"
    # The `model` sent to an `openai` text server; unset, the first id of its /v1/models.
    text_openai_model: str | None = Field(default=None, min_length=1, max_length=256)
    # Bearer key for the text server (`openai` backend; also sent to articleforge's if set).
    text_api_key: SecretStr | None = None
    # Ask an `openai` text server for token usage in the stream (`stream_options`); false for a
    # server that refuses the field. Without usage, streamed chunks are counted as tokens.
    text_openai_stream_usage: bool = True
    # Which API the image stage calls: `articleforge` (/v1/images, streamed step progress and
    # previews) or `openai` (/v1/images/generations; no step progress, no previews).
    image_backend: Literal["articleforge", "openai"] = "articleforge"
    # The `model` sent to an `openai` image server; unset, none is sent (the server's default).
    image_openai_model: str | None = Field(default=None, min_length=1, max_length=256)
    # Bearer key for the image server (`openai` backend; also sent to articleforge's if set).
    image_api_key: SecretStr | None = None
    # Send the article's seed, negative prompt, steps and guidance scale along with an `openai`
    # image request (articleforge's own route reads the seed; lenient servers ignore the rest);
    # false for a server that refuses unknown fields, such as api.openai.com.
    image_openai_extensions: bool = True
    # With several replicas: seconds a replica's GET /readyz may take before it counts as down.
    service_ready_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    # With several replicas: seconds a /readyz answer (or a failed call) is trusted before the
    # replica is asked again.
    service_ready_cache_seconds: float = Field(default=2.0, ge=0, le=600)

    @field_validator("text_openai_model", "image_openai_model", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # `ARTICLEFORGE_TEXT_OPENAI_MODEL=` in .env means "not set", as in .env.example.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("text_url", "image_url")
    @classmethod
    def _check_urls(cls, value: str) -> str:
        # The messages leave out the variable's name: pydantic (and the CLI) put it in front.
        urls = split_urls(value)
        if not urls:
            raise ValueError("it is empty; give one URL, or several separated by commas")
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    f"{url!r} is not an http(s) URL with a host (for example http://gpu1:8001)"
                )
            if parts.query or parts.fragment:
                raise ValueError(f"{url!r} must not carry a query or fragment")
            try:
                parts.port  # noqa: B018 (raises on a port out of range)
            except ValueError:
                raise ValueError(f"{url!r} has a bad port") from None
        if len(set(urls)) != len(urls):
            raise ValueError(f"it names the same replica twice: {value}")
        return value

    # --- Object storage (docs/deployment.md, "Storage"; services/gateway/storage.py) ---
    # Where finished articles, images, revisions, sources copies, publish records and the
    # generated secrets are kept: empty = ARTICLEFORGE_DATA_DIR on this host; `s3://bucket` or
    # `s3://bucket/prefix` = an S3-compatible store that every gateway and worker host shares.
    storage_url: str = ""
    # The S3 API's endpoint for a store other than AWS (MinIO, Ceph, R2, ...), e.g.
    # http://minio:9000; unset: AWS's endpoint for the region.
    storage_endpoint_url: str | None = None
    # The endpoint that presigned image URLs name, when clients reach the store at another
    # address than the gateway and workers do; unset: ARTICLEFORGE_STORAGE_ENDPOINT_URL.
    storage_public_endpoint_url: str | None = None
    # The region requests are signed for; unset: boto3's own (AWS_REGION, ~/.aws/config).
    storage_region: str | None = None
    # Access key of the store; unset (with the secret): boto3's own credentials (AWS_* variables,
    # ~/.aws/credentials, an instance or pod role).
    storage_access_key_id: str | None = None
    # The secret of that access key (kept out of logs).
    storage_secret_access_key: SecretStr | None = None
    # `path` (http://host/bucket/key: MinIO and most self-hosted stores), `virtual`
    # (http://bucket.host/key) or `auto` (boto3 picks; virtual on AWS).
    storage_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    # The image URLs in articles: `gateway` (GET /v1/images/{id} with the gateway's signature)
    # or `presigned` (the store's own presigned GET URLs: clients fetch from the store directly;
    # they expire after ARTICLEFORGE_IMAGE_URL_TTL_SECONDS, which must be 1-604800 then).
    storage_image_urls: Literal["gateway", "presigned"] = "gateway"
    # Seconds for one storage call to connect, and to answer.
    storage_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # Attempts per storage call (boto3's standard retries: throttling, 5xx, dropped connections).
    storage_attempts: int = Field(default=3, ge=1, le=20)
    # Seconds between the gateway's background checks of the store (HEAD bucket), which
    # /readyz reports.
    storage_health_interval_seconds: float = Field(default=5.0, gt=0, le=600)
    _blobs: Blobs | None = PrivateAttr(default=None)

    @field_validator(
        "storage_endpoint_url",
        "storage_public_endpoint_url",
        "storage_region",
        "storage_access_key_id",
        "storage_secret_access_key",
        mode="before",
    )
    @classmethod
    def _blank_storage_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, value: str) -> str:
        if value.strip():
            parse_s3_url(value)
        return value.strip()

    @field_validator("storage_endpoint_url", "storage_public_endpoint_url")
    @classmethod
    def _check_storage_endpoint(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    f"{value!r} is not an http(s) URL with a host (for example http://minio:9000)"
                )
        return value

    @model_validator(mode="after")
    def _check_storage(self) -> GatewaySettings:
        if not self.storage_url:
            named = [
                f"ARTICLEFORGE_{name.upper()}"
                for name in (
                    "storage_endpoint_url",
                    "storage_public_endpoint_url",
                    "storage_access_key_id",
                    "storage_secret_access_key",
                )
                if getattr(self, name) is not None
            ]
            if self.storage_image_urls == "presigned":
                named.append("ARTICLEFORGE_STORAGE_IMAGE_URLS=presigned")
            if named:
                raise ValueError(
                    f"{', '.join(named)} set, but ARTICLEFORGE_STORAGE_URL is empty (the files "
                    "stay in ARTICLEFORGE_DATA_DIR): set "
                    "ARTICLEFORGE_STORAGE_URL=s3://bucket/prefix or unset them"
                )
        if (self.storage_access_key_id is None) != (self.storage_secret_access_key is None):
            raise ValueError(
                "ARTICLEFORGE_STORAGE_ACCESS_KEY_ID and ARTICLEFORGE_STORAGE_SECRET_ACCESS_KEY go "
                "together: set both, or neither to use boto3's own credentials"
            )
        ttl = self.image_url_ttl_seconds
        if self.storage_image_urls == "presigned" and not 1 <= ttl <= PRESIGNED_MAX_SECONDS:
            raise ValueError(
                "ARTICLEFORGE_STORAGE_IMAGE_URLS=presigned needs "
                f"ARTICLEFORGE_IMAGE_URL_TTL_SECONDS between 1 and {PRESIGNED_MAX_SECONDS} "
                "(a presigned URL lasts at most 7 days), "
                f"got {ttl}; set it, or keep the gateway's URLs (which may never expire)"
            )
        return self

    def storage(self) -> Blobs:
        """The store of the kept files, chosen by ARTICLEFORGE_STORAGE_URL (made once)."""
        if self._blobs is None:
            self._blobs = open_blobs(self)
        return self._blobs

    # --- Publishing (services/gateway/publish): WordPress and Ghost targets ---
    # A target is configured when its URL and credentials are all set; an article request's
    # `publish.target` and POST /v1/articles/{id}/publish accept only configured targets.
    # WordPress site URL, without /wp-json (the REST API is found at {url}/wp-json/, or at
    # {url}/?rest_route=/ on a site with plain permalinks).
    publish_wordpress_url: str | None = None
    # WordPress user that owns the application password (Users -> Profile -> Application
    # Passwords); it needs the `edit_posts`, `upload_files` and `manage_categories` capabilities.
    publish_wordpress_user: str | None = None
    # The application password, as WordPress shows it (spaces are ignored by WordPress).
    publish_wordpress_app_password: str | None = None
    # Ghost site URL (the Admin API is at {url}/ghost/api/admin/).
    publish_ghost_url: str | None = None
    # Ghost Admin API key, `id:secret` as Ghost shows it (Settings -> Integrations); the secret
    # is hex.
    publish_ghost_admin_key: str | None = None
    # Seconds to wait for one CMS request (an image upload included).
    publish_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    # Seconds between publish attempts after a 429, a 5xx or a transport error (RQ Retry); one
    # retry per entry. A 4xx from the CMS fails the publish at once, with the CMS's message.
    publish_retry_intervals: Annotated[list[int], NoDecode] = Field(default=[5, 30, 120, 600])

    @field_validator("webhook_default_url", mode="before")
    @classmethod
    def _default_hook(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None  # `ARTICLEFORGE_WEBHOOK_DEFAULT_URL=` means none
        if isinstance(value, str):
            parts = urlsplit(value.strip())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{value!r} is not an http(s) URL with a host")
            return value.strip()
        return value

    @field_validator("sources_allow_networks")
    @classmethod
    def _check_networks(cls, value: str) -> str:
        for network in (n.strip() for n in value.split(",")):
            if not network:
                continue
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(
                    f"{network!r} is not a network (CIDR such as 10.20.0.0/16 or 127.0.0.1/32)"
                ) from None
        return value

    @field_validator("webhook_retry_intervals", "publish_retry_intervals", mode="before")
    @classmethod
    def _split_intervals(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [int(v) for v in text.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> GatewaySettings:
        if self.webhook_secret is not None and not self.webhook_secret.startswith("whsec_"):
            raise ValueError(
                "ARTICLEFORGE_WEBHOOK_SECRET must start with `whsec_` (Standard Webhooks); "
                "unset it to have one generated"
            )
        if self.worker_heartbeat_grace_seconds < self.worker_job_monitoring_interval_seconds:
            raise ValueError(
                "ARTICLEFORGE_WORKER_HEARTBEAT_GRACE_SECONDS "
                f"({self.worker_heartbeat_grace_seconds}) must be at least "
                "ARTICLEFORGE_WORKER_JOB_MONITORING_INTERVAL_SECONDS "
                f"({self.worker_job_monitoring_interval_seconds}): a worker one heartbeat late "
                "would count as dead and its stage would run twice"
            )
        if self.publish_ghost_admin_key is not None:
            key_id, _, secret = self.publish_ghost_admin_key.partition(":")
            try:
                bytes.fromhex(secret)
            except ValueError:
                secret = ""
            if not key_id or not secret:
                raise ValueError(
                    "ARTICLEFORGE_PUBLISH_GHOST_ADMIN_KEY must be Ghost's Admin API key, "
                    "`id:secret` with a hex secret (Settings -> Integrations -> Admin API key)"
                )
        for name, values in (
            (
                "WORDPRESS",
                (
                    self.publish_wordpress_url,
                    self.publish_wordpress_user,
                    self.publish_wordpress_app_password,
                ),
            ),
            ("GHOST", (self.publish_ghost_url, self.publish_ghost_admin_key)),
        ):
            if any(values) and not all(values):
                needed = (
                    "_URL, _USER and _APP_PASSWORD"
                    if name == "WORDPRESS"
                    else "_URL and _ADMIN_KEY"
                )
                raise ValueError(
                    f"publishing to {name.lower()} needs all of ARTICLEFORGE_PUBLISH_{name}"
                    f"{needed}; set the missing ones or unset them all"
                )
        return self

    def text_urls(self) -> list[str]:
        """The text replicas, as configured (paths kept)."""
        return split_urls(self.text_url)

    def image_urls(self) -> list[str]:
        return split_urls(self.image_url)

    def publish_targets(self) -> list[str]:
        """The publishing targets whose settings are complete, in a fixed order."""
        targets = []
        if self.publish_wordpress_url and self.publish_wordpress_user:
            targets.append("wordpress")
        if self.publish_ghost_url and self.publish_ghost_admin_key:
            targets.append("ghost")
        return targets

    def publish_secrets(self) -> list[str]:
        """The CMS credentials (and the object store's secret key), for log redaction."""
        values = [self.publish_wordpress_app_password, self.publish_ghost_admin_key]
        if self.storage_secret_access_key is not None:
            values.append(self.storage_secret_access_key.get_secret_value())
        if self.publish_ghost_admin_key:
            values.append(self.publish_ghost_admin_key.partition(":")[2])
        return [v for v in values if v]

    def keys(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    def resolved_webhook_secret(self) -> str:
        """The configured secret, or the one kept in the storage (created on first use)."""
        if self.webhook_secret:
            return self.webhook_secret
        return kept_secret(
            self.storage(),
            "webhook_secret",
            lambda: "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
        )

    @property
    def source_networks(self) -> list[str]:
        return [n.strip() for n in self.sources_allow_networks.split(",") if n.strip()]
