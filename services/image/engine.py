"""The image engine: one thread owns the pipeline and draws compatible requests together.

Requests are checked and given their defaults and seeds on the caller's side (``prepare``),
admitted against the queue bound (``submit``), then picked up by the engine thread. It takes the
oldest waiting request, waits up to ``batch_wait_ms`` (counted from that request's arrival) for
others with the same size, steps, scheduler and guidance, and runs them as one pipeline call of
at most ``max_batch_size`` images. Each image keeps its own prompt, negative prompt and CPU
generator, so image k of a request with seed s is the image a lone request with seed s + k
draws, batched or not. Every call gets a fresh scheduler (diffusers schedulers hold state).

Progress flows back per step through ``callback_on_step_end``; when every request of a call has
been cancelled (its client left) the callback interrupts the pipeline. ``_call_pipeline`` is the
only code that runs the model: it decodes to uint8 on the device and, with compile on, pads the
batch to a compiled bucket. The safety checker runs batched on the device too. The PNGs are
encoded in a thread pool while this thread starts the next batch; a request is answered when its
last PNG is done.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from services.common.errors import ArticleforgeError, InvalidRequest, Overloaded
from services.common.handles import EngineHandle
from services.image import metrics
from services.image.acceleration import StepCache, compile_cache_counts
from services.image.config import ImageSettings
from services.image.deep_cache import DeepCache
from services.image.infotext import ImageParameters, encode_png
from services.image.loading import LoadedPipeline
from services.image.preview import PendingPreview
from services.image.schedulers import check_steps, make_scheduler
from services.image.schemas import MAX_SEED, ImageParams

logger = logging.getLogger(__name__)

BatchKey = tuple[int, int, int, str, float]  # width, height, steps, scheduler, guidance


@dataclass
class ImageJob:
    """A prepared request: checked, with every default and seed resolved."""

    request_id: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    scheduler: str
    seeds: tuple[int, ...]
    stream: bool = False
    arrival: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> BatchKey:
        """Requests with equal keys can share a pipeline call."""
        return (self.width, self.height, self.steps, self.scheduler, self.guidance_scale)


@dataclass
class Progress:
    step: int
    steps: int
    preview_b64: str | None = None


@dataclass
class OutputImage:
    png: bytes | None  # None when the safety checker flagged it
    seed: int
    width: int
    height: int
    nsfw: bool


@dataclass
class ImageResult:
    images: list[OutputImage]
    model: str
    scheduler: str
    steps: int
    guidance_scale: float
    queue_seconds: float
    inference_seconds: float
    total_seconds: float
    seconds_per_image: float
    batch_size: int


class ImageHandle(EngineHandle[ImageResult]):
    """An image request's handle: ``progress()`` yields a ``Progress`` per step."""

    def __init__(self, engine: ImageEngine, job: ImageJob) -> None:
        super().__init__(engine)
        self.job = job

    def progress(self) -> AsyncIterator[Progress]:
        return self.updates()


