"""Article records in Redis, finished articles and PNGs in the storage, progress as a Redis
stream.

Each article is one Redis hash (``af:article:{id}``): fields are written by whichever job owns
them, so concurrent image jobs never overwrite each other. Status changes into a terminal state
go through a Lua check-and-set, so a late job can never turn `cancelled` back into `failed`.
The assembled article is also written to the storage (``articles/{id}.json`` in DATA_DIR or
the S3 bucket: services/gateway/storage.py), with its owner (the key scope that created it): it
survives a Redis restart or outage, and GET falls back to it after checking the owner.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import LockError, RedisError

from services.gateway.schemas import TERMINAL, ArticleStatus
from services.gateway.storage import Blobs, LocalBlobs
from services.gateway.views import STAGE_ORDER, status_view

PREFIX = "af"
ARTICLE_ID = re.compile(r"^art_[0-9a-f]{24}$")
IMAGE_ID = re.compile(r"^img_[0-9a-f]{24}$")
STREAM_MAXLEN = 2000

# Sets the status unless the record is already terminal; returns 1 when it changed.
_SET_STATUS = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return 0 end
if current == 'succeeded' or current == 'failed' or current == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


# Sets the status only if it is still ARGV[1] (an outline review ending in an approval or an
# expiry, whichever comes first); returns 1 when it changed.
_SWAP_STATUS = """
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


# Stores image ARGV[1], drops its step preview (the image replaces it), and sets images_done to
# the number of image:k fields present.
_IMAGE_DONE = """
redis.call('HSET', KEYS[1], 'image:' .. ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[1], 'image_preview:' .. ARGV[1])
local total = tonumber(redis.call('HGET', KEYS[1], 'images_total') or '0')
local done = 0
for k = 0, total - 1 do
  if redis.call('HEXISTS', KEYS[1], 'image:' .. k) == 1 then done = done + 1 end
end
redis.call('HSET', KEYS[1], 'images_done', done)
return done
"""


# Sets stage ARGV[2] (and status ARGV[1]) unless the record is terminal or already at a later
# stage: stages listed in order from ARGV[3]. Returns 1 when it changed.
_ADVANCE_STAGE = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return 0 end
if current == 'succeeded' or current == 'failed' or current == 'cancelled' then return 0 end
local stage = redis.call('HGET', KEYS[1], 'stage')
local at, to = 0, 0
for i = 3, #ARGV do
  if ARGV[i] == stage then at = i end
  if ARGV[i] == ARGV[2] then to = i end
