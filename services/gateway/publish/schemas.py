"""The publishing protocol: what a request asks for and the state the article's status shows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

TARGETS = ("wordpress", "ghost")
PublishState = Literal["queued", "publishing", "published", "failed"]


class PublishOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(
        max_length=20,
        description="Where to publish: `wordpress` or `ghost`, and only a target configured "
        "on the gateway (ARTICLEFORGE_PUBLISH_WORDPRESS_* or ARTICLEFORGE_PUBLISH_GHOST_*); "
        "another is a 400 naming `publish.target`.",
        examples=["wordpress"],
    )
    status: Literal["draft", "publish"] = Field(
        default="draft",
        description="`draft` creates (or keeps) the post as a draft for an editor to review; "
        "`publish` makes it public (Ghost calls that `published`), at `at` when given. "
        "Defaults to `publish` when `at` is given, else `draft`.",
        examples=["draft"],
    )
    at: AwareDatetime | None = Field(
        default=None,
        description="Schedule the post: an RFC 3339 time with its offset (`2026-12-24T09:00:00Z`, "
        "`2026-12-24T09:00:00+01:00`), in the future when asked (a past time is a 422 naming "
        "`publish.at`). WordPress gets status `future` with `date_gmt`, Ghost `scheduled` with "
        "`published_at`; the CMS makes the post public at that time. If the article finishes "
        "after `at`, it is published at once. Publishing again with another `at` reschedules "
        "the same post; with `status: draft` and no `at` it is unscheduled (a draft again).",
        examples=["2026-12-24T09:00:00Z"],
    )

    @model_validator(mode="after")
    def _scheduled_means_publish(self) -> PublishOptions:
        if self.at is None:
            return self
        if "status" not in self.model_fields_set:
            self.status = "publish"
        elif self.status != "publish":
            raise ValueError("`at` schedules a publish: give status `publish` (or leave it out)")
        return self

    def at_utc(self) -> str | None:
        """`at` as ISO 8601 UTC (`...Z`), the form the record keeps."""
        return None if self.at is None else utc_iso(self.at)


def utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


class PublishError(BaseModel):
    type: str = Field(
        description="`cms_rejected`: the CMS refused the request (a 4xx, not retried); "
        "`cms_unavailable`: 429, 5xx or no answer after every retry; `publish_failed`: "
        "anything else.",
        examples=["cms_rejected"],
    )
    message: str = Field(
        description="What went wrong, with the CMS's own error code and message.",
        examples=[
            "wordpress POST /wp/v2/posts answered 401 rest_cannot_create: Sorry, you are "
            "not allowed to create posts as this user."
        ],
    )
    status_code: int | None = Field(
        default=None, description="The CMS's HTTP status, if it answered.", examples=[401]
    )


class PublishInfo(BaseModel):
    target: str = Field(description="The target.", examples=["wordpress"])
    state: PublishState = Field(
        description="`queued`: waiting for a worker (or for the next retry, with `error` "
        "saying why); `publishing`: uploading images and writing the post; `published`: the "
        "post is there, at `url`; `failed`: gave up, `error` says why. The article itself is "
        "untouched by a failure, and POST /v1/articles/{id}/publish tries again.",
        examples=["published"],
    )
    status: Literal["draft", "publish"] = Field(
        description="The post status asked for.", examples=["draft"]
    )
    at: str | None = Field(
        default=None,
        description="The time the post is scheduled for (ISO 8601 UTC), as asked; null when "
        "published at once.",
        examples=["2026-12-24T09:00:00Z"],
    )
    post_status: str | None = Field(
        default=None,
        description="The post's status as the CMS last answered: WordPress `draft`, `future` "
        "(scheduled) or `publish`; Ghost `draft`, `scheduled` or `published`.",
        examples=["future"],
    )
    post_id: str | None = Field(
        default=None,
        description="The post's id in the CMS (a WordPress number or a Ghost object id), once "
        "created; every later publish updates this post.",
        examples=["42"],
    )
    url: str | None = Field(
        default=None,
        description="The post's URL as the CMS reports it (for a WordPress draft, `?p=ID`).",
        examples=["https://blog.example.com/the-future-of-solar-power/"],
    )
    edit_url: str | None = Field(
        default=None,
        description="Where an editor opens the post in the CMS's admin.",
        examples=["https://blog.example.com/wp-admin/post.php?post=42&action=edit"],
    )
    media_ids: dict[str, str] = Field(
        default_factory=dict,
        description="Article image id -> the CMS's media id (WordPress) or uploaded image URL "
        "(Ghost, which has no media ids). An image is uploaded once and reused.",
        examples=[{"img_9b1e2c0d4f6a8b0c2e4f6a8b": "57"}],
    )
    featured_media: str | None = Field(
        default=None,
        description="The media id (Ghost: URL) of the featured image.",
        examples=["57"],
    )
    tag_ids: list[str] = Field(
        default_factory=list,
        description="The CMS's ids of the post's tags (found by name, created when missing).",
        examples=[["12", "13"]],
    )
    seo_meta: list[str] = Field(
        default_factory=list,
        description="Post meta keys the SEO description and title were written to "
        "(`_yoast_wpseo_metadesc`, `rank_math_description`, ...; WordPress writes only those "
        "registered for REST, see docs/api.md); Ghost: `meta_description`, `meta_title`.",
        examples=[["_yoast_wpseo_metadesc", "_yoast_wpseo_title"]],
    )
    revision: int | None = Field(
        default=None,
        description="The article revision the post holds (a newer revision is published "
        "again, to the same post).",
        examples=[1],
    )
    attempts: int = Field(
        default=0, ge=0, description="Attempts of the current publish so far.", examples=[1]
    )
    error: PublishError | None = Field(
        default=None,
        description="Why the last attempt failed: while `queued` again, the reason for the "
        "retry; once `failed`, the reason it gave up.",
    )
    requested_at: str | None = Field(
        default=None, description="ISO 8601 UTC.", examples=["2026-11-26T06:31:00Z"]
    )
    published_at: str | None = Field(
        default=None,
        description="ISO 8601 UTC time of the last successful publish.",
        examples=["2026-11-26T06:31:04Z"],
    )
