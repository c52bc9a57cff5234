"""Prometheus metrics of the image service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "articleforge_image_requests_total",
    "Image requests by outcome (success, error, cancelled, rejected).",
    ["status"],
)
IMAGES = Counter("articleforge_image_images_total", "Images generated and returned.")
NSFW = Counter("articleforge_image_nsfw_total", "Images the safety checker flagged.")
STEPS = Counter(
    "articleforge_image_steps_total",
    "Denoising steps run (one per pipeline step, whatever the batch size).",
)
SECONDS_PER_IMAGE = Histogram(
    "articleforge_image_seconds_per_image",
    "Pipeline time of a batch divided by the images in it.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
ENCODE_SECONDS = Histogram(
    "articleforge_image_encode_seconds",
    "Time to encode one PNG (in the encoder pool, beside the pipeline).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_SIZE = Histogram(
    "articleforge_image_batch_size",
    "Images generated together in one pipeline call (its count is the number of calls).",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
QUEUE_DEPTH = Gauge(
    "articleforge_image_queue_depth", "Requests admitted and waiting for a pipeline call."
)
