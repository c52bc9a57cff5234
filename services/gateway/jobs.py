"""RQ jobs: one per pipeline stage, one per image, then assemble and the webhook.

``enqueue_article`` queues the text stages at submission with ``depends_on``: outline ->
sections -> image prompts. The stages overlap where the graph allows, and no worker ever blocks
waiting for another: the sections job writes the image prompts beside the sections
(``pipeline.write_text``: the featured image's at once, image k's once section k-1's lead is
known) and queues each image's job (on the ``images`` queue) the moment its prompt exists, so
images are drawn while the text is still being written. The image prompts job, after the
sections, writes any prompt still missing, queues any image not yet queued and then assemble,
which depends on the image jobs. Every job id is fixed (``{article}-image-{k}``), so a stage
that runs again finds the jobs it queued before and queues none twice. A failing stage fails
the article (``on_failure``), cancels what is left, and sends the `article.failed` webhook. Jobs
re-read the article's status before working, so a cancelled article stops at the next stage or
image step.

Crash recovery (docs/reliability.md): every stage carries an RQ ``Retry``. When its worker dies,
RQ finds the job abandoned (``services.gateway.worker`` makes that take seconds) and runs it
again on another worker. So any stage may run twice, even at once (a killed worker's orphaned
work horse can finish beside the retry), and every write here is keyed, never an increment:
each stage owns its hash fields and overwrites them, image ids are claimed once per article and
index, the token count is set from this run's count, images_done is recounted from the image
fields, and the webhook job is queued once per article under a fixed id (and its
``webhook-id`` is stable, so a receiver can drop a redelivery).

An article requested with ``"review": "outline"`` stops after its outline (``pause_for_review``);
``editorial`` approves it and queues the rest with ``enqueue_after_outline``. What every job
needs comes from ``job_base``; this module sits above it, ``webhook_jobs`` and ``publish.job``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from redis import Redis
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import AbandonedJobError, InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from services.common.errors import ArticleforgeError
from services.common.limits import seed_or_random
from services.gateway import assemble, grounding, pipeline, signing
from services.gateway.config import GatewaySettings
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
from services.gateway.previews import PreviewThrottle
from services.gateway.publish.job import enqueue_publish, load_record
from services.gateway.schemas import ArticleRequest, ErrorInfo
from services.gateway.sources import Source, load_sources
from services.gateway.store import ArticleStore
from services.gateway.views import status_view
from services.gateway.webhook_jobs import enqueue_event, enqueue_webhook
from services.gateway.webhook_jobs import webhook_job as webhook_job  # the path older jobs name

logger = logging.getLogger(__name__)

PROGRESS_EVERY_SECONDS = 0.25
REVIEWS = "af:reviews"  # article id -> Unix time its outline review expires


class Stopped(Exception):
    """The article reached a terminal state (cancelled) while this job ran."""


# --- submission and cancellation ---


def stage_options(
    config: GatewaySettings,
    article_id: str,
    request_id: str,
    stage: str,
    index: int | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"article_id": article_id, "request_id": request_id, "stage": stage}
    if index is not None:
        meta["index"] = index
    job_id = f"{article_id}-{stage}" if index is None else f"{article_id}-image-{index}"
    return job_options(config, job_id, meta, on_stage_failure)


def record_fields(request: ArticleRequest, request_id: str, scope: str) -> dict[str, Any]:
    """The fields a new article record starts with (``ArticleStore.create``)."""
    return {
        "request": request.model_dump(mode="json"),
        "request_id": request_id,
        "key": scope,
        "text_seed": seed_or_random(request.text.seed),
        "image_seed": seed_or_random(request.images.seed),
        "images_total": request.images.count,
        "expected_tokens": pipeline.estimate_tokens(request),
    }


def enqueue_article(
    store: ArticleStore,
    config: GatewaySettings,
    article_id: str,
    request: ArticleRequest,
    request_id: str,
) -> list[str]:
    articles = Queue(ARTICLES_QUEUE, connection=store.redis)
    outline = articles.enqueue(
        outline_job, article_id, **stage_options(config, article_id, request_id, "outline")
    )
    if request.review == "outline":  # the rest waits for the review (services.gateway.editorial)
        store.put(article_id, jobs=[outline.id])
        return [outline.id]
    return enqueue_after_outline(store, config, article_id, request, request_id, outline)


def enqueue_after_outline(
    store: ArticleStore,
    config: GatewaySettings,
    article_id: str,
    request: ArticleRequest,
    request_id: str,
    outline: Job | None = None,
) -> list[str]:
    """Sections -> image prompts after ``outline`` (or at once); the image jobs and assemble
    are queued by those two as their inputs come to exist. Returns every job id the article
    will have (the later ones are fixed in advance, so a cancel finds them)."""
    articles = Queue(ARTICLES_QUEUE, connection=store.redis)

    def options(stage: str) -> dict[str, Any]:
        return stage_options(config, article_id, request_id, stage)

    sections = articles.enqueue(sections_job, article_id, depends_on=outline, **options("sections"))
    prompts = articles.enqueue(
        image_prompts_job, article_id, depends_on=sections, **options("image_prompts")
    )
    images = [image_job_id(article_id, k) for k in range(request.images.count)]
    ids = [f"{article_id}-outline", sections.id, prompts.id, *images, f"{article_id}-assemble"]
    store.put(article_id, jobs=ids)
    return ids


def image_job_id(article_id: str, index: int) -> str:
    return f"{article_id}-image-{index}"


def _request_id(store: ArticleStore, article_id: str) -> str:
    return str(store.get(article_id, "request_id") or "")


def enqueue_image(store: ArticleStore, config: GatewaySettings, article_id: str, k: int) -> None:
    """Queues image k's job once its prompt is stored, unless it is queued already (a stage
    that runs again) or the article is over."""
    if store.is_over(article_id) or Job.exists(image_job_id(article_id, k), store.redis):
        return
    job = Queue(IMAGES_QUEUE, connection=store.redis).enqueue(
        image_job,
        article_id,
        k,
        **stage_options(config, article_id, _request_id(store, article_id), "images", k),
    )
    _cancel_if_over(store, article_id, job)


def _cancel_if_over(store: ArticleStore, article_id: str, job: Job) -> None:
    """A cancel that landed while ``job`` was being queued missed it: cancel it now."""
    if store.is_over(article_id):
        with contextlib.suppress(InvalidJobOperation):
            job.cancel()


def enqueue_assemble(store: ArticleStore, config: GatewaySettings, article_id: str) -> None:
    """Queues assemble after every image job not yet finished (at once when none is left)."""
    job_id = f"{article_id}-assemble"
    if store.is_over(article_id) or Job.exists(job_id, store.redis):
        return
    count = int(store.redis.hget(store.key(article_id), "images_total") or 0)
    ids = [image_job_id(article_id, k) for k in range(count)]
    waiting = [
        job
        for job in Job.fetch_many(ids, connection=store.redis)
        if job is not None and job.get_status(refresh=False) != JobStatus.FINISHED
    ]
    job = Queue(ARTICLES_QUEUE, connection=store.redis).enqueue(
        assemble_job,
        article_id,
        depends_on=waiting or None,
        **stage_options(config, article_id, _request_id(store, article_id), "assemble"),
    )
    _cancel_if_over(store, article_id, job)


def cancel(store: ArticleStore, config: GatewaySettings, article_id: str) -> bool:
    """Cancels the article unless it already ended: its jobs are dropped or stopped and
    `article.cancelled` is sent. Returns whether this call cancelled it."""
    if not store.transition(article_id, "cancelled"):
        return False
    stop_jobs(store.redis, store.get(article_id, "jobs") or [])
    enqueue_webhook(store, config, article_id, "article.cancelled")
    return True


def stop_jobs(connection: Redis, job_ids: list[str]) -> None:
    """Drops queued and deferred jobs; asks workers to kill running ones."""
    for job_id in job_ids:
        try:
            job = Job.fetch(job_id, connection=connection)
        except NoSuchJobError:
            continue
        status = job.get_status(refresh=False)
        try:
            if status == JobStatus.STARTED:
                send_stop_job_command(connection, job_id)
            elif status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
                job.cancel()
        except InvalidJobOperation:
            pass  # it finished in between


def on_stage_failure(
    job: Job, connection: Redis, exc_type: type, value: BaseException, traceback: Any
) -> None:
    """RQ calls this for every failure of a stage, also for one it is about to retry (and
    ``worker.on_horse_killed`` for a killed work horse): a lost worker or Redis runs the stage
    again; anything else fails the article, cancels what is left of it and announces it."""
    if runs_again(job, exc_type):
        logger.warning(
            "article %s: stage %s lost its worker or Redis (%s); running it again "
            "(%d retries left)",
            job.meta["article_id"],
            job.meta.get("stage"),
            exc_type.__name__,
            job.retries_left,
        )
        return
    _fail_article(job, connection, exc_type, value)


def _fail_article(job: Job, connection: Redis, exc_type: type, value: BaseException) -> None:
    article_id = job.meta["article_id"]
    config = settings()
    store = store_for(config, connection)
    kind = (
        value.type
        if isinstance(value, ArticleforgeError)
        else ("timeout" if "Timeout" in exc_type.__name__ else "internal_error")
    )
    message = str(value) or exc_type.__name__
    if issubclass(exc_type, AbandonedJobError):
        kind = "worker_lost"
        message = f"the worker running this stage died {config.stage_retries + 1} times"
    # The documented stage names (`images`, not the job id's `image-0`); older jobs kept those.
    # An error may name its own stage (the sources, loaded by the outline job).
    stage = getattr(value, "stage", None) or job.meta.get("stage")
    if isinstance(stage, str) and stage.startswith("image-"):
        stage = "images"
    error = ErrorInfo(type=kind, message=message, stage=stage)
    logger.error("article %s: stage %s failed: %s", article_id, error.stage, error.message)
    if store.transition(article_id, "failed", error=error.model_dump_json()):
        stop_jobs(connection, [j for j in store.get(article_id, "jobs") or [] if j != job.id])
        enqueue_webhook(store, config, article_id, "article.failed")


# --- the stages ---


def _begin(
    store: ArticleStore, article_id: str, stage: str, status: str, show: bool = True
) -> ArticleRequest:
    """Checks that the article goes on and, with ``show``, shows ``stage`` (forward only: an
    image drawn beside the sections never moves the stage shown back)."""
    adopt_request_id(store, article_id)
    if store.is_over(article_id):
        raise Stopped(article_id)
    if show:
        store.advance_stage(article_id, stage, status)
    return ArticleRequest.model_validate(store.get(article_id, "request"))


# Timings and fallbacks are one hash field each, so image jobs on different workers never
# overwrite each other's entries (a read-modify-write of one JSON field would).


def _timed(store: ArticleStore, article_id: str, stage: str, started: float) -> None:
    store.put(article_id, **{f"timing:{stage}": round(time.monotonic() - started, 3)})


def _add_fallbacks(store: ArticleStore, article_id: str, new: list[str]) -> None:
    if new:
        store.put(article_id, **{f"fallback:{name}": True for name in new})


def _collected(fields: dict[str, str], prefix: str) -> dict[str, Any]:
    return {
        k.removeprefix(prefix): json.loads(v) for k, v in fields.items() if k.startswith(prefix)
    }


def _throttled(action: Callable[[], None]) -> Callable[[], None]:
    last = 0.0

    def maybe() -> None:
        nonlocal last
        if time.monotonic() - last >= PROGRESS_EVERY_SECONDS:
            last = time.monotonic()
            action()

    return maybe


class SourcesUnusable(ArticleforgeError):
    """Sources were given and none of them could be used."""

    status_code = 422
    type = "sources_unusable"
    stage = "sources"


def article_sources(
    store: ArticleStore,
    config: GatewaySettings,
    article_id: str,
    request: ArticleRequest,
    stage: str = "outline",
) -> list[Source]:
    """The article's sources, loaded once (a re-run of the stage reads what the first kept):
    in Redis for the status, and on disk beside the article. None usable fails the article at
    stage `sources`."""
    if not request.sources:
        return []
    kept = store.get(article_id, "sources")
    if kept is None:
        store.stage(article_id, "sources", "writing")
        started = time.monotonic()
        loaded = asyncio.run(
            load_sources(
                request.sources,
                allow_private=config.sources_allow_private,
                allow_networks=config.source_networks,
                user_agent=config.sources_user_agent,
            )
        )
        kept = [s.model_dump(mode="json") for s in loaded]
        store.save_sources(article_id, kept)
        store.put(article_id, sources=kept)
        _timed(store, article_id, "sources", started)
        store.stage(article_id, stage, "writing")
        for source in loaded:
            if source.error is not None:
                logger.warning("article %s: %s", article_id, source.error.message)
    sources = [Source.model_validate(s) for s in kept]
    if not grounding.usable(sources):
        problems = "; ".join(s.error.message for s in sources if s.error is not None)
        raise SourcesUnusable(f"none of the {len(sources)} sources could be used: {problems}")
    return sources


def outline_job(article_id: str) -> None:
    config, store = settings(), store_for(settings())
    try:
        request = _begin(store, article_id, "outline", "writing")
    except Stopped:
        return
    sources = article_sources(store, config, article_id, request)
    started = time.monotonic()
    outline = asyncio.run(
        pipeline.write_outline(
            text_backend(config), request, store.get(article_id, "text_seed"), sources
        )
    )
    store.put(article_id, outline=asdict(outline))
    _add_fallbacks(store, article_id, ["outline"] if outline.fallback else [])
    _timed(store, article_id, "outline", started)
    logger.info(
        "article %s: outline %r, %d sections", article_id, outline.title, len(outline.headings)
    )
    if request.review == "outline":
        pause_for_review(store, config, article_id)


def pause_for_review(store: ArticleStore, config: GatewaySettings, article_id: str) -> None:
    """`writing` -> `awaiting_review`, with the review's deadline noted in ``REVIEWS`` (the
    workers' maintenance pass cancels it then: ``editorial.expire_reviews``)."""
    expires = time.time() + config.review_timeout_seconds
    if store.swap(
        article_id, "writing", "awaiting_review", stage="outline", review_expires=str(expires)
    ):
        store.redis.zadd(REVIEWS, {article_id: expires})
        enqueue_event(store, config, article_id, "article.awaiting_review", "review")
        logger.info("article %s: outline awaits review", article_id)


