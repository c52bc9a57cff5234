"""Where FP8 decode time goes: the Llama-2-7B linear layers' matmuls at every row count.

For each of the four fused linear shapes of a decoder block (qkv, o, gate/up, down) and row
counts from 1 (one decode stream) to 8192 (a prefill chunk), times in CUDA graphs (so that
launch overhead does not count; a graph holds ``--inner`` calls, replayed ``--iters`` times):

* ``bf16``: ``F.linear`` on the bf16 weight (cuBLAS), the service's bf16 path;
* ``w8a8``: ``kernels.quantize_rows`` + ``torch._scaled_mm`` (row-wise scales), the fp8 path;
* ``scaled_mm``: ``torch._scaled_mm`` alone, activations already in E4M3;
* ``w8a16``: ``kernels.fp8_weight_matmul`` (E4M3 weight widened in the kernel, bf16
  activations), the fastest tile that ``kernels.Fp8Planner`` timed for the row bucket, for rows
  up to 128; ``service`` says which of the two the planner gives the text service, and
  ``plans`` holds every timing it made.

Each line gives microseconds, the weight's bytes over the time (GB/s; the card's HBM peak is the
ceiling for small row counts) and TFLOP/s (the ceiling for large ones). A second part checks
accuracy on a random-weight Llama-2-7B against a float32 reference: bf16, fp8 (W8A8) and
weight-only fp8 (bf16 weights rounded through E4M3), and bf16 and fp8 prefilled through an E4M3
KV cache (``ARTICLEFORGE_TEXT_KV_CACHE_DTYPE=fp8``), top-1 agreement and KL of each.

    python bench/fp8_profile.py --out "$OUT/fp8_profile.json"
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SHAPES = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008)}
ROWS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 2048, 8192]


def matmuls(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    out: dict[str, Any] = {"plans": {}, "rows": {}, "w8a16_rel_err": {}}
    for name, (n, k) in SHAPES.items():
        _one_shape(name, n, k, args, out)
        torch.cuda.empty_cache()
    return out


def _one_shape(name: str, n: int, k: int, args: argparse.Namespace, out: dict[str, Any]) -> None:
    from services.text import fp8, kernels

    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    wq = fp8.Fp8Weight.quantize(w)
    weight_bytes = {"bf16": 2 * n * k, "fp8": n * k}
    # The service's own choice: the planner times every W8A16 tile (after checking its product)
    # against W8A8 per row bucket, as the text service does at start-up.
    planner = kernels.Fp8Planner(kernels.quantize_rows)
    planner.prepare([wq])
    for (bucket, _, _), timings in planner.timings.items():
        out["plans"][f"{name}/{bucket}"] = timings
    print(name, "plan", {key[0]: tile for key, tile in planner.plans.items()}, flush=True)
    for rows in args.rows or ROWS:
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        xq, xs = kernels.quantize_rows(x)
        flops = 2.0 * rows * n * k
        rec: dict[str, Any] = {}
        candidates: dict[str, tuple[Callable[[], Any], int]] = {
            "bf16": (partial(F.linear, x, w), weight_bytes["bf16"]),
            "w8a8": (partial(wq.matmul, x, kernels.quantize_rows), weight_bytes["fp8"]),
            "scaled_mm": (
                partial(
                    torch._scaled_mm,
                    xq,
                    wq.q.t(),
                    scale_a=xs,
                    scale_b=wq.scale,
                    out_dtype=torch.bfloat16,
                ),
                weight_bytes["fp8"],
            ),
        }
        tile = _fastest_tile(planner, rows, n, k)
        if tile is not None:  # the fastest W8A16 tile of the bucket, chosen by the plan or not
            call = partial(kernels.fp8_weight_matmul, x, wq.q, wq.scale, *tile)
            candidates["w8a16"] = (call, weight_bytes["fp8"])
            rec["w8a16_tile"] = tile
            ref = x.float() @ fp8.dequantize(wq.q, wq.scale).t()
            err = float((call().float() - ref).norm() / ref.norm())
            out["w8a16_rel_err"][f"{name}/{rows}"] = err
        rec["service"] = "w8a8" if planner.tile(rows, wq) is None else "w8a16"
        for label, (fn, nbytes) in candidates.items():
            inner = args.inner if rows <= 512 else 4
            t = kernels.graph_microseconds(fn, inner, args.iters)
            rec[label] = {
                "us": round(t, 2),
                "weight_GBps": round(nbytes / t / 1e3, 1),
                "TFLOPs": round(flops / t / 1e6, 1),
            }
        out["rows"][f"{name}/{rows}"] = rec
        times = (f"{lb} {v['us']:8.1f}us" for lb, v in rec.items() if isinstance(v, dict))
        print(f"{name:8s} M={rows:5d}  {'  '.join(times)}  ({rec['service']})", flush=True)


def _fastest_tile(planner: Any, rows: int, n: int, k: int) -> tuple[int, int, int] | None:
    """The fastest W8A16 tile the planner timed for this row count's bucket (None past
    ``W8A16_MAX_ROWS``, or where no tile compiled and matched)."""
    from services.text import kernels

    if rows > kernels.W8A16_MAX_ROWS:
        return None
    timings = planner.timings[(kernels.row_bucket(rows), n, k)]
    tiles = {name: t for name, t in timings.items() if name != "w8a8"}
    if not tiles:
        return None
    best = min(tiles, key=tiles.__getitem__)
    a, b, c = (int(v) for v in best.split(","))
    return a, b, c


def _cached_logits(
    lean: Any, ids: torch.Tensor, dtype: torch.dtype, chunk: int = 128
) -> torch.Tensor:
    """All positions' logits of one sequence prefilled through a KV cache of ``dtype``."""
    from services.text.llama import Segment, StepInputs

    page = 16
    size = (ids.shape[0] // page + 2, page, lean.kv_heads, lean.head_dim)
    keys = [torch.zeros(size, dtype=dtype, device=ids.device) for _ in lean.layers]
    values = [torch.zeros(size, dtype=dtype, device=ids.device) for _ in lean.layers]
    slots = torch.arange(ids.shape[0], device=ids.device) + page  # page 0 is the scratch page
    out = []
    for start in range(0, ids.shape[0], chunk):
        end = min(start + chunk, ids.shape[0])
        seg = Segment(0, end - start, start, slots[:end] if start else None)
        inputs = StepInputs(slots=slots[start:end], segments=[seg])
        positions = torch.arange(start, end, device=ids.device)
        out.append(lean.forward(ids[start:end], positions, inputs, keys, values, None))
    return torch.cat(out)


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import LlamaForCausalLM

    from bench.fp8_accuracy import _lean_logits, compare_logits
    from bench.text_bench import SHAPES as MODEL_SHAPES
    from bench.text_bench import llama_config
    from services.text import fp8
    from services.text.attention import KV_FP8
    from services.text.llama import LeanLlama

    config = llama_config(MODEL_SHAPES["llama2-7b"])
    gen = torch.Generator().manual_seed(args.seed)
    seqs = [
        torch.randint(3, config.vocab_size, (args.tokens,), generator=gen).cuda()
        for _ in range(args.sequences)
    ]
    torch.manual_seed(args.seed)
    with torch.device("cuda"):
        hf = LlamaForCausalLM._from_config(config, dtype=torch.float32).eval()
    with torch.inference_mode():
        ref = torch.cat([hf(input_ids=s[None]).logits[0].float().cpu() for s in seqs])
    hf.to(torch.bfloat16)
    saved = {k: v.detach().clone() for k, v in hf.state_dict().items()}

    def fresh() -> None:  # LeanLlama frees the HF weights it fuses: each variant gets its own
        hf.load_state_dict({k: v.clone() for k, v in saved.items()}, assign=True)

    results: dict[str, Any] = {"positions": int(ref.shape[0])}
    logits: dict[str, torch.Tensor] = {}
    for label, use_fp8 in (("bf16", False), ("w8a8", True)):
        fresh()
        lean = LeanLlama(hf, [], config.max_position_embeddings, fp8_linears=use_fp8)
        with torch.inference_mode():
            logits[label] = torch.cat([_lean_logits(lean, s).float().cpu() for s in seqs])
            # the same through an E4M3 KV cache, in chunks of 128 (later chunks read the cache)
            logits[f"{label}_kvfp8"] = torch.cat(
                [_cached_logits(lean, s, KV_FP8).float().cpu() for s in seqs]
            )
        del lean
        gc.collect()
        torch.cuda.empty_cache()
    fresh()
    with torch.no_grad():  # weight-only fp8: every block's linear weight rounded through E4M3
        for layer in hf.model.layers:
            for module in layer.modules():
                if isinstance(module, torch.nn.Linear):
                    q, s = fp8.quantize_weight(module.weight)
                    module.weight.copy_(fp8.dequantize(q, s).to(module.weight.dtype))
    lean = LeanLlama(hf, [], config.max_position_embeddings)
    with torch.inference_mode():
        logits["w8a16"] = torch.cat([_lean_logits(lean, s).float().cpu() for s in seqs])
    top2 = ref.topk(2, dim=-1).values
    results["fp32_top1_margin_median"] = float((top2[:, 0] - top2[:, 1]).median())
    for label, got in logits.items():
        results[f"{label}_vs_fp32"] = compare_logits(ref, got)
        if label != "bf16":
            results[f"{label}_vs_bf16"] = compare_logits(logits["bf16"], got)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--parts", default="matmul,accuracy")
    p.add_argument("--rows", type=lambda v: [int(r) for r in v.split(",")], default=None)
    p.add_argument("--inner", type=int, default=20)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--sequences", type=int, default=4)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    results: dict[str, Any] = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__}
    started = time.monotonic()
    for part in args.parts.split(","):
        results[part] = matmuls(args) if part == "matmul" else accuracy(args)
        results[f"{part}_seconds"] = round(time.monotonic() - started, 1)
        args.out.write_text(json.dumps(results, indent=2))
        if part == "accuracy":
            print(json.dumps(results[part], indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
