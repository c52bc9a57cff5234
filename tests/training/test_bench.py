"""bench/qlora_train.py measures on the GPU machine; here its code path runs on a 2-layer model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.training.conftest import ROOT


def test_the_qlora_benchmark_runs_every_planned_variant(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "qlora_train.py"),
            "--tiny",
            "--out",
            str(out),
            "--variants",
            "baseline,bf16w",
            "--workloads",
            "uniform,articles",
            "--steps",
            "2",
            "--warmup",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    runs = {(r["variant"], r["workload"]): r for r in report["results"]}
    # Uniform batches for both; on article-length rows the baseline padded and packed, ours packed.
    assert set(runs) == {
        ("baseline", "uniform"),
        ("bf16w", "uniform"),
        ("baseline", "articles"),
        ("baseline+packed", "articles"),
        ("bf16w+packed", "articles"),
    }
    for run in runs.values():
        assert run["error"] is None and run["tokens_per_s"] > 0 and run["steps"] == 2
    assert runs[("baseline", "articles")]["padding_fraction"] > 0
    assert runs[("baseline+packed", "articles")]["padding_fraction"] == 0
    assert (
        report["summary"]["uniform"]["baseline_tokens_per_s"]
        == runs[("baseline", "uniform")]["tokens_per_s"]
    )
    assert "| uniform | baseline |" in result.stdout  # the table for docs/benchmarks.md
