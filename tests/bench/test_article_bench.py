"""bench/article_bench.py measures whole articles on the GPU machine; here it runs end to end on
the CPU with the 2-layer text shape and the small SD-1.5 shape: its own Redis, the real services,
gateway and workers, real HTTP. And its prompt-token figures when the text service has no
prefix-cache counters to read."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.article_bench import PROMPT_COUNTERS, prompt_tokens, text_counters
from tests.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


def _consistent(tokens: dict[str, Any]) -> None:
    """Hits within what was submitted, and the share computed that they give."""
    submitted, hit = tokens["submitted"], tokens["prefix_cache_hit_tokens"]
    assert isinstance(submitted, int) and submitted > 0
    assert isinstance(hit, int) and 0 <= hit <= submitted
    requests = tokens["prefix_cache_hit_requests"]
    assert isinstance(requests, int) and 0 <= requests <= hit
    assert tokens["computed"] == submitted - hit
    assert tokens["computed_share"] == round(1 - hit / submitted, 3)
    assert tokens["goal_met"] == (tokens["computed_share"] <= tokens["goal_computed_share_max"])


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="the bench starts redis-server")
def test_the_article_benchmark_runs_the_stack_and_counts_prompt_tokens(tmp_path: Path) -> None:
    out = tmp_path / "results" / "article_bench_cpu.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.article_bench",
            "--device=cpu",
            "--text-shape=tiny",
            "--image-shape=sd15-small",
            "--articles=2",
            "--workers=2",
            "--words=120",
            "--sections=2",
            "--images=1",
            "--steps=2",
            "--ready-timeout=240",
            f"--models={tmp_path / 'models'}",
            f"--logs={tmp_path / 'logs'}",
            f"--out={out}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert "error" not in report, report["error"]
    assert report["one_article"]["succeeded"] == 1
    assert report["concurrent"]["succeeded"] == 2 and report["concurrent"]["articles_per_hour"]

    fields = {*PROMPT_COUNTERS, "computed", "computed_share", "goal_computed_share_max", "goal_met"}
    for phase in ("one_article", "concurrent"):
        tokens = report[phase]["prompt_tokens"]
        assert set(tokens) == fields
        if tokens["submitted"] is None:  # a text service without the counters: nulls, no crash
            assert tokens["computed_share"] is None and tokens["goal_met"] is None
            continue
        _consistent(tokens)
    # One article's two sections start with the same preamble, and its two image prompts with
    # the same rules and topic: where the service has a prefix cache, some of that is a hit.
    alone = report["one_article"]["prompt_tokens"]
    if alone["prefix_cache_hit_tokens"] is not None:
        assert alone["prefix_cache_hit_tokens"] > 0 and alone["prefix_cache_hit_requests"] > 0
    assert "| phase | prompt tokens submitted | from the prefix cache |" in result.stdout
    assert "| 2 at once |" in result.stdout


def test_missing_counters_give_nulls_not_a_crash() -> None:
    # A port with nothing on it: /metrics does not answer, and every counter reads as None.
    nothing = text_counters(f"http://127.0.0.1:{free_port()}")
    assert nothing == dict.fromkeys(PROMPT_COUNTERS)
    tokens = prompt_tokens(nothing, nothing)
    assert tokens["submitted"] is None and tokens["computed_share"] is None
    assert tokens["goal_met"] is None
    # A service that counts prompt tokens but has no prefix cache: the submitted count only.
    before = {
        "submitted": 100.0,
        "prefix_cache_hit_tokens": None,
        "prefix_cache_hit_requests": None,
    }
    after = {**before, "submitted": 350.0}
    tokens = prompt_tokens(before, after)
    assert tokens["submitted"] == 250 and tokens["prefix_cache_hit_tokens"] is None
    assert tokens["computed"] is None and tokens["computed_share"] is None
    # Both: 1 - hit / submitted.
    with_cache = prompt_tokens(
        {"submitted": 0.0, "prefix_cache_hit_tokens": 0.0, "prefix_cache_hit_requests": 0.0},
        {"submitted": 1000.0, "prefix_cache_hit_tokens": 640.0, "prefix_cache_hit_requests": 9.0},
    )
    _consistent(with_cache)
    assert with_cache["computed"] == 360 and with_cache["computed_share"] == 0.36
    assert with_cache["goal_met"] is True