def sections_job(article_id: str) -> None:
    config, store = settings(), store_for(settings())
    try:
        request = _begin(store, article_id, "sections", "writing")
    except Stopped:
        return
    started = time.monotonic()
    outline = pipeline.Outline(**store.get(article_id, "outline"))
    # Set, never incremented, so a re-run after a crash counts once: while streaming, the tokens
    # this run has seen; at the end, what the text service says each section cost.
    streamed = 0
    usage: dict[int, int] = {}
    publish = _throttled(lambda: store.publish(article_id))

    def on_delta(_: str) -> None:
        nonlocal streamed
        streamed += 1
        if streamed % 8 == 0:
            store.put(article_id, tokens=streamed)
            publish()

    def on_image_prompt(k: int, prompt: str, fell_back: bool) -> None:
        # Stored, then its image queued at once: drawn while the sections are still written.
        store.put(article_id, **{f"image_prompt:{k}": prompt})
        _add_fallbacks(store, article_id, [f"image_prompt:{k}"] if fell_back else [])
        _timed(store, article_id, "image_prompts", started)  # the last prompt's time stays
        enqueue_image(store, config, article_id, k)

    backend = text_backend(config)
    # Loaded by the outline job; again here when an editor replaced them at the review.
    article_sources(store, config, article_id, request, stage="sections")
    grounded = article_grounding(store, article_id, request)
    bodies, prompts, fallbacks = asyncio.run(
        pipeline.write_text(
            backend,
            request,
            outline,
            store.get(article_id, "text_seed"),
            on_delta,
            usage.__setitem__,
            grounded,
            on_image_prompt,
        )
    )
    if grounded is not None:
        store.put(article_id, grounding=grounded.record())
    models = asyncio.run(backend.models())
    # Provenance: the card of the model (or adapter) that actually wrote the sections.
    card: dict[str, Any] = next(
        (m for m in models.get("data", []) if m.get("id") == backend.answered_by), {}
    )
    store.put(
        article_id,
        sections=bodies,
        image_prompts=prompts,
        text_model=card,
        tokens=sum(usage.values()),
    )
    _add_fallbacks(store, article_id, fallbacks)
    _timed(store, article_id, "sections", started)
    store.publish(article_id)
    logger.info(
        "article %s: %d sections and %d image prompts written",
        article_id,
        len(bodies),
        len(prompts),
    )


