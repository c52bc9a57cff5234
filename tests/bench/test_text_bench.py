"""bench/text_bench.py measures the text service on the GPU machine; here it runs end to end on
the CPU with a 2-layer model of the same tokenizer: real servers, real HTTP, both baselines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
@pytest.mark.slow
def test_the_text_benchmark_measures_every_scenario_through_http(tmp_path: Path) -> None:
    out = tmp_path / "results" / "text_bench_cpu.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "text_bench.py"),
            "--model=tiny",
            "--device=cpu",
            "--new-tokens=6",
            "--prompt-tokens=16",
            "--prompt-range=8,40",
            "--levels=1,2",
            "--nf4-levels=2",
            "--requests-per-client=2",
            "--repeats=2",
            "--nf4-repeats=1",
            "--env=ARTICLEFORGE_TEXT_BATCH_WAIT_MS=20",
            f"--work-dir={tmp_path / 'work'}",
            f"--out={out}",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["errors"] == []
    scenarios = report["scenarios"]
    assert set(scenarios) == {
        "baseline_bf16",
        "baseline_nf4_lora",
        "single",
        "sweep",
        "nf4_single",
        "nf4_concurrent",
    }
    for key in ("baseline_bf16", "baseline_nf4_lora"):
        assert scenarios[key]["runs"][0]["new_tokens"] == 6  # min_new_tokens: all of them
        assert scenarios[key]["tok_s"] > 0
    for key in ("single", "nf4_single"):
        assert scenarios[key]["completion_tokens"] > 0 and scenarios[key]["tok_s_median"] > 0
    assert [level["concurrency"] for level in scenarios["sweep"]] == [1, 2]
    for level in [*scenarios["sweep"], *scenarios["nf4_concurrent"]]:
        assert level["errors"] == 0 and level["requests"] == 2 * level["concurrency"]
        assert level["completion_tokens"] > 0 and level["aggregate_tok_s"] > 0
        assert level["ttft_p50_s"] > 0
    for summary in (scenarios["single"], *scenarios["sweep"]):
        assert summary["prompt_tokens_mismatch"] == 0  # the service counted the planned length
    # Every request is kept, with the server's own timings; the nf4 ones went to the adapter.
    records = report["records"]
    assert len(records) == 2 + 2 + 4 + 1 + 4
    assert all(r["ok"] and r["ttft_s"] > 0 for r in records)
    servers = {s["name"]: s for s in report["servers"]}
    assert servers["nf4_lora"]["env"]["ARTICLEFORGE_TEXT_QUANTIZATION"] == "nf4"
    assert servers["bf16"]["env"]["ARTICLEFORGE_TEXT_BATCH_WAIT_MS"] == "20"  # --env passes on
    assert all(s["ready_s"] > 0 and Path(s["log"]).exists() for s in servers.values())
    assert report["versions"]["torch"] and report["card"]
    assert "| fp32 (CPU), 1 stream" in result.stdout  # the summary table

    png = tmp_path / "plot.png"
    plotted = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "plot_text_bench.py"), str(out), f"--out={png}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plotted.returncode == 0, plotted.stderr[-3000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
