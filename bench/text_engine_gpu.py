"""GPU checks and in-process speed of the text engine (no HTTP), with a profile.

Checks the Triton paged-decode kernel against the torch reference, the lean Llama against
transformers' logits, then builds a Llama-2-7B-shaped random-weight model on the card, warms
the engine up (KV sizing, CUDA graphs) and measures one stream and concurrent mixes in
process, with a torch.profiler summary of decode steps. Run on the GPU machine:

    python bench/text_engine_gpu.py --out "$OUT/text_engine_gpu.json"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch


def kernel_check() -> list[dict[str, Any]]:
    from services.text.attention import decode_attention_torch, decode_attention_triton

    rows_out = []
    torch.manual_seed(0)
    for rows, heads, kv_heads in ((1, 32, 32), (7, 32, 8), (64, 32, 32)):
        pages, page, dim = 4000, 16, 128
        k = torch.randn(pages, page, kv_heads, dim, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        width = 200
        tables = torch.stack(
            [torch.randperm(pages - 1, device="cuda")[:width] + 1 for _ in range(rows)]
        )
        tables = tables.to(torch.int32)
        lengths = torch.randint(1, width * page, (rows,), device="cuda", dtype=torch.int32)
        lengths[0] = 1
        q = torch.randn(rows, heads, dim, device="cuda", dtype=torch.bfloat16)
        ref = decode_attention_torch(q.float(), k.float(), v.float(), tables, lengths)
        for splits in (1, 4, 16):
            out = decode_attention_triton(q, k, v, tables, lengths, splits).float()
            err = float((out - ref).norm() / ref.norm())
            rows_out.append(
                {
                    "rows": rows,
                    "heads": heads,
                    "kv_heads": kv_heads,
                    "splits": splits,
                    "rel_err": err,
                }
            )
    return rows_out


def config(layers: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def random_model(layers: int) -> Any:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(config(layers), dtype=torch.bfloat16)
    for p in model.parameters():  # HF init is ~N(0, 0.02); keep activations in a sane range
        p.data.normal_(0, 0.02) if p.dim() > 1 else p.data.fill_(1.0)
    return model.eval()


def logits_check() -> dict[str, Any]:
    from services.text.llama import LeanLlama, StepInputs

    hf = random_model(2)
    ids = torch.randint(3, 32000, (96,), device="cuda")
    with torch.inference_mode():
        ref = hf(input_ids=ids[None]).logits[0].float()
    lean = LeanLlama(hf, [], 4096)
    out = lean.forward(
        ids, torch.arange(96, device="cuda"), StepInputs(slots=None), None, None, None
    )
    return {"lean_vs_hf_rel_err": float((out.float() - ref).norm() / ref.norm())}


def tokenizer() -> Any:
    """The benchmark's 32000-entry byte-level tokenizer: every id decodes to text."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from text_bench import build_tokenizer

    return build_tokenizer(32000)


def engine(rows: int, graphs: bool, quantization: str = "none", kv_dtype: str = "auto") -> Any:
    from services.text.config import TextSettings
    from services.text.engine import TextEngine
    from services.text.loading import BASE_ADAPTER, LoadedModel

    model = random_model(32)
    tok = tokenizer()
    loaded = LoadedModel(
        model=model,
        tokenizer=tok,
        device=torch.device("cuda"),
        base_name="rand7b",
        served={"rand7b": BASE_ADAPTER},
        default_name="rand7b",
        context_window=4096,
    )
    settings = TextSettings(
        text_max_batch_size=rows,
        text_cuda_graphs=graphs,
        text_max_queue=1024,
        text_device="cuda",
        text_quantization=quantization,
        text_kv_cache_dtype=kv_dtype,
        _env_file=None,
    )  # type: ignore[call-arg]
    eng = TextEngine(settings, loaded)
    started = time.monotonic()
    eng.warmup()
    return eng, time.monotonic() - started


async def run_requests(
    eng: Any, specs: list[tuple[int, int, float]], seed: int
) -> list[dict[str, Any]]:
    from services.text.request import GenerationRequest
    from services.text.schemas import SamplingParams

    rng = random.Random(seed)

    async def one(i: int, prompt: int, new: int, temp: float) -> dict[str, Any]:
        ids = [1] + [rng.randrange(3, 32000) for _ in range(prompt - 1)]
        params = SamplingParams(max_new_tokens=new, temperature=temp, top_p=1.0)
        req = GenerationRequest(f"b{i}", ids, params, new, i, "rand7b", "__base__")
        t = time.monotonic()
        res = await eng.submit(req).wait()
        return {
            "prompt": prompt,
            "tokens": res.usage.completion_tokens,
            "wall": time.monotonic() - t,
            "ttft": res.time_to_first_token_seconds,
            "total": res.total_seconds,
        }

    return list(await asyncio.gather(*(one(i, *s) for i, s in enumerate(specs))))


