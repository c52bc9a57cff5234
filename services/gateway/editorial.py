"""The editorial loop: outline review, one section or one image regenerated, revisions.

**Outline review.** An article requested with ``"review": "outline"`` queues only its outline
job (``jobs.enqueue_article``). When the outline is written, ``jobs.pause_for_review`` moves it
from `writing` to `awaiting_review`, notes when the review expires (``af:reviews``, a sorted set)
and announces `article.awaiting_review`. An approval (with or without an edited outline) moves it
back to `writing` and queues the remaining stages; the workers' maintenance pass cancels reviews
left unanswered past ARTICLEFORGE_REVIEW_TIMEOUT_SECONDS. Both go through a compare-and-set on
the status (``ArticleStore.swap``), so an approval and an expiry racing each other end one way.

**Revisions.** A succeeded article is revision 1. A regeneration runs as its own RQ job and
makes revision N+1: it rebuilds the whole article (Markdown, HTML, SEO fields) from the stored
outline, raw section bodies and image records with its one part replaced, and commits it once
(a Lua check on the revision number, so a re-run after a crash commits nothing twice). Every
revision is kept: in the Redis hash (``revision:{n}``) and in the storage
(``revisions/{id}/{n}.json`` in DATA_DIR or the bucket), written before Redis, as finished
articles are. A redrawn
image gets a new id; the old PNG stays, so earlier revisions keep working. One regeneration runs
at a time per article (``edit_busy``); another one meanwhile is a 409. A regeneration fails
alone (``on_edit_failure``): the article keeps its latest revision.

The top of the job stack: it builds on ``job_base``, ``webhook_jobs``, ``publish.job`` and
``jobs`` (the article stages it continues after a review, and their image records).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import AbandonedJobError, NoSuchJobError
from rq.job import Job, JobStatus

from services.common.errors import ArticleforgeError, Conflict
from services.gateway import assemble, pipeline, seo
from services.gateway.config import GatewaySettings
from services.gateway.grounding import Grounding
from services.gateway.job_base import (
    ARTICLES_QUEUE,
    IMAGES_QUEUE,
    adopt_request_id,
    image_backend,
    job_options,
    runs_again,
    settings,
    store_for,
    text_backend,
)
from services.gateway.jobs import (
    REVIEWS,
    article_grounding,
    claim_image_id,
    enqueue_after_outline,
    keep_image,
)
from services.gateway.publish.job import republish_after_revision
from services.gateway.revisions import has_revision, save_revision
from services.gateway.schemas import Article, ArticleRequest, EditInfo, ErrorInfo, ImageRef
from services.gateway.sources import Passage, SourceSpec
from services.gateway.store import ArticleStore
from services.gateway.views import status_view
from services.gateway.webhook_jobs import enqueue_event, enqueue_webhook

# The path that event webhook jobs queued before they moved to webhook_jobs name.
from services.gateway.webhook_jobs import event_webhook_job as event_webhook_job

logger = logging.getLogger(__name__)

EDITING = "af:editing"  # articles with a regeneration under way
# A claim (edit_busy) whose job never appeared is stale after this long: the gateway that made
# it died before queueing the job.
STALE_CLAIM_SECONDS = 60.0

# Claims the next revision for one regeneration: ok + number, or why not.
_BEGIN_EDIT = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
if status ~= 'succeeded' or redis.call('HEXISTS', KEYS[1], 'article') == 0 then
  return {'status', status}
end
local busy = redis.call('HGET', KEYS[1], 'edit_busy')
if busy then return {'busy', busy} end
local revision = tonumber(cjson.decode(redis.call('HGET', KEYS[1], 'revision') or '1')) + 1
redis.call('HSET', KEYS[1], 'edit_busy', revision .. ':' .. ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return {'ok', tostring(revision)}
"""

# Commits revision ARGV[1] once: only while the article is still at ARGV[1] - 1.
_COMMIT = """
local current = tonumber(cjson.decode(redis.call('HGET', KEYS[1], 'revision') or '1'))
if current ~= tonumber(ARGV[1]) - 1 then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HDEL', KEYS[1], 'edit_busy')
return 1
"""


