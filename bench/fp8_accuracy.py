"""How far FP8 linear layers move the text model: top-1 agreement, KL divergence, perplexity.

Two measurements, both through the engine's own forward (``LeanLlama``), bf16 against fp8 on
the same weights and the same tokens:

* ``shape``: a random-weight model of the real Llama-2-7B shape (built twice from one seed,
  once kept in bf16 and once quantized to FP8 on load, as the service does). Teacher-forced
  over ``--sequences`` x ``--tokens`` random token ids: at every position, does fp8's top-1
  token equal bf16's, and KL(p_bf16 || p_fp8) of the two softmaxes. Needs a GPU with FP8.
* ``tiny``: the tiny model with a trained LoRA adapter (a training run folder, e.g. from
  ``articleforge train`` on training/configs/tiny.yaml), merged, then served in bf16 and in fp8:
  held-out perplexity on the run's validation split, scored as ``training/evaluate.py`` and
  ``/v1/perplexity`` score it. Runs on any device (on the CPU torch's reference FP8 matmul).

    python bench/fp8_accuracy.py shape --out "$OUT/fp8_accuracy_shape.json"
    python bench/fp8_accuracy.py tiny --run runs/tiny --device cpu --out /tmp/fp8_tiny.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/fp8_accuracy.py` imports the project uninstalled

import torch  # noqa: E402

from bench.text_bench import SHAPES, llama_config  # noqa: E402
from services.text.llama import LeanLlama, StepInputs  # noqa: E402


def compare_logits(ref: torch.Tensor, test: torch.Tensor) -> dict[str, float]:
    """Top-1 agreement and mean KL(ref || test) over the rows of two ``[N, vocab]`` logits."""
    ref, test = ref.float(), test.float()
    agree = (ref.argmax(-1) == test.argmax(-1)).float()
    log_p, log_q = ref.log_softmax(-1), test.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return {
        "positions": int(ref.shape[0]),
        "top1_agreement": float(agree.mean()),
        "kl_mean": float(kl.mean()),
        "kl_p99": float(kl.quantile(0.99)) if kl.numel() <= 1 << 24 else float("nan"),
        "kl_max": float(kl.max()),
    }


def _lean_logits(lean: LeanLlama, ids: torch.Tensor) -> torch.Tensor:
    """All positions' logits of one sequence, no cache (the scoring forward)."""
    positions = torch.arange(ids.shape[0], device=ids.device)
    return lean.forward(ids, positions, StepInputs(slots=None), None, None, None)


def run_shape(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import LlamaForCausalLM

    from services.text import fp8

    device = torch.device(args.device)
    problem = fp8.unsupported_reason(device)
    if problem is not None:
        return {"refused": problem}
    config = llama_config(SHAPES["llama2-7b"])  # the shape text_bench serves
    gen = torch.Generator().manual_seed(args.seed)
    batches = [
        torch.randint(3, config.vocab_size, (args.tokens,), generator=gen).to(device)
        for _ in range(args.sequences)
    ]
    results: dict[str, Any] = {"config": SHAPES["llama2-7b"], "sequences": args.sequences}
    logits: dict[str, list[torch.Tensor]] = {}
    for name, use_fp8 in (("bf16", False), ("fp8", True)):
        torch.manual_seed(args.seed)  # the same random weights both times
        with torch.device(device):
            hf = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
        if args.init_std:  # the HF default (0.02) gives near-flat logits on random weights
            for p in hf.parameters():
                if p.dim() == 2:
                    p.data.normal_(0, args.init_std)
        started = time.monotonic()
        lean = LeanLlama(hf, [], config.max_position_embeddings, fp8_linears=use_fp8)
        results[f"{name}_build_seconds"] = time.monotonic() - started
        with torch.inference_mode():
            logits[name] = [_lean_logits(lean, ids).float().cpu() for ids in batches]
        results[f"{name}_gpu_bytes"] = torch.cuda.memory_allocated(device)
        del lean, hf
        gc.collect()
        torch.cuda.empty_cache()
    ref, test = torch.cat(logits["bf16"]), torch.cat(logits["fp8"])
    results.update(compare_logits(ref, test))
    top2 = ref.topk(2, dim=-1).values
    results["bf16_top1_margin_median"] = float((top2[:, 0] - top2[:, 1]).median())
    return results


def _score(engine: Any, rows: list[tuple[list[int], int]]) -> dict[str, float]:
    nll = tokens = 0.0
    for ids, lead in rows:
        n = len(ids) - lead
        nll += engine.runner.score(ids, lead, 0) * n
        tokens += n
    return {"perplexity": math.exp(nll / tokens), "tokens": tokens, "rows": len(rows)}


def tiny_perplexity(
    run: Path, cache_dir: Path | None, device: str, dtypes: tuple[str, ...] = ("bfloat16",)
) -> dict[str, Any]:
    """Held-out perplexity of a tiny training run (adapter merged) per dtype, without and with
    fp8 linear layers; ``ratio`` is fp8 over the same dtype without it."""
    from services.text.config import TextSettings
    from services.text.engine import TextEngine
    from services.text.loading import load_text_model
    from services.text.perplexity import encode_scored
    from training.prepare import example_context, read_split

    examples = read_split(run / "validation.jsonl")
    adapter = run  # the run folder is the adapter (train.py saves it there)
    results: dict[str, Any] = {"run": str(run), "device": device}
    for dtype in dtypes:
        for quant in ("none", "fp8"):
            extra: dict[str, Any] = {"cache_dir": cache_dir} if cache_dir else {}
            settings = TextSettings(
                _env_file=None,
                text_model="tiny",
                text_adapter=f"writer={adapter}",
                text_quantization=quant,
                text_dtype=dtype,
                text_device=device,
                text_cuda_graphs=False,
                text_kv_cache_tokens=1024,
                text_max_batch_size=4,
                **extra,
            )
            loaded = load_text_model(settings, allow_cpu_fp8=True)
            engine = TextEngine(settings, loaded)
            engine.warmup()
            tok = loaded.tokenizer
            rows = [encode_scored(tok, ex.article, example_context(tok, ex)) for ex in examples]
            results[f"{dtype}_{quant}"] = _score(engine, rows)
        base = results[f"{dtype}_none"]["perplexity"]
        results[f"{dtype}_fp8_ratio"] = results[f"{dtype}_fp8"]["perplexity"] / base
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=["shape", "tiny"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--sequences", type=int, default=4)
    p.add_argument("--tokens", type=int, default=1024, help="positions per sequence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-std", type=float, default=0.0, help="re-draw 2-D weights N(0, std)")
    p.add_argument("--run", type=Path, help="tiny: a training run folder")
    p.add_argument("--cache-dir", type=Path, default=None, help="tiny: ARTICLEFORGE_CACHE_DIR")
    p.add_argument("--dtypes", default="bfloat16", help="tiny: comma-separated text_dtype values")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.what == "shape":
        results = run_shape(args)
    else:
        if args.run is None:
            p.error("tiny needs --run")
        results = tiny_perplexity(
            args.run, args.cache_dir, args.device, tuple(args.dtypes.split(","))
        )
    results["torch"] = torch.__version__
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        results["card"] = torch.cuda.get_device_name(torch.device(args.device))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
