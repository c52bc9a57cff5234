"""Prometheus metrics of the text service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "articleforge_text_requests_total",
    "Generation requests by outcome (success, error, cancelled, rejected).",
    ["status"],
)
GENERATED_TOKENS = Counter(
    "articleforge_text_generated_tokens_total", "Tokens generated, all requests."
)
TIME_TO_FIRST_TOKEN = Histogram(
    "articleforge_text_time_to_first_token_seconds",
    "From arrival to the first generated token.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_SIZE = Histogram(
    "articleforge_text_batch_size",
    "Requests decoded together in one batch.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
QUEUE_DEPTH = Gauge("articleforge_text_queue_depth", "Requests admitted and waiting for a batch.")