class EditFailed(ArticleforgeError):
    status_code = 502
    type = "edit_failed"


# --- outline review ---


def continue_after_review(
    store: ArticleStore,
    config: GatewaySettings,
    article_id: str,
    outline: pipeline.Outline | None,
    sources: list[SourceSpec] | None = None,
) -> None:
    """Approves the outline (replaced by ``outline`` when given) and queues the rest; a 409 when
    the article is not awaiting review (any more). ``sources`` replace the request's: the
    sections job loads them again."""
    key = store.key(article_id)
    expires = store.redis.hget(key, "review_expires")
    if expires is not None and float(expires) <= time.time():
        expire_review(store, config, article_id)  # the sweep had not come round yet
    extra = {} if outline is None else {"outline": json.dumps(asdict(outline))}
    if sources is not None:
        replaced = ArticleRequest.model_validate(store.get(article_id, "request"))
        replaced.sources = sources
        extra["request"] = replaced.model_dump_json()
    if not store.swap(article_id, "awaiting_review", "writing", **extra):
        status = store.status(article_id)
        raise Conflict(
            f"article {article_id} is {status}, not awaiting_review; nothing to approve"
            + (" (the review expired)" if status == "cancelled" and expires else ""),
            param="id",
        )
    if sources is not None:  # loaded again, by the sections job
        store.redis.hdel(store.key(article_id), "sources", "grounding")
    request = ArticleRequest.model_validate(store.get(article_id, "request"))
    request_id = str(store.get(article_id, "request_id") or "")
    try:
        enqueue_after_outline(store, config, article_id, request, request_id)
    except RedisError:
        # Not queued: back under review (its deadline kept), so that a retry can succeed.
        store.swap(article_id, "writing", "awaiting_review")
        raise
    if outline is not None:
        store.redis.hdel(key, "fallback:outline")  # the editor's outline is nobody's fallback
    store.redis.hdel(key, "review_expires")
    store.redis.zrem(REVIEWS, article_id)
    logger.info("article %s: outline %s; writing", article_id, "edited" if outline else "approved")


def expire_review(store: ArticleStore, config: GatewaySettings, article_id: str) -> bool:
    error = ErrorInfo(
        type="review_expired",
        message=f"the outline review was not answered within {config.review_timeout_seconds} s "
        "(ARTICLEFORGE_REVIEW_TIMEOUT_SECONDS)",
        stage="outline",
    )
    changed = store.swap(article_id, "awaiting_review", "cancelled", error=error.model_dump_json())
    store.redis.zrem(REVIEWS, article_id)
    if changed:
        store.redis.hdel(store.key(article_id), "review_expires")
        logger.info("article %s: outline review expired; cancelled", article_id)
        enqueue_webhook(store, config, article_id, "article.cancelled")
    return changed


def expire_reviews(connection: Redis, now: float | None = None) -> list[str]:
    """Cancels every article whose review is past due (the workers' maintenance pass)."""
    store = store_for(settings(), connection)
    due = store.redis.zrangebyscore(REVIEWS, "-inf", now if now is not None else time.time())
    return [a.decode() for a in due if expire_review(store, settings(), a.decode())]


# --- regeneration: claims (gateway side) ---