def summary(records: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    tokens = sum(r["tokens"] for r in records)
    ttft = sorted(r["ttft"] for r in records)
    return {
        "requests": len(records),
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "tok_per_s": round(tokens / wall, 1),
        "ttft_p50": round(statistics.median(ttft), 4),
        "ttft_p95": round(ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))], 4),
    }


def measure(eng: Any, label: str, specs: list[tuple[int, int, float]]) -> dict[str, Any]:
    async def go() -> tuple[list[dict[str, Any]], float]:
        t = time.monotonic()
        recs = await run_requests(eng, specs, 1)
        return recs, time.monotonic() - t

    from services.text import metrics

    before = _steps(metrics)
    recs, wall = asyncio.run(go())
    out = summary(recs, wall)
    after = _steps(metrics)
    out["steps"] = {}
    for kind, (count, total) in after.items():
        n = count - before.get(kind, (0, 0))[0]
        seconds = total - before.get(kind, (0, 0))[1]
        out["steps"][kind] = {"n": n, "mean_ms": round(1000 * seconds / max(1, n), 3)}
    out["label"] = label
    if len(specs) == 1:
        r = recs[0]
        out["decode_tok_per_s"] = round((r["tokens"] - 1) / max(r["total"] - r["ttft"], 1e-9), 1)
    print(json.dumps(out), flush=True)
    return out


def _steps(metrics: Any) -> dict[str, tuple[float, float]]:
    found: dict[str, list[float]] = {}
    for family in metrics.STEP_SECONDS.collect():
        for s in family.samples:
            kind = s.labels.get("kind", "")
            if s.name.endswith("_count"):
                found.setdefault(kind, [0.0, 0.0])[0] = s.value
            elif s.name.endswith("_sum"):
                found.setdefault(kind, [0.0, 0.0])[1] = s.value
    return {k: (v[0], v[1]) for k, v in found.items()}


def profile(eng: Any, specs: list[tuple[int, int, float]], path: Path) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        asyncio.run(run_requests(eng, specs, 2))
    table = p.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    path.write_text(table)
    cpu = p.key_averages().table(sort_by="cpu_time_total", row_limit=20)
    path.with_suffix(".cpu.txt").write_text(cpu)
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("text_engine_gpu.json"))
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument("--no-graphs", action="store_true")
    parser.add_argument("--quick", action="store_true", help="one stream and its profile only")
    parser.add_argument("--quantization", default="none", choices=["none", "fp8"])
    parser.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8"])
    parser.add_argument(
        "--levels", default="16,64,128", help="concurrent mixes (64: its profile too)"
    )
    args = parser.parse_args()
    result: dict[str, Any] = {
        "card": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "quantization": args.quantization,
        "kv_cache_dtype": args.kv_cache_dtype,
    }
    if not args.skip_checks:
        result["kernel"] = kernel_check()
        print(json.dumps(result["kernel"]), flush=True)
        result["logits"] = logits_check()
        print(json.dumps(result["logits"]), flush=True)
        torch.cuda.empty_cache()
    eng, warm = engine(128, not args.no_graphs, args.quantization, args.kv_cache_dtype)
    result["warmup_s"] = round(warm, 1)
    result["kv_tokens"] = eng.kv.capacity_tokens
    print("warmup", warm, "kv tokens", eng.kv.capacity_tokens, flush=True)
    eng.start()
    try:
        rng = random.Random(0)
        runs = [measure(eng, "single", [(128, 256, 0.0)]) for _ in range(3)]
        result["single"] = runs
        levels = [] if args.quick else [int(v) for v in args.levels.split(",") if v]
        for n in levels:
            specs = [(rng.randrange(64, 513), 256, 0.7) for _ in range(n)]
            result[f"concurrent_{n}"] = measure(eng, f"concurrent_{n}", specs)
        table = profile(eng, [(128, 64, 0.0)], args.out.with_suffix(".profile1.txt"))
        print(table[:6000], flush=True)
        if 64 in levels:
            table = profile(
                eng,
                [(rng.randrange(64, 513), 32, 0.7) for _ in range(64)],
                args.out.with_suffix(".profile64.txt"),
            )
            print(table[:4000], flush=True)
    finally:
        eng.shutdown()
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
