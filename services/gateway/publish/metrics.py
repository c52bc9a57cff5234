"""Publishing metrics, kept in Redis by the workers that publish and read by the gateway.

Publishes run in worker processes, which nobody scrapes (and which may run on other hosts), so
each worker adds its counts to Redis hashes and the gateway's ``/metrics`` reads them through a
collector (``PublishCollector``) at each scrape:

- ``articleforge_gateway_publish_total{target, outcome}``: publishes that ended, `published`
  or `failed`;
- ``articleforge_gateway_publish_attempts_total{target, result}``: attempts, `ok`, `retried`
  (a 429, 5xx or no answer, tried again) or `failed` (the last one, or a CMS refusal);
- ``articleforge_gateway_publish_duration_seconds{target}``: a histogram of each attempt's time;
- ``articleforge_gateway_publish_attempts_per_publish{target}``: a histogram of the attempts
  a publish took.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

COUNTS = "af:metrics:publish"
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
ATTEMPT_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0, 8.0)


def _observe(pipe: Any, name: str, target: str, value: float, buckets: tuple[float, ...]) -> None:
    for bound in buckets:
        if value <= bound:
            pipe.hincrby(COUNTS, f"{name}|{target}|{bound}", 1)
    pipe.hincrby(COUNTS, f"{name}|{target}|+Inf", 1)
    pipe.hincrbyfloat(COUNTS, f"{name}_sum|{target}", value)


def attempt(redis: Any, target: str, result: str, seconds: float) -> None:
    pipe = redis.pipeline(transaction=False)
    pipe.hincrby(COUNTS, f"attempts_total|{target}|{result}", 1)
    _observe(pipe, "duration", target, max(0.0, seconds), DURATION_BUCKETS)
    pipe.execute()


def finished(redis: Any, target: str, outcome: str, attempts: int) -> None:
    pipe = redis.pipeline(transaction=False)
    pipe.hincrby(COUNTS, f"total|{target}|{outcome}", 1)
    _observe(pipe, "attempts", target, float(max(1, attempts)), ATTEMPT_BUCKETS)
    pipe.execute()


class PublishCollector(Collector):
    """The workers' counts as last read from Redis (``load``, before each scrape)."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def load(self, redis: Any) -> None:
        raw = redis.hgetall(COUNTS)
        self.values = {k.decode(): float(v) for k, v in raw.items()}

    def collect(self) -> Iterator[Any]:
        values = self.values
        total = CounterMetricFamily(
            "articleforge_gateway_publish_total",
            "Publishes that ended, by target and outcome.",
            labels=["target", "outcome"],
        )
        attempts = CounterMetricFamily(
            "articleforge_gateway_publish_attempts_total",
            "Publish attempts by target and result (ok, retried, failed).",
            labels=["target", "result"],
        )
        for name, value in sorted(values.items()):
            kind, _, rest = name.partition("|")
            if kind == "total":
                total.add_metric(rest.split("|"), value)
            elif kind == "attempts_total":
                attempts.add_metric(rest.split("|"), value)
        yield total
        yield attempts
        yield self._histogram(
            values,
            "duration",
            "articleforge_gateway_publish_duration_seconds",
            "Seconds each publish attempt took.",
            DURATION_BUCKETS,
        )
        yield self._histogram(
            values,
            "attempts",
            "articleforge_gateway_publish_attempts_per_publish",
            "Attempts each ended publish took.",
            ATTEMPT_BUCKETS,
        )

    @staticmethod
    def _histogram(
        values: dict[str, float], name: str, metric: str, doc: str, buckets: tuple[float, ...]
    ) -> HistogramMetricFamily:
        family = HistogramMetricFamily(metric, doc, labels=["target"])
        targets = sorted({k.split("|")[1] for k in values if k.startswith(f"{name}|")})
        for target in targets:
            counts = [
                (str(bound), values.get(f"{name}|{target}|{bound}", 0.0)) for bound in buckets
            ]
            counts.append(("+Inf", values.get(f"{name}|{target}|+Inf", 0.0)))
            family.add_metric([target], counts, values.get(f"{name}_sum|{target}", 0.0))
        return family
