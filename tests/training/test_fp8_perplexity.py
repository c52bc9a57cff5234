"""FP8 on the tiny trained model: held-out perplexity within 2 % of the same model without it.

The tiny base with the LoRA adapter that ``lora_run`` trains (merged, as the service merges a
single adapter on a 16/32-bit base), scored on the run's validation split the way
``training/evaluate.py`` and ``/v1/perplexity`` score it, through the engine's forward; once in
bf16 and float32 and once more with FP8 linear layers. On the CPU the FP8 products come from
torch's reference ``_scaled_mm`` (the service itself refuses fp8 there).
"""

from __future__ import annotations

from pathlib import Path


def test_fp8_keeps_held_out_perplexity_within_two_percent(lora_run: Path, cache_dir: Path) -> None:
    from bench.fp8_accuracy import tiny_perplexity  # torch: not at collection

    report = tiny_perplexity(lora_run, cache_dir, "cpu", ("bfloat16", "float32"))
    for dtype in ("bfloat16", "float32"):
        plain, quantized = report[f"{dtype}_none"], report[f"{dtype}_fp8"]
        assert plain["tokens"] == quantized["tokens"] > 100
        assert plain["perplexity"] != quantized["perplexity"]  # fp8 did run
        assert abs(report[f"{dtype}_fp8_ratio"] - 1) < 0.02, report