def article_grounding(
    store: ArticleStore, article_id: str, request: ArticleRequest
) -> grounding.Grounding | None:
    """The sources kept by the outline job, ready to give passages; None without sources."""
    kept = store.get(article_id, "sources")
    if not request.sources or not kept:
        return None
    config = settings()
    grounded = grounding.Grounding(
        [Source.model_validate(s) for s in kept],
        require=request.require_citations,
        embedding_model=config.sources_embedding_model,
        cache_dir=config.resolved_cache_dir(),
    )
    record = store.get(article_id, "grounding")
    if record:
        grounded.restore(record)
    return grounded


def image_prompts_job(article_id: str) -> None:
    """After the sections: the prompts still missing (none, unless the sections were written
    by a job that wrote no prompts, as before the stages overlapped), every image job not yet
    queued, then assemble."""
    config, store = settings(), store_for(settings())
    try:
        request = _begin(store, article_id, "image_prompts", "writing")
    except Stopped:
        return
    started = time.monotonic()
    fields = store.fields(article_id)
    count = request.images.count
    prompts: dict[int, str] = {
        k: json.loads(fields[f"image_prompt:{k}"])
        for k in range(count)
        if f"image_prompt:{k}" in fields
    }
    missing = [k for k in range(count) if k not in prompts]
    if missing:
        outline = pipeline.Outline(**json.loads(fields["outline"]))
        sections = json.loads(fields["sections"])
        written, fallbacks = asyncio.run(
            pipeline.write_image_prompts(
                text_backend(config), request, outline, sections, int(fields["text_seed"])
            )
        )
        for k in missing:
            prompts[k] = written[k]
            store.put(article_id, **{f"image_prompt:{k}": written[k]})
        _add_fallbacks(store, article_id, [f for f in fallbacks if int(f.split(":")[1]) in missing])
        _timed(store, article_id, "image_prompts", started)
    store.put(article_id, image_prompts=[prompts[k] for k in range(count)], prompts_done=True)
    for k in range(count):
        enqueue_image(store, config, article_id, k)
    enqueue_assemble(store, config, article_id)
    if count and int(store.redis.hget(store.key(article_id), "images_done") or 0) < count:
        store.advance_stage(article_id, "images", "illustrating")


