"""bench/text_bench.py measures the text service on the GPU machine; here it runs end to end on
the CPU with a 2-layer model of the same tokenizer: real servers, real HTTP, both baselines,
every scenario at toy sizes (fp8 is refused on a CPU, and the bench records the refusal)."""

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
            "--fp8-levels=2",
            "--burst-size=4",
            # P is 200 tokens; a hit shares its first 150, of which 9 pages of 16 can be cached.
            "--prefix-prompt-tokens=200",
            "--prefix-shared-tokens=150",
            "--prefix-repeats=2",
            "--prefix-concurrency=4",
            "--prefix-system-tokens=60",
            "--prefix-distinct-range=8,24",
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
        "burst",
        "single",
        "sweep",
        "prefix",
        "prefix_shared",
        "fp8",
        "fp8kv",
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
    # single + sweep + nf4 single + nf4 levels + 2 bursts + prefix (P, 2 hits, 2 misses)
    # + shared prefix (the system prompt, then 4 at once twice)
    assert len(records) == 2 + 2 + 4 + 1 + 4 + 2 * 4 + 5 + 9
    assert all(r["ok"] and r["ttft_s"] > 0 for r in records)
    assert all(r["prompt_tokens"] == r["prompt_tokens_sent"] for r in records)
    servers = {s["name"]: s for s in report["servers"]}
    assert servers["nf4_lora"]["env"]["ARTICLEFORGE_TEXT_QUANTIZATION"] == "nf4"
    assert servers["bf16"]["env"]["ARTICLEFORGE_TEXT_BATCH_WAIT_MS"] == "20"  # --env passes on
    started = [servers["bf16"], servers["nf4_lora"]]
    assert all(s["ready_s"] > 0 and Path(s["log"]).exists() for s in started)
    assert report["versions"]["torch"] and report["card"]
    assert "| fp32 (CPU), 1 stream" in result.stdout  # the summary table

    # fp8 needs FP8 tensor cores: on a CPU the server refuses to start, and the bench records
    # the sentence it said and goes on (no error, the nf4 server still ran).
    refusal = scenarios["fp8"]["refused"]
    assert "ARTICLEFORGE_TEXT_QUANTIZATION=fp8" in refusal and "\n" not in refusal
    assert servers["fp8"]["refused"] == refusal and "ready_s" not in servers["fp8"]
    assert servers["fp8"]["env"]["ARTICLEFORGE_TEXT_QUANTIZATION"] == "fp8"
    assert "fp8_single" not in scenarios and "| fp8: the server refused to start" in result.stdout
    # fp8kv (fp8 weights and an E4M3 KV cache) is refused by the same sentence and recorded.
    assert scenarios["fp8kv"]["refused"] == refusal == servers["fp8kv"]["refused"]
    assert servers["fp8kv"]["env"]["ARTICLEFORGE_TEXT_KV_CACHE_DTYPE"] == "fp8"

    # The burst is the bf16 server's first traffic: no warm-up request before it.
    burst = scenarios["burst"]
    assert "warm_request" not in servers["bf16"] and "warm_request" in servers["nf4_lora"]
    assert [r["scenario"] for r in records[:4]] == ["burst_first"] * 4
    assert burst["size"] == 4 and burst["startup_s"] == pytest.approx(
        servers["bf16"]["ready_s"], abs=0.1
    )
    assert burst["first"]["sent_after_ready_s"] < 1.0
    for round_name in ("first", "warm"):
        summary = burst[round_name]
        assert summary["ok"] == summary["requests"] == 4
        assert summary["ttft_p50_s"] > 0 and summary["ttft_p95_s"] >= summary["ttft_p50_s"]
        assert summary["aggregate_tok_s"] > 0
    assert burst["ttft_p50_first_over_warm"] > 0
    assert "burst: 4 at once right after /readyz" in result.stdout

    # A hit shares exactly 150 tokens with P: every whole page of them (144) comes from the
    # cache. The counts come from usage.prompt_tokens_details, null only where the service
    # does not report them at all.
    prefix = scenarios["prefix"]
    assert prefix["page_size"] == 16 and prefix["cacheable_tokens"] == 144
    assert prefix["hit"]["ok"] == prefix["miss"]["ok"] == 2
    assert prefix["hit"]["ttft_p50_s"] > 0 and prefix["miss"]["ttft_p50_s"] > 0
    hits, misses = prefix["hit"]["cached_tokens_runs"], prefix["miss"]["cached_tokens_runs"]
    if prefix["prime"]["cached_tokens"] is None:
        assert hits == misses == [None, None]
    else:
        assert hits == [144, 144] and misses == [0, 0]
    assert "| prefix hit: 200-token prompt" in result.stdout

    # 4 at once on a 60-token shared prefix (48 cacheable each), then the same lengths fresh.
    shared = scenarios["prefix_shared"]
    assert shared["cacheable_tokens_per_request"] == 48
    hit, miss = shared["hit"], shared["miss"]
    assert hit["ok"] == miss["ok"] == 4 and hit["ttft_p95_s"] >= hit["ttft_p50_s"] > 0
    if None in hit["counters"].values():
        assert hit["cached_share"] is None
    else:
        cached = hit["counters"]["articleforge_text_prefix_cache_hit_tokens_total"]
        assert (
            cached == 4 * 48 and hit["counters"]["articleforge_text_prefix_cache_hits_total"] == 4
        )
        assert hit["counters"]["articleforge_text_prompt_tokens_total"] == hit["prompt_tokens"]
        assert hit["cached_share"] == pytest.approx(4 * 48 / hit["prompt_tokens"])
        assert miss["cached_share"] == 0
    if hit["cached_tokens"] is not None:
        assert hit["cached_tokens"] == 4 * 48 and miss["cached_tokens"] == 0

    png = tmp_path / "plot.png"
    plotted = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "plot_text_bench.py"), str(out), f"--out={png}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plotted.returncode == 0, plotted.stderr[-3000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