def begin_edit(
    store: ArticleStore,
    config: GatewaySettings,
    article_id: str,
    kind: str,
    index: int,
    params: dict[str, Any],
    request_id: str,
) -> EditInfo:
    """Claims the next revision and queues its job; a 409 while the article is being written
    or another regeneration runs."""
    begin = store.redis.register_script(_BEGIN_EDIT)
    for _ in range(2):
        outcome, detail = (
            v.decode()
            for v in begin(keys=[store.key(article_id), EDITING], args=[time.time(), article_id])
        )
        if outcome != "busy" or not _clear_stale(store, article_id, detail):
            break
    if outcome == "missing":
        raise Conflict(
            f"article {article_id}'s working record expired from the store "
            "(ARTICLEFORGE_RESULT_TTL_SECONDS); it can be read but no longer regenerated",
            param="id",
        )
    if outcome == "status":
        raise Conflict(
            f"article {article_id} is {detail}; regenerate once it has succeeded", param="id"
        )
    if outcome == "busy":
        raise Conflict(
            f"article {article_id} is already making revision {detail.split(':')[0]}; "
            "regenerate again once it is done",
            param="id",
        )
    revision = int(detail)
    edit = EditInfo(
        kind=kind,
        index=index,
        revision=revision,
        status="queued",
        requested_at=assemble.now_iso(),
    )
    try:
        store.put(article_id, edit=edit.model_dump(mode="json"))
        function = regenerate_section_job if kind == "section" else redraw_image_job
        queue = ARTICLES_QUEUE if kind == "section" else IMAGES_QUEUE
        meta = {
            "article_id": article_id,
            "request_id": request_id,
            "stage": "edit",
            "revision": revision,
        }
        Queue(queue, connection=store.redis).enqueue(
            function,
            article_id,
            revision,
            index,
            params,
            **job_options(config, edit_job_id(article_id, revision), meta, on_edit_failure),
        )
    except RedisError:
        _release(store, article_id, revision)
        raise
    store.publish(article_id)
    logger.info("article %s: %s %d queued as revision %d", article_id, kind, index, revision)
    return edit


def edit_job_id(article_id: str, revision: int) -> str:
    return f"{article_id}-edit-{revision}"


def _clear_stale(store: ArticleStore, article_id: str, claim: str) -> bool:
    """Frees a claim whose job failed without its callback (a killed work horse) or was never
    queued; True when it did."""
    revision, _, since = claim.partition(":")
    try:
        job = Job.fetch(edit_job_id(article_id, int(revision)), connection=store.redis)
        status = job.get_status(refresh=False)
        stale = status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)
    except NoSuchJobError:
        stale = time.time() - float(since or 0) > STALE_CLAIM_SECONDS
    if stale:
        _finish(store, article_id, int(revision), "failed", _lost(int(revision)))
    return stale


def _lost(revision: int) -> ErrorInfo:
    return ErrorInfo(
        type="worker_lost",
        message=f"the job making revision {revision} was lost; regenerate again",
        stage="edit",
    )


def _release(store: ArticleStore, article_id: str, revision: int) -> None:
    try:
        _finish(store, article_id, revision, "failed", _lost(revision))
    except RedisError:
        pass


def _finish(
    store: ArticleStore, article_id: str, revision: int, status: str, error: ErrorInfo | None
) -> None:
    """Ends the regeneration of ``revision`` (when it is still the one claimed)."""
    key = store.key(article_id)
    busy = store.redis.hget(key, "edit_busy")
    if busy is not None and busy.decode().split(":")[0] == str(revision):
        store.redis.hdel(key, "edit_busy")
    _set_edit(store, article_id, revision, status, error)
    store.redis.srem(EDITING, article_id)
    store.publish(article_id)


def _set_edit(
    store: ArticleStore, article_id: str, revision: int, status: str, error: ErrorInfo | None
) -> None:
    edit = store.get(article_id, "edit")
    if edit is not None and edit.get("revision") == revision:
        edit.update(status=status, error=None if error is None else error.model_dump())
        store.put(article_id, edit=edit)


# --- regeneration: jobs (worker side) ---


def on_edit_failure(
    job: Job, connection: Redis, exc_type: type, value: BaseException, traceback: Any
) -> None:
    """As ``jobs.on_stage_failure`` (and called as it is), but a failed regeneration leaves the
    article as it was: only the edit turns `failed`, and the article is free for another."""
    if runs_again(job, exc_type):
        return
    article_id, revision = job.meta["article_id"], int(job.meta["revision"])
    kind = value.type if isinstance(value, ArticleforgeError) else "internal_error"
    if issubclass(exc_type, AbandonedJobError):
        kind = "worker_lost"
    error = ErrorInfo(type=kind, message=str(value) or exc_type.__name__, stage="edit")
    logger.error("article %s: revision %d failed: %s", article_id, revision, error.message)
    _finish(store_for(settings(), connection), article_id, revision, "failed", error)