def image_job(article_id: str, index: int) -> None:
    config, store = settings(), store_for(settings())
    try:
        # Drawn beside the sections, the stage shown stays theirs until the prompts stage ends.
        text_done = bool(store.get(article_id, "prompts_done"))
        request = _begin(store, article_id, "images", "illustrating", show=text_done)
    except Stopped:
        return
    started = time.monotonic()
    prompt = store.get(article_id, f"image_prompt:{index}")
    if prompt is None:  # queued by a job that kept only the list
        prompt = store.get(article_id, "image_prompts")[index]
    seed = int(store.get(article_id, "image_seed")) + index
    publish = _throttled(lambda: store.publish(article_id))
    previews = PreviewThrottle(config.preview_interval_ms / 1000)

    def keep_preview(kept: tuple[int, str]) -> None:
        store.image_preview(article_id, index, *kept)
        store.publish(article_id)  # at once: every kept preview reaches an event

    def on_step(step: int, steps: int, preview: str | None) -> None:
        if store.is_over(article_id):
            raise Stopped(article_id)  # closing the stream interrupts the image pipeline
        store.image_step(article_id, index, step, steps)
        if not config.preview_interval_ms or (
            preview is not None and len(preview) > config.preview_max_bytes
        ):
            preview = None  # off, or too large for an event (a full-size TAESD preview)
        kept = previews.due(step, preview)
        if kept is not None:
            keep_preview(kept)
        else:
            publish()

    backend = image_backend(config)
    if not backend.step_progress:  # drawing, with no steps to show (an OpenAI image server)
        store.put(article_id, **{f"image_started:{index}": time.time()})
        store.publish(article_id)
    try:
        reply = asyncio.run(backend.generate(pipeline.image_body(request, prompt, seed), on_step))
    except Stopped:
        logger.info("article %s: image %d stopped (article over)", article_id, index)
        return
    image = reply["images"][0]
    outline = pipeline.Outline(**store.get(article_id, "outline"))
    caption = pipeline.image_subjects(outline, request.images.count)[index]
    last = previews.flush()
    if last is not None and not image.get("nsfw"):  # a flagged picture's last state stays unsent
        keep_preview(last)
    if image.get("nsfw") or not image.get("b64_png"):
        _add_fallbacks(store, article_id, [f"image:{index}:nsfw"])
        store.image_done(article_id, index, {"skipped": "nsfw"})
        return
    image_id = claim_image_id(store, article_id, f"image_id:{index}")
    record = keep_image(
        config, store, image_id, reply, prompt, caption, request, style=request.images.style
    )
    store.image_done(article_id, index, record)
    _timed(store, article_id, f"image_{index}", started)
    logger.info(
        "article %s: image %d/%d done (%s)", article_id, index + 1, request.images.count, image_id
    )


