"""Turns a stored record into the public ``ArticleStatus`` (progress percent included)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from services.gateway.publish.schemas import PublishInfo
from services.gateway.schemas import (
    TERMINAL,
    Article,
    ArticleStatus,
    BatchRef,
    EditInfo,
    ErrorInfo,
    ImageProgress,
    OutlineView,
    Progress,
    SourceInfo,
)


def _iso(value: str | None) -> str | None:
    if not value:
        return None
    return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


STAGE_SPAN = {  # stage -> (start percent, end percent)
    "queued": (0, 0),
    "sources": (0, 0),
    "outline": (0, 10),
    "sections": (10, 60),
    "image_prompts": (60, 65),
    "images": (65, 95),
    "assemble": (95, 100),
    "webhook": (100, 100),
    "done": (100, 100),
}
STAGE_ORDER = tuple(STAGE_SPAN)  # the pipeline's stages, first to last


def percent(fields: dict[str, str]) -> float:
    status, stage = fields.get("status", "queued"), fields.get("stage", "queued")
    if status == "succeeded":
        return 100.0
    if status == "awaiting_review":  # the outline is done; the rest waits for the editor
        return float(STAGE_SPAN["outline"][1])
    start, end = STAGE_SPAN.get(stage, (0, 0))
    fraction = 0.0
    if stage == "sections":
        expected = max(1, int(fields.get("expected_tokens", "1")))
        fraction = min(1.0, int(fields.get("tokens", "0")) / expected)
    elif stage == "images":
        total = max(1, int(fields.get("images_total", "1")))
        done = 0.0
        for k in range(total):
            if f"image:{k}" in fields:
                done += 1
            elif f"image_step:{k}" in fields:
                step, steps = fields[f"image_step:{k}"].split("/")
                done += int(step) / max(1, int(steps))
        fraction = done / total
    return round(start + (end - start) * fraction, 1)


def image_progress(fields: dict[str, str]) -> list[ImageProgress]:
    """Each requested image's state, steps and latest preview, from its hash fields."""
    # A preview only while it can still change: never in a finished (or failed, cancelled)
    # status, so what ends up on disk and in webhooks carries none.
    live = fields.get("status") not in TERMINAL
    images = []
    for k in range(int(fields.get("images_total", "0"))):
        step, steps = 0, None
        if f"image_step:{k}" in fields:
            done, total = fields[f"image_step:{k}"].split("/")
            step, steps = int(done), int(total)
        # An image server without step progress (the `openai` backend) marks the start only.
        unstepped = f"image_started:{k}" in fields
        entry = ImageProgress(
            index=k,
            state="drawing" if steps or unstepped else "queued",
            step=step,
            steps=steps,
            step_progress=not unstepped,
        )
        if f"image:{k}" in fields:
            record = json.loads(fields[f"image:{k}"])
            entry.state = "skipped" if "skipped" in record else "done"
            entry.url = record.get("url")
        elif live and f"image_preview:{k}" in fields:
            preview = json.loads(fields[f"image_preview:{k}"])
            entry.preview = "data:image/png;base64," + preview["png_b64"]
            entry.preview_step = int(preview["step"])
        images.append(entry)
    return images


def status_view(
    article_id: str, fields: dict[str, str], include_article: bool = True
) -> ArticleStatus:
    request = json.loads(fields.get("request", "{}"))
    stage = fields.get("stage", "queued")
    article = None
    if include_article and "article" in fields:
        article = Article.model_validate_json(fields["article"])
    error = ErrorInfo.model_validate_json(fields["error"]) if "error" in fields else None
    timestamps = {
        name: iso
        for name in ("created", "started", "finished", "review_expires")
        if (iso := _iso(fields.get(name))) is not None
    }
    if fields.get("status") != "awaiting_review":  # a deadline only while it applies
        timestamps.pop("review_expires", None)
    outline = None
    if "outline" in fields:
        written = json.loads(fields["outline"])
        outline = OutlineView(title=written["title"], headings=written["headings"])
    edit = EditInfo.model_validate_json(fields["edit"]) if "edit" in fields else None
    # Revision 1 is the assembled article; editorial jobs count up from there.
    revision = int(fields.get("revision", "1")) if "article" in fields else None
    # The public part of each target's record (services.gateway.publish.job).
    publish = {
        name.removeprefix("publish:"): PublishInfo.model_validate(
            {k: v for k, v in json.loads(value).items() if k in PublishInfo.model_fields}
        )
        for name, value in sorted(fields.items())
        if name.startswith("publish:")
    }
    return ArticleStatus(
        id=article_id,
        status=fields.get("status", "queued"),
        progress=Progress(
            stage=stage,
            percent=percent(fields),
            tokens=int(fields.get("tokens", "0")),
            images_done=int(fields.get("images_done", "0")),
            images_total=int(fields.get("images_total", "0")),
            images=image_progress(fields),
        ),
        article=article,
        revision=revision,
        outline=outline,
        edit=edit,
        error=error,
        publish=publish,
        # the stored sources with their text; the status shows the rest (pydantic drops `text`)
        sources=[SourceInfo.model_validate(s) for s in json.loads(fields.get("sources", "[]"))],
        timestamps=timestamps,
        metadata=request.get("metadata", {}),
        batch=_batch_ref(fields),
    )


def _batch_ref(fields: dict[str, str]) -> BatchRef | None:
    if "batch" not in fields:
        return None
    found = json.loads(fields["batch"])
    waiting = "waiting" in fields and fields.get("status") == "queued"
    return BatchRef(id=found["id"], index=found["index"], waiting=waiting)
