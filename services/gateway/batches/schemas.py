"""The batch protocol: what POST /v1/batches takes and what GET /v1/batches/{id} shows."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from services.gateway.publish.schemas import PublishInfo
from services.gateway.schemas import (
    REQUEST_CONFIG,
    ArticleRequest,
    ErrorInfo,
    Status,
    WebhookTarget,
)

# A hard bound on what one body may hold, whatever ARTICLEFORGE_BATCH_MAX_ITEMS says, so that
# an oversized body is refused before all of it is validated.
HARD_MAX_ITEMS = 10_000
EVERY = re.compile(r"^(\d{1,4})(m|h|d|w)$")
CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
BatchState = Literal["running", "succeeded", "failed", "cancelled"]


class Schedule(BaseModel):
    """Spreads the items' publishing over a calendar: item k is published at slot k."""

    model_config = REQUEST_CONFIG

    start: date | datetime = Field(
        description="The first day (`2026-12-08`: its slots still ahead, so today's later "
        "times when it is today) or the first moment (`2026-12-08T09:00`, read in `timezone` "
        "when it has no offset, which must be in the future). No slot falls before it.",
        examples=["2026-12-08"],
    )
    every: str = Field(
        default="1d",
        max_length=8,
        description="The step between days (with `times`) or between slots (without): a number "
        "and `m`, `h`, `d` or `w` (`30m`, `12h`, `1d`, `2w`). With `times` it must be whole days.",
        examples=["1d"],
    )
    times: list[str] = Field(
        default_factory=list,
        max_length=24,
        description="Clock times (`HH:MM`, 24 h, in `timezone`) to publish at on each day; "
        "without them the slots are `start`, `start + every`, ... A time that a daylight "
        "saving change skips is moved forward by the gap.",
        examples=[["09:00", "17:30"]],
    )
    timezone: str = Field(
        default="UTC",
        max_length=64,
        description="An IANA time zone (`Europe/Berlin`, `America/New_York`) for `start` and "
        "`times`.",
        examples=["Europe/Berlin"],
    )

    @field_validator("every")
    @classmethod
    def _every(cls, value: str) -> str:
        found = EVERY.match(value.strip())
        if found is None or int(found.group(1)) == 0:
            raise ValueError("every must be a positive number and m, h, d or w, like `1d`")
        return value.strip()

    @field_validator("times")
    @classmethod
    def _times(cls, value: list[str]) -> list[str]:
        for clock in value:
            if not CLOCK.match(clock):
                raise ValueError(f"each time must be HH:MM on a 24-hour clock; got {clock!r}")
        if len(set(value)) != len(value):
            raise ValueError("times must not repeat")
        return sorted(value)

    @model_validator(mode="after")
    def _days_with_times(self) -> Schedule:
        if self.times and not self.every.endswith(("d", "w")):
            raise ValueError("with `times`, `every` must be whole days or weeks, like `1d`")
        return self


