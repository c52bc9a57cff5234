"""A batch in Redis, and how its items stand.

``af:batch:{id}`` is a hash (owner, options, topics, status, times, retries) and
``af:batch:{id}:items`` the list of its items' article ids, in batch order (a retry replaces an
item's id; the earlier ones are kept in the hash). Each item is an ordinary article record with
two more fields: ``batch`` (`{"id", "index", "target"}`) and, until a slot frees for it,
``waiting``. An item has *ended* once its article is terminal and, if it succeeded and asked for
publishing, its publish has too (published or failed): the batch ends when every item has.

This module sits below the jobs (``publish.job`` reads it); the queueing is ``dispatch``'s.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.gateway.batches.schemas import (
    BatchCounts,
    BatchItem,
    BatchLinks,
    BatchOptions,
    BatchStatus,
)
from services.gateway.publish.schemas import TARGETS, PublishInfo
from services.gateway.schemas import TERMINAL, ErrorInfo
from services.gateway.store import PREFIX, ArticleStore

BATCH_ID = re.compile(r"^bat_[0-9a-f]{24}$")
INDEX = f"{PREFIX}:batches"
# Scopes (API keys) that have batch items waiting for a slot: the maintenance pass looks here.
WAITING_KEYS = f"{PREFIX}:batches:keys"
# Batches still running: the maintenance pass checks whether each has ended.
RUNNING = f"{PREFIX}:batches:running"
PUBLISH_SETTLED = ("published", "failed")


def key(batch_id: str) -> str:
    if not BATCH_ID.match(batch_id):
        raise ValueError(f"not a batch id: {batch_id!r}")
    return f"{PREFIX}:batch:{batch_id}"


def items_key(batch_id: str) -> str:
    return f"{key(batch_id)}:items"


def index_key(scope: str) -> str:
    """The scope's own batches, by creation time (``INDEX`` holds every key's)."""
    return f"{PREFIX}:batches:of:{scope}"


def waiting_key(scope: str) -> str:
    return f"{PREFIX}:batches:waiting:{scope}"


def started_key(scope: str) -> str:
    """The scope's batch items that hold a slot (started and not yet seen to end)."""
    return f"{PREFIX}:batches:started:{scope}"


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fields(store: ArticleStore, batch_id: str) -> dict[str, str]:
    raw = store.redis.hgetall(key(batch_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


def item_ids(store: ArticleStore, batch_id: str) -> list[str]:
    return [a.decode() for a in store.redis.lrange(items_key(batch_id), 0, -1)]


def topics(store: ArticleStore, batch_id: str) -> list[str]:
    return list(json.loads(store.redis.hget(key(batch_id), "topics") or "[]"))


def of_article(store: ArticleStore, article_id: str) -> dict[str, Any] | None:
    """The item's ``batch`` field (`{"id", "index", "target"}`), or None for a single article."""
    found = store.get(article_id, "batch")
    return dict(found) if found else None


@dataclass(frozen=True)
class ItemState:
    """What the batch needs to know of one item: its status, whether it still waits for a
    slot (`queued` and not started), its publish record and error."""

    status: str
    waiting: bool
    target: str | None
    publish: PublishInfo | None
    error: ErrorInfo | None

    @property
    def ended(self) -> bool:
        if self.status not in TERMINAL:
            return False
        if self.status != "succeeded" or self.target is None:
            return True
        return self.publish is not None and self.publish.state in PUBLISH_SETTLED

    @property
    def good(self) -> bool:
        """Succeeded, and published as asked."""
        published = self.target is None or (
            self.publish is not None and self.publish.state == "published"
        )
        return self.status == "succeeded" and published


def item_states(store: ArticleStore, ids: list[str]) -> list[ItemState]:
    """Each item's state from its Redis record, else (expired) from its stored copy."""
    names = ["status", "waiting", "batch", "error", *(f"publish:{t}" for t in TARGETS)]
    pipe = store.redis.pipeline(transaction=False)
    for article_id in ids:
        pipe.hmget(store.key(article_id), names)
    states = []
    for article_id, values in zip(ids, pipe.execute(), strict=True):
        status, waiting, batch, error, *records = (
            None if v is None else v.decode() for v in values
        )
        if status is None:
            states.append(_from_disk(store, article_id))
            continue
        target = (json.loads(batch) if batch else {}).get("target")
        raw = dict(zip(TARGETS, records, strict=True)).get(target) if target else None
        states.append(
            ItemState(
                status,
                waiting is not None and status == "queued",
                target,
                None if raw is None else PublishInfo.model_validate_json(raw),
                None if error is None else ErrorInfo.model_validate_json(error),
            )
        )
    return states


def _from_disk(store: ArticleStore, article_id: str) -> ItemState:
    kept = store.load_article(article_id)
    if kept is None:  # gone everywhere: it can never end otherwise
        lost = ErrorInfo(type="lost", message="the article's record is gone", stage="queued")
        return ItemState("failed", False, None, None, lost)
    target = next(iter(kept.publish), None)
    publish = kept.publish.get(target) if target else None
    return ItemState(kept.status, False, target, publish, kept.error)


def status_of(
    store: ArticleStore, batch_id: str, limit: int = 50, cursor: int = 0
) -> BatchStatus | None:
    """The batch with its counts and one page of items (``limit`` 0: no items)."""
    found = fields(store, batch_id)
    if not found:
        return None
    ids = item_ids(store, batch_id)
    states = item_states(store, ids)
    by_status: dict[str, int] = {}
    by_publish: dict[str, int] = {}
    scheduled = 0
    for state in states:
        by_status[state.status] = by_status.get(state.status, 0) + 1
        if state.publish is not None:
            by_publish[state.publish.state] = by_publish.get(state.publish.state, 0) + 1
            scheduled += state.publish.post_status in ("future", "scheduled")
    counts = BatchCounts(
        total=len(ids),
        ended=sum(state.ended for state in states),
        waiting=sum(s.waiting for s in states),
        by_status=by_status,
        by_publish=by_publish,
        scheduled=scheduled,
    )
    names = topics(store, batch_id)
    page = range(cursor, min(len(ids), cursor + limit))
    items = [
        BatchItem(
            index=k,
            article_id=ids[k],
            topic=names[k] if k < len(names) else "",
            status=states[k].status,
            waiting=states[k].waiting,
            publish=states[k].publish,
            error=states[k].error,
            earlier_ids=json.loads(found.get(f"earlier:{k}", "[]")),
        )
        for k in page
    ]
    options = BatchOptions.model_validate_json(found["options"])
    more = page.stop < len(ids) and limit > 0
    return BatchStatus(
        id=batch_id,
        status=found["status"],
        name=options.name,
        counts=counts,
        items=items,
        next_cursor=str(page.stop) if more else None,
        link_related=options.link_related,
        schedule=options.schedule,
        metadata=options.metadata,
        retries=int(found.get("retries", "0")),
        created_at=iso(float(found["created"])),
        finished_at=iso(float(found["finished"])) if found.get("finished") else None,
        links=BatchLinks(self=f"/v1/batches/{batch_id}"),
    )


def owner(store: ArticleStore, batch_id: str) -> str | None:
    raw = store.redis.hget(key(batch_id), "owner")
    return None if raw is None else json.loads(raw)