def claim_image_id(store: ArticleStore, article_id: str, field: str) -> str:
    """The first run of a job picks the image's id (kept in ``field``); a re-run reuses it and
    overwrites the same PNG."""
    store.redis.hsetnx(store.key(article_id), field, json.dumps("img_" + secrets.token_hex(12)))
    return str(store.get(article_id, field))


def keep_image(
    config: GatewaySettings,
    store: ArticleStore,
    image_id: str,
    reply: dict[str, Any],
    prompt: str,
    caption: str,
    request: ArticleRequest,
    style: str | None,
) -> dict[str, Any]:
    """Saves the image service's (first) image as ``image_id``; returns its article record."""
    image = reply["images"][0]
    store.save_image(image_id, base64.b64decode(image["b64_png"]))
    ref = assemble.image_ref(
        image_id,
        signing.signed_image_url(config, image_id),
        prompt,
        int(image["seed"]),
        int(image["width"]),
        int(image["height"]),
        caption,
        style=style,
        language=request.language,
    )
    return {**ref.model_dump(), "model": reply.get("model")}


def assemble_job(article_id: str) -> None:
    config, store = settings(), store_for(settings())
    if store.status(article_id) == "succeeded":
        # A re-run: the last worker died after `succeeded` and maybe before the webhook.
        enqueue_webhook(store, config, article_id, "article.succeeded")
        _publish_when_asked(store, config, article_id)
        return
    try:
        request = _begin(store, article_id, "assemble", "assembling")
    except Stopped:
        return
    started = time.monotonic()
    fields = store.fields(article_id)
    outline = pipeline.Outline(**json.loads(fields["outline"]))
    records = store.images(article_id, request.images.count)
    images = [assemble.ImageRef.model_validate(r) for r in records if r and "skipped" not in r]
    image_model = next((r.get("model") for r in records if r and r.get("model")), None)
    served: dict[str, Any] = json.loads(fields.get("text_model", "{}"))
    timings = _collected(fields, "timing:")
    timings["assemble"] = round(time.monotonic() - started, 3)
    provenance = assemble.provenance(
        request,
        text_model=served.get("root"),
        adapter=served.get("id") if served.get("parent") else None,
        image_model=image_model,
        text_seed=int(fields["text_seed"]),
        image_seeds=[int(fields["image_seed"]) + k for k in range(request.images.count)],
        timings=timings,
        fallbacks=sorted(_collected(fields, "fallback:")),
    )
    created = status_view(article_id, fields).timestamps.get("created", assemble.now_iso())
    article = assemble.assemble(
        article_id,
        request,
        outline,
        json.loads(fields["sections"]),
        images,
        provenance,
        created,
        article_grounding(store, article_id, request),
    )
    store.put(article_id, article=article.model_dump(mode="json"))
    # Disk first: once a client sees `succeeded`, the article already survives Redis.
    final = status_view(
        article_id,
        {
            **store.fields(article_id),
            "status": "succeeded",
            "stage": "done",
            "finished": str(time.time()),
        },
    )
    store.save_article(final)
    if store.transition(article_id, "succeeded", stage="done"):
        enqueue_webhook(store, config, article_id, "article.succeeded")
        _publish_when_asked(store, config, article_id)
    logger.info("article %s: succeeded (%d words)", article_id, article.word_count)


def _publish_when_asked(store: ArticleStore, config: GatewaySettings, article_id: str) -> None:
    """The request's `publish`, queued once (a re-run finds the record and leaves it)."""
    request = ArticleRequest.model_validate(store.get(article_id, "request"))
    if request.publish is None or load_record(store, article_id, request.publish.target):
        return
    request_id = str(store.get(article_id, "request_id") or "")
    enqueue_publish(store, config, article_id, request.publish, request_id)