class ImageEngine:
    def __init__(self, settings: ImageSettings, loaded: LoadedPipeline) -> None:
        self.settings = settings
        self.loaded = loaded
        self._cond = threading.Condition()
        self._pending: list[ImageHandle] = []
        self._admitted = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        # Pillow releases the GIL while it compresses, so these encode in parallel.
        self._encoder = ThreadPoolExecutor(
            settings.image_encode_threads, thread_name_prefix="image-png"
        )
        # Step progress and previews leave the engine thread through this one thread, in order.
        self._progress = ThreadPoolExecutor(1, thread_name_prefix="image-progress")

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Future[None]:
        """Starts the engine thread, which warms up before it takes requests.

        The returned future resolves once the warm-up is done (or fails with its error). The
        warm-up runs on the engine thread itself: CUDA graphs (torch.compile's
        `reduce-overhead` and `max-autotune` modes) belong to the thread that recorded them.
        """
        warmed: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._loop, args=(warmed,), name="image-engine", daemon=True
        )
        self._thread.start()
        return warmed

    def shutdown(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self._encoder.shutdown(wait=True)  # the PNGs under way are still answered
        self._progress.shutdown(wait=True)

    def warmup(self) -> None:
        """Short (2-step) calls at the sizes and batch buckets that the settings name.

        Without compile: one image at the native size. With compile, this is where
        torch.compile pays its compile time, once per (size, bucket); each shape runs to
        compile, to record its CUDA graphs (`reduce-overhead`), so that the first request of
        that shape is fast, and then, at the default step count and at 2 steps, to time it for
        the batcher. A shape not warmed up still works; its first request compiles it.
        """
        loaded, settings = self.loaded, self.settings
        accel = loaded.acceleration
        sizes = settings.warmup_sizes() or [(loaded.default_width, loaded.default_height)]
        buckets = accel.buckets if accel.compiled else [1]
        began, (hits_before, misses_before) = time.monotonic(), compile_cache_counts()
        for width, height in sizes:
            for size in buckets:
                job = ImageJob(
                    request_id="warmup",
                    prompt="warm up",
                    negative_prompt="",
                    width=width,
                    height=height,
                    steps=2,
                    guidance_scale=settings.image_default_guidance_scale,
                    scheduler=settings.image_default_scheduler,
                    seeds=tuple(range(size)),
                )
                key = (width, height, size, job.guidance_scale > 1)
                accel.note_shape(key)  # it compiles here, as expected
                # Compiled: the first run compiles, the second records the CUDA graphs, and the
                # next ones time the shape for the batcher at the default step count and at 2
                # steps: two points that part a call's fixed cost (text encoder, VAE) from its
                # cost per step, so that requests of other step counts are judged right too.
                plan = [(2, False)]
                if accel.compiled:
                    plan += [(2, False), (settings.image_default_steps, True)]
                    if settings.image_default_steps != 2:
                        plan.append((2, True))
                for steps, timed in plan:
                    job.steps = steps
                    started = time.monotonic()
                    images = self._call_pipeline(
                        job, ["warm up"] * size, [""] * size, list(job.seeds), None
                    )
                    to_uint8(images)  # waits for the device, as a real call does
                    if timed:
                        accel.observe(key, steps, time.monotonic() - started, warmup=True)
                    logger.info(
                        "image model %s: warm-up %dx%d, batch of %d, %d steps: %.2fs",
                        loaded.model_name,
                        width,
                        height,
                        size,
                        job.steps,
                        time.monotonic() - started,
                    )
        if accel.compiled:
            hits, misses = compile_cache_counts()
            logger.info(
                "image model %s: warm-up done in %.1fs; compiled graphs: %d loaded from the "
                "compile cache, %d compiled anew",
                loaded.model_name,
                time.monotonic() - began,
                hits - hits_before,
                misses - misses_before,
            )

    # --- the caller's side -------------------------------------------------------------------

    def prepare(
        self, params: ImageParams, request_id: str, *, stream: bool = False, size_param: str = ""
    ) -> ImageJob:
        """Resolves defaults and checks the limits the schema cannot see; raises 400s."""
        settings, loaded = self.settings, self.loaded
        limit = settings.image_max_prompt_length
        for name, text in (("prompt", params.prompt), ("negative_prompt", params.negative_prompt)):
            if len(text) > limit:
                raise InvalidRequest(
                    f"{name} is {len(text)} characters long; the limit is {limit} "
                    "(ARTICLEFORGE_IMAGE_MAX_PROMPT_LENGTH)",
                    param=name,
                )
        width = params.width or loaded.default_width
        height = params.height or loaded.default_height
        for name, side in (("width", width), ("height", height)):
            if side > settings.image_max_side:
                raise InvalidRequest(
                    f"{name} must be <= {settings.image_max_side} "
                    f"(ARTICLEFORGE_IMAGE_MAX_SIDE), got {side}",
                    param=size_param or name,
                )
            if side < loaded.min_side:
                raise InvalidRequest(
                    f"{name} must be >= {loaded.min_side} for this model, got {side}",
                    param=size_param or name,
                )
        if params.n > settings.image_max_batch_size:
            raise InvalidRequest(
                f"n must be <= {settings.image_max_batch_size} "
                f"(ARTICLEFORGE_IMAGE_MAX_BATCH_SIZE), got {params.n}",
                param="n",
            )
        seed = params.seed if params.seed is not None else secrets.randbelow(MAX_SEED + 1 - 8)
        if seed + params.n - 1 > MAX_SEED:
            raise InvalidRequest(
                f"seed + n - 1 must be <= {MAX_SEED} (image k uses seed + k), got "
                f"{seed + params.n - 1}",
                param="seed",
            )
        scheduler = params.scheduler or settings.image_default_scheduler
        steps = params.steps or settings.image_default_steps
        check_steps(scheduler, steps, loaded.scheduler_config)
        guidance = params.guidance_scale
        return ImageJob(
            request_id=request_id,
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            width=width,
            height=height,
            steps=steps,
            guidance_scale=settings.image_default_guidance_scale if guidance is None else guidance,
            scheduler=scheduler,
            seeds=tuple(seed + k for k in range(params.n)),
            stream=stream,
        )

    def submit(self, job: ImageJob) -> ImageHandle:
        """Admits a prepared request, or raises 429 when the queue is full."""
        handle = ImageHandle(self, job)
        with self._cond:
            if self._admitted >= self.settings.image_max_queue:
                metrics.REQUESTS.labels("rejected").inc()
                raise Overloaded(
                    f"the image queue is full ({self.settings.image_max_queue} requests, "
                    "ARTICLEFORGE_IMAGE_MAX_QUEUE); retry later",
                    retry_after=2,
                )
            self._admitted += 1
            self._pending.append(handle)
            metrics.QUEUE_DEPTH.set(len(self._pending))
            self._cond.notify_all()
        return handle

    def release(self, handle: ImageHandle, status: str) -> None:
        with self._cond:
            if handle.finalized:
                return
            handle.finalized = True
            self._admitted -= 1
        metrics.REQUESTS.labels(status).inc()

    # --- the engine thread ---------------------------------------------------------------------

    def _loop(self, warmed: Future[None]) -> None:
        if not warmed.set_running_or_notify_cancel():  # the app stopped before we began
            return
        try:
            self.warmup()
        except Exception as exc:
            warmed.set_exception(exc)
            return
        warmed.set_result(None)
        while True:
            batch = self._next_batch()
            if batch is None:
                break
            self._run_batch(batch)
        self._fail_pending()

    def _next_batch(self) -> list[ImageHandle] | None:
        """The oldest request plus compatible ones, once the batch is full or its window closed.

        The window closes ``image_batch_wait_ms`` after the oldest request arrived, or sooner,
        once no compatible request has arrived for ``image_batch_quiet_ms``.
        """
        wait = self.settings.image_batch_wait_ms / 1000
        quiet = self.settings.image_batch_quiet_ms / 1000
        limit = self.settings.image_max_batch_size
        with self._cond:
            while True:
                self._pending = [h for h in self._pending if not h.cancelled.is_set()]
                if self._stopping:
                    return None
                if not self._pending:
                    metrics.QUEUE_DEPTH.set(0)
                    self._cond.wait()
                    continue
                first = self._pending[0]
                compatible = [h for h in self._pending if h.job.key == first.job.key]
                images = sum(len(h.job.seeds) for h in compatible)
                closes = first.job.arrival + wait
                if quiet > 0:
                    closes = min(closes, max(h.job.arrival for h in compatible) + quiet)
                remaining = closes - time.monotonic()
                if images >= limit or remaining <= 0:
                    batch = self._cut(compatible, limit)
                    taken = {id(h) for h in batch}
                    self._pending = [h for h in self._pending if id(h) not in taken]
                    metrics.QUEUE_DEPTH.set(len(self._pending))
                    return batch
                self._cond.wait(timeout=remaining)

    def _cut(self, compatible: list[ImageHandle], limit: int) -> list[ImageHandle]:
        """The requests to draw now, oldest first, at most ``limit`` images.

        Without compile, as many as fit. With compile, each bucket below the limit is tried as
        the batch's size too (taking fewer images, the rest waiting for the next call): the one
        that the measured step times say draws the most images per second wins, so 5 waiting
        images may run as 4 + 1 rather than as 8 with 3 padded rows, when that is faster.
        """
        accel = self.loaded.acceleration
        job = compatible[0].job
        sizes = [limit]
        if accel.compiled:
            sizes += [b for b in reversed(accel.buckets) if b < limit]
        best: tuple[float, list[ImageHandle]] | None = None
        for size in sizes:
            taken: list[ImageHandle] = []
            images = 0
            for handle in compatible:
                n = len(handle.job.seeds)
                if images + n <= size:
                    taken.append(handle)
                    images += n
            if not taken or taken[0] is not compatible[0]:
                continue  # the oldest request always goes first
            guided = job.guidance_scale > 1
            speed = accel.images_per_second(job.width, job.height, images, guided, job.steps)
            if best is None or speed > best[0] * 1.02:  # ties go to the larger batch
                best = (speed, taken)
        assert best is not None  # `limit` always fits the oldest request (n <= limit)
        return best[1]

    def _fail_pending(self) -> None:
        with self._cond:
            pending, self._pending = self._pending, []
        for handle in pending:
            handle.push("error", ArticleforgeError("the image service is shutting down"))
            self.release(handle, "error")

    def _run_batch(self, handles: list[ImageHandle]) -> None:
        handles = [h for h in handles if not h.cancelled.is_set()]
        if not handles:
            return
        job = handles[0].job
        prompts: list[str] = []
        negatives: list[str] = []
        seeds: list[int] = []
        offsets: list[int] = []
        for handle in handles:
            offsets.append(len(prompts))
            for seed in handle.job.seeds:
                prompts.append(handle.job.prompt)
                negatives.append(handle.job.negative_prompt)
                seeds.append(seed)
        metrics.BATCH_SIZE.observe(len(prompts))
        started = time.monotonic()
        steps_run = 0

        def on_step(
            pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            nonlocal steps_run
            steps_run += 1
            metrics.STEPS.inc()
            step, total = index + 1, int(pipe.num_timesteps)
            every, previewer = self.settings.image_preview_every, self.loaded.previewer
            due = bool(every) and step % every == 0 and previewer is not None
            live = False
            for handle, offset in zip(handles, offsets, strict=True):
                if handle.cancelled.is_set():
                    continue
                live = True
                if not handle.job.stream:
                    continue
                # The preview is made on the device and copied without a sync; the progress
                # thread waits for it, encodes it and sends the step, in step order.
                preview = None
                if due and previewer is not None:
                    preview = previewer.start(tensors["latents"][offset])
                self._progress.submit(self._send_progress, handle, step, total, preview)
            if not live:
                # Every client has left: diffusers' documented way to stop the denoising loop.
                pipe._interrupt = True
            return tensors

        try:
            images = self._call_pipeline(job, prompts, negatives, seeds, on_step)
            live = [h for h in handles if not h.cancelled.is_set()]
            if not live:
                logger.info(
                    "image batch of %d: every client left; stopped after %d of %d steps",
                    len(prompts),
                    steps_run,
                    job.steps,
                )
                return
            flags = (
                self.loaded.safety.flags(images) if self.loaded.safety else [False] * len(prompts)
            )
            pixels = to_uint8(images)
        except Exception as exc:  # a failed batch fails its requests, not the engine
            logger.exception("image batch of %d failed", len(prompts))
            for handle in handles:
                if not handle.cancelled.is_set():
                    handle.push("error", ArticleforgeError(f"image generation failed: {exc}"))
                    self.release(handle, "error")
            return
        elapsed = time.monotonic() - started
        accel = self.loaded.acceleration
        if accel.compiled and steps_run:
            guided = job.guidance_scale > 1
            key = (job.width, job.height, accel.bucket(len(prompts)), guided)
            accel.observe(key, steps_run, elapsed)
        per_image = elapsed / len(prompts)
        for _ in prompts:
            metrics.SECONDS_PER_IMAGE.observe(per_image)
        batch = BatchFacts(job, started, elapsed, per_image, len(prompts))
        for handle, offset in zip(handles, offsets, strict=True):
            if handle.cancelled.is_set():
                continue
            rows = range(offset, offset + len(handle.job.seeds))
            self._encode(handle, batch, [(pixels[r], seeds[r], flags[r]) for r in rows])

    @staticmethod
    def _send_progress(
        handle: ImageHandle, step: int, steps: int, preview: PendingPreview | None
    ) -> None:
        try:
            png = None if preview is None else preview.png_b64()
        except Exception:  # a lost preview must not lose the step (or the request)
            logger.exception("request %s: step preview failed", handle.job.request_id)
            png = None
        handle.push("update", Progress(step, steps, png))

    def _encode(
        self, handle: ImageHandle, batch: BatchFacts, rows: list[tuple[np.ndarray, int, bool]]
    ) -> None:
        """Encodes a request's images in the pool; the last one to finish answers it."""
        futures = [
            self._encoder.submit(self._output, handle.job, pixels, seed, nsfw)
            for pixels, seed, nsfw in rows
        ]
        remaining = [len(futures)]
        lock = threading.Lock()

        def finished(_: Future[OutputImage]) -> None:
            with lock:
                remaining[0] -= 1
                if remaining[0]:
                    return
            self._answer(handle, batch, futures)

        for future in futures:
            future.add_done_callback(finished)

    def _answer(
        self, handle: ImageHandle, batch: BatchFacts, futures: list[Future[OutputImage]]
    ) -> None:
        if handle.cancelled.is_set():
            return
        job = batch.job
        try:
            images = [future.result() for future in futures]
        except Exception as exc:
            logger.exception("request %s: PNG encoding failed", handle.job.request_id)
            handle.push("error", ArticleforgeError(f"image encoding failed: {exc}"))
            self.release(handle, "error")
            return
        end = time.monotonic()
        result = ImageResult(
            images=images,
            model=self.loaded.model_name,
            scheduler=job.scheduler,
            steps=job.steps,
            guidance_scale=job.guidance_scale,
            queue_seconds=batch.started - handle.job.arrival,
            inference_seconds=batch.elapsed,
            total_seconds=end - handle.job.arrival,
            seconds_per_image=batch.per_image,
            batch_size=batch.size,
        )
        metrics.IMAGES.inc(len(images))
        handle.push("done", result)
        self.release(handle, "success")
        logger.info(
            "request %s: %d image(s) %dx%d, %d steps %s, batch of %d, %.2fs",
            handle.job.request_id,
            len(images),
            job.width,
            job.height,
            job.steps,
            job.scheduler,
            batch.size,
            result.total_seconds,
        )

    def _output(self, job: ImageJob, pixels: np.ndarray, seed: int, nsfw: bool) -> OutputImage:
        if nsfw:
            metrics.NSFW.inc()
            logger.info("request %s: the safety checker flagged seed %d", job.request_id, seed)
            return OutputImage(None, seed, job.width, job.height, True)
        params = ImageParameters(
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            steps=job.steps,
            scheduler=job.scheduler,
            guidance_scale=job.guidance_scale,
            seed=seed,
            width=job.width,
            height=job.height,
            model=self.loaded.model_name,
        )
        started = time.monotonic()
        png = encode_png(pixels, params, compress_level=self.settings.image_png_compress_level)
        metrics.ENCODE_SECONDS.observe(time.monotonic() - started)
        return OutputImage(png, seed, job.width, job.height, False)

    def _call_pipeline(
        self,
        job: ImageJob,
        prompts: list[str],
        negatives: list[str],
        seeds: list[int],
        on_step: Any,
    ) -> torch.Tensor:
        """One pipeline call: NCHW images in [0, 1] on the device, one per prompt.

        With compile on, the batch is padded up to its bucket (the padded rows repeat the last
        prompt with seed 0 and are dropped); a shape never run before compiles now, and says so.
        """
        loaded = self.loaded
        pipe = loaded.pipe
        pipe.scheduler = make_scheduler(job.scheduler, loaded.scheduler_config)
        count = len(prompts)
        size = loaded.acceleration.bucket(count)
        if size > count:
            prompts = prompts + [prompts[-1]] * (size - count)
            negatives = negatives + [negatives[-1]] * (size - count)
            seeds = seeds + [0] * (size - count)
        key = (job.width, job.height, size, job.guidance_scale > 1)
        if loaded.acceleration.note_shape(key):
            logger.warning(
                "image model %s: compiling for %dx%d, batch of %d%s (a shape the warm-up did "
                "not cover; ARTICLEFORGE_IMAGE_WARMUP_SIZES adds it): this request waits",
                loaded.model_name,
                job.width,
                job.height,
                size,
                "" if job.guidance_scale > 1 else ", no guidance",
            )
        # CPU generators: the same seed gives the same starting noise on any device.
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        caching: Any = contextlib.nullcontext()
        if self.settings.image_step_cache_interval > 1:
            denoiser = getattr(pipe, "unet", None) or pipe.transformer
            cache = StepCache(self.settings.image_step_cache_interval)
            caching = cache.around(denoiser, job.steps)
        elif self.settings.image_deep_cache_interval > 1:  # the settings refuse both at once
            deep_cache = DeepCache(self.settings.image_deep_cache_interval)
            caching = deep_cache.around(getattr(pipe, "unet", None) or pipe.transformer, job.steps)
        with torch.inference_mode(), caching:
            out = pipe(
                prompt=prompts,
                negative_prompt=negatives,
                width=job.width,
                height=job.height,
                num_inference_steps=job.steps,
                guidance_scale=job.guidance_scale,
                generator=generators,
                output_type="pt",
                callback_on_step_end=on_step,
            )
        return out.images[:count]


@dataclass
class BatchFacts:
    """What a request's answer reports about the pipeline call it was drawn in."""

    job: ImageJob
    started: float
    elapsed: float
    per_image: float
    size: int


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """NCHW floats in [0, 1] on any device to NHWC uint8 on the CPU (rounded as diffusers' PIL
    output is); the conversion runs on the device, so only bytes cross to the host."""
    with torch.inference_mode():
        scaled = images.float().mul(255).round().clamp(0, 255).to(torch.uint8)
        return scaled.permute(0, 2, 3, 1).contiguous().cpu().numpy()
