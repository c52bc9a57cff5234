"""Correctness smoke of the text engine on CUDA (tiny model): bf16 and nf4, batched and alone.

Not a speed benchmark. Run on the GPU machine:
    python bench/text_engine_smoke.py --out "$OUT/text_engine_smoke.json"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from services.text.config import TextSettings
from services.text.engine import TextEngine
from services.text.loading import load_text_model
from services.text.schemas import GenerateRequest

PROMPTS = ["Write about solar power.", "Gardening in spring", "The history of printing runs"]


async def run_all(engine: TextEngine, bodies: list[dict[str, Any]]) -> list[str]:
    async def one(body: dict[str, Any]) -> str:
        request = GenerateRequest.model_validate(body)
        prepared = engine.prepare(request.to_prompt(), request.to_sampling_params(), None, "gpu")
        return (await engine.submit(prepared).wait()).text

    return list(await asyncio.gather(*(one(b) for b in bodies)))


def check(quantization: str, cache: Path) -> dict[str, Any]:
    settings = TextSettings(
        cache_dir=cache,
        text_device="cuda",
        text_quantization=quantization,
        text_batch_wait_ms=100,
        _env_file=None,
    )  # type: ignore[call-arg]
    engine = TextEngine(settings, load_text_model(settings))
    engine.warmup()
    engine.start()
    try:
        bodies = [
            {"prompt": p, "temperature": t, "seed": 3, "max_new_tokens": 24}
            for p in PROMPTS
            for t in (0.0, 0.9)
        ]
        alone = [asyncio.run(run_all(engine, [b]))[0] for b in bodies]
        together = asyncio.run(run_all(engine, bodies))
        again = asyncio.run(run_all(engine, bodies))
    finally:
        engine.shutdown()
    return {
        "quantization": quantization,
        "dtype": str(next(engine.loaded.model.parameters()).dtype),
        "batched_equals_alone": [a == b for a, b in zip(alone, together, strict=True)],
        "seeded_repeat_equal": together == again,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        results = [check(q, Path(cache)) for q in ("none", "nf4")]
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