def _start(store: ArticleStore, article_id: str, revision: int) -> dict[str, str] | None:
    """The record, or None when this revision was committed already (a re-run)."""
    adopt_request_id(store, article_id)
    fields = store.fields(article_id)
    if int(json.loads(fields.get("revision", "1"))) >= revision:
        enqueue_event(store, settings(), article_id, "article.updated", f"r{revision}")
        return None
    _set_edit(store, article_id, revision, "running", None)
    store.publish(article_id)
    return fields


def rewrite_prompt(
    request: ArticleRequest,
    outline: pipeline.Outline,
    bodies: list[str],
    index: int,
    instructions: str | None,
    passages: str = "",
) -> str:
    """One section again, with the outline and the neighbouring sections as context.

    It starts with the article's section preamble, word for word, so that the text service's
    prefix cache can serve that part from the article's own section prompts; what is particular
    to this rewrite (the neighbours, the section, the editor's words) comes last."""
    heading = outline.headings[index]
    prompt = pipeline.section_preamble(request, outline) + passages
    if index > 0:
        before = " ".join(bodies[index - 1].split())[-300:]
        prompt += f' The section before, "{outline.headings[index - 1]}", ends: "{before}"'
    if index + 1 < len(bodies):
        after = " ".join(bodies[index + 1].split())[:300]
        prompt += f' The section after, "{outline.headings[index + 1]}", begins: "{after}"'
    prompt += f' Now rewrite only section {index + 1}, "{heading}"'
    links = [
        *(["follows on from the section before"] if index > 0 else []),
        *(["leads into the one after"] if index + 1 < len(bodies) else []),
    ]
    prompt += (", so that it " + " and ".join(links) + ".") if links else "."
    if instructions:
        prompt += f" The editor asks: {instructions}"
    return prompt


def regenerate_section_job(
    article_id: str, revision: int, index: int, params: dict[str, Any]
) -> None:
    config, store = settings(), store_for(settings())
    fields = _start(store, article_id, revision)
    if fields is None:
        return
    request = ArticleRequest.model_validate_json(fields["request"])
    outline = pipeline.Outline(**json.loads(fields["outline"]))
    bodies: list[str] = json.loads(fields["sections"])
    grounded = article_grounding(store, article_id, request)
    block, given = "", list[Passage]()
    if grounded is not None:  # retrieval again, for the heading as it is now
        block, given = grounded.prompt_for(outline.title, outline.headings[index])
    prompt = rewrite_prompt(request, outline, bodies, index, params.get("instructions"), block)
    _, max_new = pipeline.section_budget(request, outline)
    body = pipeline.text_body(prompt, request, params["seed"], max_new, params.get("temperature"))
    reply = asyncio.run(text_backend(config).generate(body))
    text = pipeline.clean_section(reply["text"], outline.headings[index])
    fell_back = not text
    bodies[index] = text or pipeline.fallback_section(outline.headings[index], request)
    if grounded is not None:
        bodies[index] = grounded.rewrite(index, bodies[index], given if text else [])
    seeds = {"sections": {str(index): params["seed"]}}
    _commit(
        store,
        config,
        article_id,
        revision,
        fields,
        bodies=bodies,
        seeds=seeds,
        fallback=(f"section:{index}", fell_back),
        grounded=grounded,
    )


def redraw_image_job(article_id: str, revision: int, index: int, params: dict[str, Any]) -> None:
    config, store = settings(), store_for(settings())
    fields = _start(store, article_id, revision)
    if fields is None:
        return
    request = ArticleRequest.model_validate_json(fields["request"])
    outline = pipeline.Outline(**json.loads(fields["outline"]))
    records = store.images(article_id, request.images.count)
    current = records[index] or {}
    prompt = (
        params.get("prompt") or current.get("prompt") or json.loads(fields["image_prompts"])[index]
    )
    body = pipeline.image_body(request, prompt, params["seed"])
    for name in ("negative_prompt", "steps", "guidance_scale", "scheduler"):
        if params.get(name) is not None:
            body[name] = params[name]
    reply = asyncio.run(image_backend(config).generate(body))
    image = reply["images"][0]
    if image.get("nsfw") or not image.get("b64_png"):
        raise EditFailed(
            f"the image service's safety checker flagged the redrawn image {index}; "
            "the article is unchanged (try another prompt or seed)"
        )
    # The first run of this revision picks the id; a re-run overwrites the same PNG. The old
    # image keeps its id and file, so earlier revisions stay whole.
    caption = pipeline.image_subjects(outline, request.images.count)[index]
    records[index] = keep_image(
        config,
        store,
        claim_image_id(store, article_id, f"edit_image_id:{revision}"),
        reply,
        prompt,
        caption,
        request,
        # A prompt given by hand is used as is, with no style appended to strip for the alt text.
        style=None if params.get("prompt") else request.images.style,
    )
    _commit(
        store,
        config,
        article_id,
        revision,
        fields,
        records=records,
        seeds={"image": (index, int(image["seed"]))},
        fallback=(f"image:{index}:nsfw", False),
    )


