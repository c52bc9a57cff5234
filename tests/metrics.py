"""Reading Prometheus samples from /metrics text in tests."""

from __future__ import annotations


def sample(metrics_text: str, name: str, **labels: str) -> float:
    """One Prometheus sample's value from /metrics text (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0