class BatchOptions(BaseModel):
    """Everything of a batch but its items: what a CSV upload sends beside the file."""

    model_config = REQUEST_CONFIG

    name: str | None = Field(
        default=None,
        max_length=200,
        description="A label for people (the studio shows it).",
        examples=["December calendar"],
    )
    defaults: dict[str, Any] = Field(
        default_factory=dict,
        description="Article request fields every item gets unless it sets them itself "
        "(`images`, `text` and `publish` are merged field by field).",
        examples=[{"language": "en", "images": {"count": 2}, "publish": {"target": "wordpress"}}],
    )
    schedule: Schedule | None = Field(
        default=None,
        description="Publish the items over a calendar: each item without its own `publish.at` "
        "gets the next slot, in item order. Every item needs a publish target (its own or "
        "`defaults.publish`).",
    )
    link_related: bool = Field(
        default=False,
        description="Link each article's sections to the other articles of the batch whose "
        "topics they mention (the first mention of each, outside headings and links), with "
        "the posts' CMS URLs. A post is updated once an article it mentions is published.",
        examples=[True],
    )
    webhook: WebhookTarget | None = Field(
        default=None,
        description="Receives `batch.succeeded`, `batch.failed` or `batch.cancelled` once every "
        "item has ended (and its publish, where asked, has too). The items' own `webhook` (or "
        "`defaults.webhook`) receives their `article.*` events.",
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Echoed back untouched (up to 4 KB as JSON).",
        examples=[{"calendar": "2026-12"}],
    )

    @field_validator("metadata")
    @classmethod
    def _small(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(repr(value)) > 4096:
            raise ValueError("metadata must be at most 4 KB")
        return value


class BatchRequest(BatchOptions):
    items: list[ArticleRequest] = Field(
        min_length=1,
        max_length=HARD_MAX_ITEMS,
        description="The articles, each an article request (POST /v1/articles's body) over "
        "`defaults`. At most ARTICLEFORGE_BATCH_MAX_ITEMS (500 by default).",
        examples=[[{"topic": "Heat pumps in old houses"}, {"topic": "Solar roof tiles"}]],
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("defaults"), dict):
            return data
        items = data.get("items")
        if isinstance(items, list):
            data = {**data, "items": [merged(data["defaults"], item) for item in items]}
        return data


MERGED_FIELDS = ("text", "images", "publish")


def merged(defaults: dict[str, Any], item: Any) -> Any:
    """``item`` over ``defaults``; the nested options merge field by field."""
    if not isinstance(item, dict):
        return item
    out = {**defaults, **item}
    for name in MERGED_FIELDS:
        if isinstance(defaults.get(name), dict) and isinstance(item.get(name), dict):
            out[name] = {**defaults[name], **item[name]}
    return out


class BatchCounts(BaseModel):
    total: int = Field(description="Items in the batch.", examples=[20])
    ended: int = Field(
        description="Items that have ended: the article is terminal and, where it asked for "
        "publishing, the publish has ended too (published, scheduled, or failed). The batch "
        "ends when `ended` reaches `total`.",
        examples=[9],
    )
    waiting: int = Field(
        description="`queued` items still waiting for one of the key's batch slots "
        "(ARTICLEFORGE_BATCH_SLOTS_PER_KEY).",
        examples=[11],
    )
    by_status: dict[str, int] = Field(
        description="Items per article status (`queued` includes `waiting`).",
        examples=[{"queued": 12, "writing": 8}],
    )
    by_publish: dict[str, int] = Field(
        description="Items that asked for publishing, by the publish state (`published` "
        "includes the scheduled ones: `scheduled` counts those too).",
        examples=[{"published": 3, "failed": 1}],
    )
    scheduled: int = Field(description="Posts the CMS holds for a later time.", examples=[3])


class BatchItem(BaseModel):
    index: int = Field(
        description="The item's place in the batch (CSV: its row, from 0).", examples=[3]
    )
    article_id: str = Field(
        description="The item's article (the newest, after a retry).",
        examples=["art_3f2a9c1d0e4b5a6978a1b2c3"],
    )
    topic: str = Field(description="The item's topic.", examples=["Solar roof tiles"])
    status: Status = Field(description="The article's status.", examples=["succeeded"])
    waiting: bool = Field(
        description="Queued but not yet started: waiting for a batch slot.", examples=[False]
    )
    publish: PublishInfo | None = Field(
        default=None, description="The publish the item asked for, as it stands."
    )
    error: ErrorInfo | None = Field(default=None, description="Why the article failed.")
    earlier_ids: list[str] = Field(
        default_factory=list,
        description="Articles this item had before each retry, oldest first.",
        examples=[["art_0a1b2c3d4e5f60718293a4b5"]],
    )


class BatchLinks(BaseModel):
    self: str = Field(description="This batch.", examples=["/v1/batches/bat_1"])


class BatchStatus(BaseModel):
    id: str = Field(description="Batch id.", examples=["bat_5c1e0f2a9b3d4c6e8f7a1b2c"])
    status: BatchState = Field(
        description="`running` until every item has ended (and its publish, where asked); then "
        "`succeeded` (every item succeeded and published as asked), `failed` (any did not), or "
        "`cancelled` (DELETE). POST /v1/batches/{id}/retry makes a failed batch `running` again.",
        examples=["running"],
    )
    name: str | None = Field(
        default=None, description="The request's name.", examples=["December calendar"]
    )
    counts: BatchCounts = Field(description="How many items stand where.")
    items: list[BatchItem] = Field(description="One page of the items, in batch order.")
    next_cursor: str | None = Field(
        default=None,
        description="Pass as `cursor` for the next page of items; null on the last page.",
        examples=["50"],
    )
    link_related: bool = Field(description="As requested.", examples=[False])
    schedule: Schedule | None = Field(default=None, description="As requested.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="As requested.", examples=[{"calendar": "2026-12"}]
    )
    retries: int = Field(description="Times POST /v1/batches/{id}/retry ran.", examples=[0])
    created_at: str = Field(description="ISO 8601 UTC.", examples=["2026-12-07T09:00:00Z"])
    finished_at: str | None = Field(
        default=None, description="ISO 8601 UTC, once the batch ended.", examples=[None]
    )
    links: BatchLinks = Field(description="Where to follow it.")


class BatchList(BaseModel):
    data: list[BatchStatus] = Field(description="Batches, newest first (items left out).")
    next_cursor: str | None = Field(
        default=None,
        description="Pass as `cursor` for the next page; null on the last.",
        examples=["1796630400.123"],
    )