end
if at > to then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'stage', ARGV[2])
return 1
"""


def image_key(image_id: str) -> str:
    if not IMAGE_ID.match(image_id):  # nothing but our own ids reaches the storage
        raise ValueError(f"not an image id: {image_id!r}")
    return f"images/{image_id}.png"


def article_key(article_id: str) -> str:
    if not ARTICLE_ID.match(article_id):
        raise ValueError(f"not an article id: {article_id!r}")
    return f"articles/{article_id}.json"


def sources_key(article_id: str) -> str:
    if not ARTICLE_ID.match(article_id):
        raise ValueError(f"not an article id: {article_id!r}")
    return f"sources/{article_id}.json"


class ArticleStore:
    def __init__(self, redis: Redis, blobs: Blobs | Path, ttl_seconds: int = 7 * 24 * 3600) -> None:
        # redis-py's annotations mix sync/async and bytes/str replies; replies here are bytes.
        self.redis: Any = redis
        # The settings' storage (GatewaySettings.storage()); a folder is DATA_DIR's.
        self.blobs: Blobs = LocalBlobs(blobs) if isinstance(blobs, Path) else blobs
        self.ttl = ttl_seconds
        self._set_status = redis.register_script(_SET_STATUS)
        self._image_done = redis.register_script(_IMAGE_DONE)
        self._swap_status = redis.register_script(_SWAP_STATUS)
        self._advance_stage = redis.register_script(_ADVANCE_STAGE)

    # --- keys ---

    @staticmethod
    def key(article_id: str) -> str:
        return f"{PREFIX}:article:{article_id}"

    @staticmethod
    def events_key(article_id: str) -> str:
        return f"{PREFIX}:article:{article_id}:events"

    INDEX = f"{PREFIX}:articles"
    ACTIVE = f"{PREFIX}:active"

    # --- records ---

    def create(self, article_id: str, fields: dict[str, Any], active: bool = True) -> None:
        """A new `queued` record. ``active=False`` keeps it out of the active set (a batch item
        waiting for a slot: services.gateway.batches.dispatch adds it when it starts)."""
        created = time.time()
        mapping = {k: json.dumps(v) for k, v in fields.items()}
        mapping.update(
            status="queued", stage="queued", tokens="0", images_done="0", created=str(created)
        )
        pipe = self.redis.pipeline()
        pipe.hset(self.key(article_id), mapping=mapping)
        pipe.zadd(self.INDEX, {article_id: created})
        if active:
            pipe.sadd(self.ACTIVE, article_id)
        pipe.execute()
        self.publish(article_id)

    def fields(self, article_id: str) -> dict[str, str]:
        raw = self.redis.hgetall(self.key(article_id))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def get(self, article_id: str, name: str) -> Any:
        value = self.redis.hget(self.key(article_id), name)
        return None if value is None else json.loads(value)

    def put(self, article_id: str, **values: Any) -> None:
        self.redis.hset(self.key(article_id), mapping={k: json.dumps(v) for k, v in values.items()})

    def status(self, article_id: str) -> str | None:
        value = self.redis.hget(self.key(article_id), "status")
        return None if value is None else value.decode()

    def is_over(self, article_id: str) -> bool:
        """True once the article reached a terminal state (a job should stop)."""
        return self.status(article_id) in TERMINAL

    def transition(self, article_id: str, status: str, **extra: str) -> bool:
        """Moves to ``status`` unless already terminal; publishes a progress event."""
        args: list[str] = [status]
        for k, v in extra.items():
            args += [k, v]
        if status in TERMINAL:
            args += ["finished", str(time.time())]
        changed = bool(self._set_status(keys=[self.key(article_id)], args=args))
        if changed:
            self._changed(article_id, status)
        return changed

    def swap(self, article_id: str, expected: str, status: str, **extra: str) -> bool:
        """Moves from ``expected`` to ``status``, or does nothing when the status is another."""
        args: list[str] = [expected, status]
        for k, v in extra.items():
            args += [k, v]
        if status in TERMINAL:
            args += ["finished", str(time.time())]
        changed = bool(self._swap_status(keys=[self.key(article_id)], args=args))
        if changed:
            self._changed(article_id, status)
        return changed

    def _changed(self, article_id: str, status: str) -> None:
        if status in TERMINAL:
            self.refresh_ttl(article_id)
        self.publish(article_id)

    def refresh_ttl(self, article_id: str) -> None:
        """A finished record lives ``ttl`` more seconds from now (edits renew it)."""
        pipe = self.redis.pipeline()
        pipe.srem(self.ACTIVE, article_id)
        pipe.expire(self.key(article_id), self.ttl)
        pipe.expire(self.events_key(article_id), self.ttl)
        pipe.execute()

    def stage(self, article_id: str, stage: str, status: str) -> bool:
        self.redis.hsetnx(self.key(article_id), "started", str(time.time()))
        return self.transition(article_id, status, stage=stage)

    def advance_stage(self, article_id: str, stage: str, status: str) -> bool:
        """``stage`` unless the article is already past it (stages overlap: an image may start
        while the sections are written), so the stage shown only ever moves forward."""
        self.redis.hsetnx(self.key(article_id), "started", str(time.time()))
        changed = bool(
            self._advance_stage(keys=[self.key(article_id)], args=[status, stage, *STAGE_ORDER])
        )
        if changed:
            self.publish(article_id)
        return changed

    def image_step(self, article_id: str, index: int, step: int, steps: int) -> None:
        self.redis.hset(self.key(article_id), f"image_step:{index}", f"{step}/{steps}")

    def image_preview(self, article_id: str, index: int, step: int, png_b64: str) -> None:
        """Keeps the latest step preview of image ``index`` (one field, overwritten), until
        ``image_done`` drops it."""
        value = json.dumps({"step": step, "png_b64": png_b64})
        self.redis.hset(self.key(article_id), f"image_preview:{index}", value)

    def image_done(self, article_id: str, index: int, image: dict[str, Any]) -> None:
        # Recounted, not incremented, so an image job that runs twice (a retry after its
        # worker died) counts once.
        self._image_done(keys=[self.key(article_id)], args=[index, json.dumps(image)])
        self.publish(article_id)

    def images(self, article_id: str, count: int) -> list[dict[str, Any] | None]:
        if count == 0:
            return []
        values = self.redis.hmget(self.key(article_id), [f"image:{k}" for k in range(count)])
        return [None if v is None else json.loads(v) for v in values]

    def active_count(self) -> int:
        return int(self.redis.scard(self.ACTIVE))

    # --- finished articles, images and sources in the storage ---

    def save_sources(self, article_id: str, sources: list[dict[str, Any]]) -> None:
        """The article's loaded sources (their text included) beside its stored copy."""
        self.blobs.put(sources_key(article_id), json.dumps(sources).encode())

    def load_sources(self, article_id: str) -> list[dict[str, Any]] | None:
        """The sources from Redis, else (gone from Redis, or Redis down) from the storage; None
        when the article has none kept."""
        try:
            kept = self.get(article_id, "sources")
        except RedisError:
            kept = None
        if kept is not None:
            return list(kept)
        raw = self.blobs.get(sources_key(article_id))
        return list(json.loads(raw)) if raw is not None else None

    def save_image(self, image_id: str, png: bytes) -> None:
        self.blobs.put(image_key(image_id), png)

    def load_image(self, image_id: str) -> bytes | None:
        """The PNG, or None when there is none (or ``image_id`` is not one of ours)."""
        if not IMAGE_ID.match(image_id):
            return None
        return self.blobs.get(image_key(image_id))

    def save_article(self, status: ArticleStatus, owner: str | None = None) -> None:
        """Writes the status with its owner (by default the record's key scope) beside it."""
        if owner is None:
            owner = self.get(status.id, "key")
        document = {"owner": owner, **status.model_dump(mode="json")}
        self.blobs.put(article_key(status.id), json.dumps(document, indent=2).encode())

    def load_article(self, article_id: str) -> ArticleStatus | None:
        found = self.load_article_with_owner(article_id)
        return None if found is None else found[0]

    def load_article_with_owner(self, article_id: str) -> tuple[ArticleStatus, str | None] | None:
        """The stored copy and its owner (None for copies written before owners were kept)."""
        if not ARTICLE_ID.match(article_id):
            return None
        raw = self.blobs.get(article_key(article_id))
        if raw is None:
            return None
        document = json.loads(raw)
        owner = document.pop("owner", None)
        return ArticleStatus.model_validate(document), owner

    # --- progress events ---

    def publish(self, article_id: str) -> None:
        """Appends the current status/progress snapshot to the article's event stream.

        Several workers publish for one article (its image jobs run side by side). Reading the
        record and appending its snapshot happen under one per-article lock, so snapshots are
        appended in the order they were read; as the record only moves forward, so do the
        events (unlocked, a snapshot read before another worker's step could land after that
        worker's newer one, and the percent would go backwards). A lock that cannot be had
        within a second does not hold the event back.
        """
        lock = self.redis.lock(
            f"{self.key(article_id)}:publish", timeout=5, blocking_timeout=1, thread_local=False
        )
        locked = lock.acquire()
        try:
            fields = self.fields(article_id)
            if not fields:
                return
            view = status_view(article_id, fields, include_article=False)
            data = view.model_dump_json(include={"id", "status", "progress", "error"})
            self.redis.xadd(
                self.events_key(article_id), {"data": data}, maxlen=STREAM_MAXLEN, approximate=True
            )
        finally:
            if locked:
                with contextlib.suppress(LockError):  # it outlived its timeout: already gone
                    lock.release()

    def read_events(self, article_id: str, after: str, block_ms: int) -> list[tuple[str, str]]:
        """``(event id, JSON text)`` appended after ``after``, waiting up to ``block_ms``."""
        reply = self.redis.xread({self.events_key(article_id): after}, block=block_ms, count=100)
        return [
            (entry_id.decode(), values[b"data"].decode())
            for _stream, entries in reply or []
            for entry_id, values in entries
        ]

    # --- listing, idempotency, rate limits ---

    def rows(self, count: int, before: float | None) -> list[tuple[str, float]]:
        """Up to ``count`` (id, created time) of the index, newest first, older than ``before``."""
        high = f"({before}" if before is not None else "+inf"
        rows = self.redis.zrevrangebyscore(
            self.INDEX, high, "-inf", start=0, num=count, withscores=True
        )
        return [(row[0].decode(), float(row[1])) for row in rows]

    def claim_idempotency(
        self, scope: str, key: str, fingerprint: str, article_id: str, ttl: int = 24 * 3600
    ) -> dict[str, str] | None:
        """Records key -> article; returns the earlier claim when the key was used before."""
        name = f"{PREFIX}:idem:{scope}:{key}"
        claim = json.dumps({"fingerprint": fingerprint, "article_id": article_id})
        if self.redis.set(name, claim, nx=True, ex=ttl):
            return None
        existing = self.redis.get(name)
        return None if existing is None else dict(json.loads(existing))

    def release_idempotency(self, scope: str, key: str, article_id: str) -> None:
        """Forgets the claim, if it is still this article's (the request did not go through)."""
        name = f"{PREFIX}:idem:{scope}:{key}"
        existing = self.redis.get(name)
        if existing is not None and json.loads(existing)["article_id"] == article_id:
            self.redis.delete(name)

    def hit_rate_limit(self, scope: str, limit: int) -> int | None:
        """Counts one request in this minute's window; returns seconds to wait when over."""
        window = int(time.time() // 60)
        name = f"{PREFIX}:rate:{scope}:{window}"
        pipe = self.redis.pipeline()
        pipe.incr(name)
        pipe.expire(name, 120)
        count = int(pipe.execute()[0])
        if count > limit:
            return max(1, 60 - int(time.time() % 60))
        return None
