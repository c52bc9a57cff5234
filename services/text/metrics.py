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
    "Requests admitted together in one engine step (they join the running batch).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
QUEUE_DEPTH = Gauge(
    "articleforge_text_queue_depth", "Requests accepted and waiting to join the running batch."
)
RUNNING = Gauge("articleforge_text_running_requests", "Requests in the running batch.")
KV_USAGE = Gauge("articleforge_text_kv_cache_usage", "Share of KV-cache pages held (0 to 1).")
KV_CAPACITY = Gauge("articleforge_text_kv_cache_tokens", "KV-cache capacity in tokens.")
PROMPT_TOKENS = Counter(
    "articleforge_text_prompt_tokens_total", "Prompt tokens of requests admitted to the batch."
)
PREFIX_CACHE_HIT_TOKENS = Counter(
    "articleforge_text_prefix_cache_hit_tokens_total",
    "Prompt tokens taken from the prefix cache instead of being prefilled.",
)
PREFIX_CACHE_HITS = Counter(
    "articleforge_text_prefix_cache_hits_total",
    "Admitted requests that found at least one KV page of their prompt in the prefix cache.",
)
PREFILL_CHUNKS = Counter(
    "articleforge_text_prefill_chunks_total", "Prompt chunks prefilled (a long prompt has several)."
)
STEP_SECONDS = Histogram(
    "articleforge_text_step_seconds",
    "Wall time of one engine step (schedule, forward, sample, hand out), by kind: `decode` "
    "(decode rows only; CUDA-graph replays on a GPU) or `mixed` (with prompt chunks). Its "
    "count is the number of steps.",
    ["kind"],
    buckets=(0.002, 0.004, 0.006, 0.008, 0.012, 0.016, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