def _commit(
    store: ArticleStore,
    config: GatewaySettings,
    article_id: str,
    revision: int,
    fields: dict[str, str],
    seeds: dict[str, Any],
    fallback: tuple[str, bool],
    bodies: list[str] | None = None,
    records: list[dict[str, Any] | None] | None = None,
    grounded: Grounding | None = None,
) -> None:
    """Builds revision ``revision`` from the stored parts, ``bodies`` or ``records`` replaced,
    and makes it the article's latest: on disk first, then in Redis, once."""
    request = ArticleRequest.model_validate_json(fields["request"])
    outline = pipeline.Outline(**json.loads(fields["outline"]))
    previous = Article.model_validate(json.loads(fields["article"]))
    if bodies is None:
        bodies = json.loads(fields["sections"])
    if records is None:
        records = store.images(article_id, request.images.count)
    images = [ImageRef.model_validate(r) for r in records if r and "skipped" not in r]

    provenance = previous.provenance.model_copy(deep=True)
    if "image" in seeds:
        k, seed = seeds["image"]
        image_seeds = list(provenance.seeds.get("images", []))
        if k < len(image_seeds):
            image_seeds[k] = seed
        provenance.seeds["images"] = image_seeds
    for k, seed in seeds.get("sections", {}).items():
        provenance.seeds.setdefault("sections", {})[k] = seed
    name, fell_back = fallback
    kept = [f for f in provenance.fallbacks if f != name]
    provenance.fallbacks = sorted([*kept, name]) if fell_back else kept

    if grounded is None:  # an image redraw: the citations stay as they are
        grounded = article_grounding(store, article_id, request)
    article = assemble.assemble(
        article_id, request, outline, bodies, images, provenance, previous.created_at, grounded
    )
    article = seo.fill(
        article.model_copy(update={"revision": revision, "updated_at": assemble.now_iso()})
    )
    edit = store.get(article_id, "edit") or {}
    if edit.get("revision") == revision:
        edit.update(status="succeeded", error=None)
    values: dict[str, Any] = {
        "article": article.model_dump(mode="json"),
        "revision": revision,
        f"revision:{revision}": article.model_dump(mode="json"),
        f"revision:{previous.revision}": previous.model_dump(mode="json"),
        "sections": bodies,
        **({"grounding": grounded.record()} if grounded is not None else {}),
        **{f"image:{k}": r for k, r in enumerate(records) if r is not None},
        "edit": edit,
    }
    mapping = {k: json.dumps(v) for k, v in values.items()}

    # Storage first, as for a finished article: what Redis will show already survives it.
    if not has_revision(store, article_id, previous.revision):
        save_revision(store, previous)
    save_revision(store, article)
    store.save_article(status_view(article_id, {**fields, **mapping}))

    commit = store.redis.register_script(_COMMIT)
    args: list[Any] = [revision]
    for k, v in mapping.items():
        args += [k, v]
    if commit(keys=[store.key(article_id)], args=args):
        logger.info("article %s: revision %d committed", article_id, revision)
    store.redis.srem(EDITING, article_id)
    store.refresh_ttl(article_id)
    store.publish(article_id)
    enqueue_event(store, config, article_id, "article.updated", f"r{revision}", revision)
    republish_after_revision(store, config, article_id)  # the same post gets the new revision
