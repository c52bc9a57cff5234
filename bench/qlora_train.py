"""QLoRA training throughput and peak memory on a Llama-2-7B-shaped model with random weights.

The seed paper's settings: nf4 base (no double quantization, bf16 compute), LoRA r=64 /
alpha=16 / dropout 0.1 on all seven linear layers of every block, batch 4 x 512 tokens,
gradient checkpointing, AdamW. Step time does not depend on the weights' values, so the
model is built from its config, saved in bf16 and reloaded in nf4, as
shared/anchors/gpu_text_baseline.py does. Every variant runs in the same process on the
same card, one after the other, on the same nf4 base:

  baseline          the anchor's loop: plain PEFT + bitsandbytes, fp32 LoRA weights (peft's
                    default), no autocast, HF's loss over full logits, torch AdamW
  bf16              bf16 autocast (LoRA matmuls and dropout in bf16 instead of casting every
                    activation to fp32; fp32 master weights and Adam state as before),
                    chunked cross-entropy that never holds the 2048 x 32000 logits at once,
                    fused AdamW
  bf16w             as bf16, but LoRA weights, gradients and Adam state in bf16 and no
                    autocast: what TRL's SFTTrainer (so `articleforge train`) does for QLoRA
  *+compile         + torch.compile of each decoder block (regional: one block compiled,
                    reused by all 32), fusing RMSNorm, RoPE, SiLU*up, dropout, residuals

Workloads (tokens/s counts real tokens only, never padding):

  uniform   every row is 512 tokens, as in the anchor: no padding, so only kernels differ
  articles  rows as long as training/data/articles.jsonl's (prompt + article, Llama
            tokens estimated at --tokens-per-word, cut at 512). The baseline pads each
            batch of 4 to its longest row (HF's dynamic padding); `packed` variants fill
            4 x 512 rows end to end with whole and split rows, position ids restarting
            at each row, so no pad token is ever computed (TRL's bfd_split packing)

On the GPU machine (about 6 minutes on an H100; the JSON goes to --out, rewritten after
every variant, so a run cut short keeps what it measured):

    python bench/qlora_train.py --out "$OUT/qlora_train.json"
    python bench/qlora_train.py --variants baseline,bf16 --workloads uniform --out x.json

On a CPU, a shrunken model (2 layers, hidden 256) checks the code path in a minute:

    python bench/qlora_train.py --tiny --out /tmp/qlora_tiny.json

Needs torch, transformers, peft and bitsandbytes only; nothing from this project.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

LLAMA2_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
)
TINY = dict(
    vocab_size=1024,
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=1024,
)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DATA = Path(__file__).resolve().parents[1] / "training" / "data" / "articles.jsonl"


@dataclass
class Variant:
    name: str
    autocast: bool = False  # bf16 autocast over fp32 LoRA weights (Trainer's bf16=True)
    bf16_weights: bool = False  # LoRA weights, grads and Adam state in bf16 (TRL's QLoRA)
    chunked_loss: bool = False
    fused_adam: bool = False
    compile: bool = False
    packed: bool = False
    about: str = ""


VARIANTS = {
    v.name: v
    for v in [
        Variant("baseline", about="plain PEFT + bnb: fp32 LoRA, HF loss, AdamW (the anchor)"),
        Variant(
            "bf16",
            autocast=True,
            chunked_loss=True,
            fused_adam=True,
            about="bf16 autocast (fp32 master weights), chunked loss, fused AdamW",
        ),
        Variant(
            "bf16w",
            bf16_weights=True,
            chunked_loss=True,
            fused_adam=True,
            about="bf16 LoRA weights as TRL keeps them for QLoRA, chunked loss, fused AdamW",
        ),
        Variant(
            "bf16w+compile",
            bf16_weights=True,
            chunked_loss=True,
            fused_adam=True,
            compile=True,
            about="bf16w + torch.compile of each decoder block",
        ),
        Variant(
            "bf16+compile",
            autocast=True,
            chunked_loss=True,
            fused_adam=True,
            compile=True,
            about="bf16 + torch.compile of each decoder block",
        ),
    ]
}
DEFAULT_VARIANTS = "baseline,bf16,bf16w,bf16w+compile,bf16+compile"
# On the articles workload each variant also runs on packed rows.
PACKED = {
    name: Variant(**{**asdict(v), "name": f"{name}+packed", "packed": True})
    for name, v in VARIANTS.items()
}


@dataclass
class Result:
    variant: str
    workload: str
    about: str
    steps: int = 0
    s_per_step: float | None = None
    tokens_per_step: float | None = None  # positions computed, padding included
    real_tokens_per_step: float | None = None
    padding_fraction: float | None = None
    tokens_per_s: float | None = None  # real tokens only
    peak_mem_gb: float | None = None
    warmup_s: float | None = None
    loss: float | None = None
    error: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)


# --- the model ------------------------------------------------------------------------------


def build_nf4_model(shape: dict[str, int], device: torch.device, folder: Path) -> tuple[Any, dict]:
    """Random bf16 weights saved to ``folder``, reloaded in nf4 (the seed paper's settings)."""
    from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    timings = {}
    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    timings["build_s"] = time.perf_counter() - start
    start = time.perf_counter()
    model.save_pretrained(folder)
    timings["save_s"] = time.perf_counter() - start
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=False,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    start = time.perf_counter()
    model = LlamaForCausalLM.from_pretrained(
        folder,
        quantization_config=quant,
        device_map={"": str(device)},
        dtype=torch.bfloat16,
        attn_implementation="sdpa",
    )
    timings["load_nf4_s"] = time.perf_counter() - start
    if device.type == "cpu":
        # bitsandbytes repacks CPU 4-bit weights at an eval-mode forward into a layout with
        # no backward; keep the trainable one (see training/train.py).
        import bitsandbytes as bnb

        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = False
    return model, {k: round(v, 1) for k, v in timings.items()}


def add_lora(model: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=64,
        lora_alpha=16,
        lora_dropout=0.1,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=TARGETS,
    )
    peft_model = get_peft_model(model, config)
    peft_model.base_model.model.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    peft_model.enable_input_require_grads()
    peft_model.train()
    return peft_model


# --- batches --------------------------------------------------------------------------------


@dataclass
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None

    @property
    def real_tokens(self) -> int:
        if self.attention_mask is not None:
            return int(self.attention_mask.sum())
        return self.input_ids.numel()


def article_lengths(seq_len: int, tokens_per_word: float, rng: random.Random) -> list[int]:
    """Token counts of prompt + article (+ EOS) rows, estimated from the project's data."""
    if DATA.exists():
        rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line]
        lengths = []
        for row in rows:
            prompt = f"[INST] Write an article about {row['topic']} for {row['audience']} in a "
            prompt += f"{row['tone']} tone. [/INST]"
            words = len(prompt.split()) + len(row["article"].split())
            lengths.append(min(seq_len, 2 + round(words * tokens_per_word)))  # + BOS, EOS
        return lengths
    return [rng.randint(seq_len // 2, seq_len) for _ in range(172)]


def uniform_batches(batch: int, seq_len: int, vocab: int, device: torch.device) -> Iterator[Batch]:
    """The anchor's batches: random ids, every token a label, no padding."""
    while True:
        ids = torch.randint(3, vocab, (batch, seq_len), device=device)
        yield Batch(input_ids=ids, labels=ids)


def padded_batches(
    lengths: list[int], batch: int, vocab: int, device: torch.device, rng: random.Random
) -> Iterator[Batch]:
    """Rows in batches of ``batch``, right-padded to the longest (HF dynamic padding)."""
    order = list(lengths)
    while True:
        rng.shuffle(order)
        for i in range(0, len(order) - batch + 1, batch):
            rows = order[i : i + batch]
            width = max(rows)
            ids = torch.zeros(batch, width, dtype=torch.long)
            mask = torch.zeros(batch, width, dtype=torch.long)
            for r, n in enumerate(rows):
                ids[r, :n] = torch.randint(3, vocab, (n,))
                mask[r, :n] = 1
            labels = ids.masked_fill(mask == 0, -100)
            yield Batch(ids.to(device), labels.to(device), attention_mask=mask.to(device))


def packed_batches(
    lengths: list[int],
    batch: int,
    seq_len: int,
    vocab: int,
    device: torch.device,
    rng: random.Random,
) -> Iterator[Batch]:
    """``batch`` rows of ``seq_len`` filled end to end; a row that does not fit is split and
    its rest starts the next row. Position ids restart at every piece, so attention stays
    inside each piece (transformers builds the block-diagonal mask from them)."""
    order = list(lengths)
    pending: list[int] = []
    while True:
        ids = torch.randint(3, vocab, (batch, seq_len))
        positions = torch.zeros(batch, seq_len, dtype=torch.long)
        labels = ids.clone()
        for r in range(batch):
            filled = 0
            while filled < seq_len:
                if not pending:
                    rng.shuffle(order)
                    pending = list(order)
                take = min(pending[-1], seq_len - filled)
                positions[r, filled : filled + take] = torch.arange(take)
                labels[r, filled] = -100  # no prediction across a boundary
                pending[-1] -= take
                if pending[-1] == 0:
                    pending.pop()
                filled += take
        yield Batch(ids.to(device), labels.to(device), position_ids=positions.to(device))


# --- one training step ----------------------------------------------------------------------


def chunked_causal_loss(
    hidden: torch.Tensor, lm_head: torch.nn.Module, labels: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """Mean next-token cross-entropy, ``chunk`` positions at a time; each chunk's logits are
    recomputed in backward, so at most chunk x vocab of them exist at once."""
    from torch.utils.checkpoint import checkpoint

    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    y = labels[:, 1:].reshape(-1)

    def piece(h_part: torch.Tensor, y_part: torch.Tensor) -> torch.Tensor:
        logits = lm_head(h_part).float()
        return torch.nn.functional.cross_entropy(logits, y_part, ignore_index=-100, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, h.shape[0], chunk):
        total = total + checkpoint(
            piece, h[start : start + chunk], y[start : start + chunk], use_reentrant=False
        )
    return total / (y != -100).sum().clamp(min=1)


def make_step(
    peft_model: Any, variant: Variant, device: torch.device
) -> tuple[Callable[[Batch], float], Any]:
    params = [p for p in peft_model.parameters() if p.requires_grad]
    kwargs: dict[str, Any] = {"lr": 2e-4}
    if variant.fused_adam and device.type == "cuda":
        kwargs["fused"] = True
    optimizer = torch.optim.AdamW(params, **kwargs)
    causal_lm = peft_model.base_model.model  # LlamaForCausalLM with LoRA layers inside
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if variant.autocast
        else contextlib.nullcontext()
    )

    def step(batch: Batch) -> float:
        inputs = {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "position_ids": batch.position_ids,
            "use_cache": False,
        }
        with autocast:
            if variant.chunked_loss:
                hidden = causal_lm.model(**inputs).last_hidden_state
                loss = chunked_causal_loss(hidden, causal_lm.lm_head, batch.labels)
            else:
                loss = peft_model(**inputs, labels=batch.labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step, optimizer


def set_compiled(peft_model: Any, on: bool) -> None:
    for layer in peft_model.base_model.model.model.layers:
        if on:
            layer.compile()
        else:
            layer._compiled_call_impl = None


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def run_variant(
    peft_model: Any,
    variant: Variant,
    workload: str,
    batches: Iterator[Batch],
    device: torch.device,
    steps: int,
    warmup: int,
) -> Result:
    result = Result(variant.name, workload, variant.about)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    graphs_before = _unique_graphs()
    try:
        set_compiled(peft_model, variant.compile)
        for p in trainable:
            p.data = p.data.to(torch.bfloat16 if variant.bf16_weights else torch.float32)
        step, optimizer = make_step(peft_model, variant, device)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(warmup):
            step(next(batches))
        sync()
        result.warmup_s = round(time.perf_counter() - start, 1)
        todo = [next(batches) for _ in range(steps)]  # made before the clock starts
        sync()
        start = time.perf_counter()
        losses = [step(b) for b in todo]
        sync()
        elapsed = time.perf_counter() - start
        real = sum(b.real_tokens for b in todo)
        computed = sum(b.input_ids.numel() for b in todo)
        result.steps = steps
        result.s_per_step = round(elapsed / steps, 4)
        result.tokens_per_step = computed / steps
        result.real_tokens_per_step = real / steps
        result.padding_fraction = round(1 - real / computed, 4)
        result.tokens_per_s = round(real / elapsed, 1)
        result.loss = round(sum(losses) / len(losses), 4)
        if cuda:
            result.peak_mem_gb = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        if variant.compile:
            result.notes["new_compiled_graphs"] = _unique_graphs() - graphs_before
        del optimizer, step
    except Exception as exc:  # one variant failing must not lose the others' numbers
        traceback.print_exc()
        result.error = f"{type(exc).__name__}: {exc}"[:600]
    finally:
        peft_model.zero_grad(set_to_none=True)
        for p in trainable:
            p.data = p.data.float()
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return result


# --- the run --------------------------------------------------------------------------------


def summarize(results: list[Result]) -> dict[str, Any]:
    """Per workload: the baseline, and the fastest variant that used no more peak memory."""
    out: dict[str, Any] = {}
    for workload in sorted({r.workload for r in results}):
        rows = [r for r in results if r.workload == workload and r.tokens_per_s]
        base = next((r for r in rows if r.variant == "baseline"), None)
        if base is None:
            continue
        fits = [
            r
            for r in rows
            if r.peak_mem_gb is None
            or base.peak_mem_gb is None
            or r.peak_mem_gb <= base.peak_mem_gb
        ]
        best = max(fits, key=lambda r: r.tokens_per_s or 0)
        out[workload] = {
            "baseline_tokens_per_s": base.tokens_per_s,
            "baseline_peak_mem_gb": base.peak_mem_gb,
            "best_variant": best.variant,
            "best_tokens_per_s": best.tokens_per_s,
            "best_peak_mem_gb": best.peak_mem_gb,
            "speedup": round((best.tokens_per_s or 0) / (base.tokens_per_s or 1), 3),
        }
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"QLoRA step, {report['model_shape']}, batch {report['batch']} x {report['seq_len']}, "
        f"on {report['device_name']} (torch {report['versions']['torch']}, transformers "
        f"{report['versions']['transformers']}, peft {report['versions']['peft']}, "
        f"bitsandbytes {report['versions']['bitsandbytes']})",
        "",
        "| workload | variant | s/step | real tokens/s | padding | peak GB | warm-up s | note |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        if r["error"]:
            lines.append(
                f"| {r['workload']} | {r['variant']} | | | | | | failed: {r['error'][:80]} |"
            )
            continue
        lines.append(
            f"| {r['workload']} | {r['variant']} | {r['s_per_step']} | {r['tokens_per_s']:,.0f} | "
            f"{100 * r['padding_fraction']:.1f}% | {r['peak_mem_gb']} | {r['warmup_s']} | "
            f"{r['about']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where the JSON report goes")
    parser.add_argument(
        "--tiny", action="store_true", help="a 2-layer model: check the code path on a CPU"
    )
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--workloads", default="uniform,articles", help="uniform, articles")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed steps first (compile happens here)"
    )
    parser.add_argument(
        "--tokens-per-word", type=float, default=1.4, help="Llama-2 tokens per English word"
    )
    parser.add_argument(
        "--budget-s", type=float, default=420, help="skip variants once this much time has passed"
    )
    args = parser.parse_args()

    began = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    shape = TINY if args.tiny else LLAMA2_7B
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]

    import bitsandbytes
    import peft
    import transformers

    report: dict[str, Any] = {
        "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "model_shape": "Llama-2-7B shape" if not args.tiny else "tiny Llama (2 layers, hidden 256)",
        "shape": shape,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "lora": {"r": 64, "alpha": 16, "dropout": 0.1, "targets": TARGETS},
        "quantization": "nf4, no double quantization, bf16 compute",
        "gradient_checkpointing": "non-reentrant, every block",
        "versions": {
            "torch": str(torch.__version__),
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "bitsandbytes": bitsandbytes.__version__,
        },
        "results": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        report["elapsed_s"] = round(time.perf_counter() - began, 1)
        report["summary"] = summarize([Result(**r) for r in report["results"]])
        args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")

    with tempfile.TemporaryDirectory(prefix="qlora-bench-", dir=os.environ.get("TMPDIR")) as tmp:
        model, timings = build_nf4_model(shape, device, Path(tmp))
        report["setup"] = timings
        peft_model = add_lora(model)
        report["trainable_params"] = sum(
            p.numel() for p in peft_model.parameters() if p.requires_grad
        )
        print(
            json.dumps({"event": "ready", **timings, "trainable": report["trainable_params"]}),
            flush=True,
        )

        rng = random.Random(0)
        lengths = article_lengths(args.seq_len, args.tokens_per_word, rng)
        report["articles_workload"] = {
            "rows": len(lengths),
            "source": str(DATA.name) if DATA.exists() else "uniform random lengths (no data file)",
            "tokens_per_word": args.tokens_per_word,
            "mean_tokens": round(sum(lengths) / len(lengths), 1),
            "max_tokens": max(lengths),
        }
        # Eager before compiled (compiled code stays behind), uniform before articles.
        plan: list[tuple[Variant, str]] = []
        for compiled in (False, True):
            for workload in workloads:
                for name in names:
                    variant = VARIANTS[name]
                    if variant.compile != compiled:
                        continue
                    if workload == "uniform":
                        plan.append((variant, workload))
                        continue
                    # Padded batches for the baseline only: their shapes change every step,
                    # which would recompile a compiled variant. Every variant runs packed.
                    if name == "baseline":
                        plan.append((variant, workload))
                    plan.append((PACKED[name], workload))
        vocab = shape["vocab_size"]
        for variant, workload in plan:
            if time.perf_counter() - began > args.budget_s:
                report["results"].append(
                    asdict(
                        Result(variant.name, workload, variant.about, error="skipped: time budget")
                    )
                )
                continue
            torch.manual_seed(0)
            if workload == "uniform":
                batches = uniform_batches(args.batch, args.seq_len, vocab, device)
            elif variant.packed:
                batches = packed_batches(
                    lengths, args.batch, args.seq_len, vocab, device, random.Random(1)
                )
            else:
                batches = padded_batches(lengths, args.batch, vocab, device, random.Random(1))
            result = run_variant(
                peft_model, variant, workload, batches, device, args.steps, args.warmup
            )
            report["results"].append(asdict(result))
            print(json.dumps({"event": "result", **asdict(result)}), flush=True)
            save()
    save()
    print(markdown(report))
    print(json.dumps({"event": "summary", **report["summary"]}), flush=True)


if __name__ == "__main__":
    main()
