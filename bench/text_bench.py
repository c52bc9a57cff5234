"""Serving speed of `articleforge serve text` over HTTP, beside HF `generate` in the same call.

Issue 10's table, measured the way an operator would: the service runs as its own process
(`python -m services.cli serve text`), and an outside asyncio/httpx client talks to it. Speed
does not depend on the weights' values, so the model is a random-weight Llama of the real
Llama-2-7B shape (32 layers, 4096 hidden, 11008 MLP, 32 heads, vocab 32000), bf16, built from
its config on the device and saved with safetensors beside a tokenizer, so that the service
loads it through its normal `from_pretrained` path (`ARTICLEFORGE_TEXT_MODEL=<folder>`).

There is no Llama tokenizer offline. The folder's tokenizer is byte-level with exactly 32000
entries, laid out like Llama-2's: 0 <unk>, 1 <s> (bos, prepended to a plain prompt), 2 </s>
(eos), 3..258 the 256 bytes (id = 3 + byte), and 259..31999 whole words " w0", " w1", ... that
decode to plain text. It has no merges, so an ASCII prompt of n-1 characters is exactly n
tokens; every prompt is checked against the tokenizer, and the service's `usage.prompt_tokens`
is checked again. Random weights stop at eos only by chance and may emit bytes that the
detokenizer holds back, so tokens are counted from `usage` and time to first token comes from
the server's `timings`.

Scenarios (`--scenarios`, any of them, in this order):
  baseline  in-process HF `generate`, batch 1, 128-token prompt, 256 new tokens, greedy,
            min_new_tokens so that it makes all 256: on the bf16 model, and (with nf4) on the
            nf4 base + the unmerged LoRA adapter. Runs before any server holds the GPU.
  single    1 stream, 128-token prompt, 256 new tokens, greedy, `--repeats` times; median tok/s
            (completion tokens over the client's wall time per request).
  sweep     `--levels` concurrent clients (1, 4, 16, 64, 128); prompts of 64-512 tokens drawn
            with a fixed seed, 256 new tokens, temperature 0.7, a seed per request. Each client
            sends `--requests-per-client` requests back to back, but starts none after
            `--level-seconds`. Aggregate tok/s = sum of completion tokens / the level's wall time.
  nf4       a second server with ARTICLEFORGE_TEXT_QUANTIZATION=nf4 and the random LoRA adapter
            (r=64, alpha 16, dropout 0.1, all seven linear layers per block) unmerged as
            `writer`: the single scenario (`--nf4-repeats`) and `--nf4-levels` (16) with the
            sweep's mix.

On the GPU machine (after the wheels prelude of shared/device/README.md; about 6 minutes when
the engine meets issue 10's goals, a build of the model folder included; the JSON is rewritten
after every phase, so a run cut short keeps what it measured):

    python bench/text_bench.py --out "$OUT/text_bench_h200.json"
    python bench/text_bench.py --scenarios single,sweep --levels 1,16,64 \\
        --env ARTICLEFORGE_TEXT_CUDA_GRAPHS=false --out "$OUT/no_graphs.json"

On a CPU, the same code path in a few seconds of work (a 2-layer model, the same tokenizer):

    python bench/text_bench.py --model tiny --device cpu --new-tokens 8 --prompt-tokens 16 \\
        --prompt-range 8,32 --levels 1,2 --requests-per-client 1 --out /tmp/text_bench_cpu.json

Plot one or more result files with bench/plot_text_bench.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import platform
import random
import re
import statistics
import string
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/text_bench.py` imports the project without install

from services.common.tiny import LLAMA2_CHAT_TEMPLATE  # noqa: E402

SHAPES: dict[str, dict[str, Any]] = {
    "llama2-7b": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
    ),
    # The same tokenizer and vocabulary, a 2-layer body: the CPU smoke run and the test.
    "tiny": dict(
        vocab_size=32000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
    ),
}
# Bump when the model folder's contents change, so an old folder in --work-dir is rebuilt.
FOLDER_VERSION = 1
LORA: dict[str, Any] = dict(r=64, lora_alpha=16, lora_dropout=0.1, target_modules="all-linear")
ADAPTER_NAME = "writer"
SCENARIOS = ("baseline", "single", "sweep", "nf4")
BOS, EOS, UNK = 1, 2, 0


# --- the model folder ----------------------------------------------------------------------------


def byte_chars() -> list[str]:
    """GPT-2's byte-to-character map (what the ByteLevel decoder inverts), in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def build_tokenizer(vocab_size: int) -> Any:
    """A byte-level tokenizer with exactly ``vocab_size`` entries; any id decodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": UNK, "<s>": BOS, "</s>": EOS}
    for ch in byte_chars():
        vocab[ch] = len(vocab)
    space = byte_chars()[ord(" ")]
    word = 0
    while len(vocab) < vocab_size:
        vocab[f"{space}w{word}"] = len(vocab)
        word += 1
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        model_max_length=4096,
    )
    tokenizer.chat_template = LLAMA2_CHAT_TEMPLATE
    assert len(tokenizer) == vocab_size, len(tokenizer)
    tokenizer.decode(list(range(vocab_size)))  # every id decodes
    return tokenizer


def llama_config(shape: dict[str, Any]) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        **shape,
        rms_norm_eps=1e-5,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=UNK,
        tie_word_embeddings=False,
    )


def build_model_folder(folder: Path, model: str, device: str) -> tuple[Any, dict[str, Any]]:
    """Builds the random bf16 model on ``device`` and saves it; returns it and timings."""
    import torch
    from transformers import LlamaForCausalLM

    shape = SHAPES[model]
    tokenizer = build_tokenizer(shape["vocab_size"])
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):
        lm = LlamaForCausalLM._from_config(llama_config(shape), dtype=torch.bfloat16)
    lm.eval()
    lm.generation_config.pad_token_id = UNK
    sync(device)
    built = time.perf_counter() - t0
    tmp = folder.with_name(folder.name + ".partial")
    t0 = time.perf_counter()
    lm.save_pretrained(tmp)  # safetensors
    tokenizer.save_pretrained(tmp)
    (tmp / "bench_model.json").write_text(json.dumps({"model": model, "version": FOLDER_VERSION}))
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)
    params = sum(p.numel() for p in lm.parameters())
    info = {
        "built": True,
        "build_s": round(built, 2),
        "save_s": round(time.perf_counter() - t0, 2),
        "parameters": params,
    }
    return lm, info


def folder_is_current(folder: Path, model: str) -> bool:
    marker = folder / "bench_model.json"
    if not marker.exists():
        return False
    return json.loads(marker.read_text()) == {"model": model, "version": FOLDER_VERSION}


def build_adapter(base: Any, folder: Path) -> dict[str, Any]:
    """A random LoRA r=64 on every linear layer of every block, saved as a PEFT adapter."""
    import torch
    from peft import LoraConfig, get_peft_model

    t0 = time.perf_counter()
    torch.manual_seed(7)
    config = LoraConfig(**LORA, init_lora_weights=False, bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, config)
    with torch.no_grad():  # small, so that 32 layers of random deltas stay finite
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.02)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    peft_model.save_pretrained(str(folder))
    return {
        "lora": LORA,
        "trainable_parameters": trainable,
        "s": round(time.perf_counter() - t0, 2),
    }


def prompt_text(tokenizer: Any, n_tokens: int, rng: random.Random) -> str:
    """Random lowercase words that the tokenizer turns into exactly ``n_tokens`` (bos included)."""
    chars: list[str] = []
    while len(chars) < n_tokens - 1:
        chars.extend(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9)))
        chars.append(" ")
    text = "".join(chars[: n_tokens - 1])
    got = len(tokenizer(text).input_ids)
    if got != n_tokens:
        raise RuntimeError(f"prompt meant to be {n_tokens} tokens is {got}")
    return text


# --- HF generate baselines (in-process, while no server holds the device) ------------------------


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free_device(device: str) -> dict[str, float]:
    import torch

    gc.collect()
    if not device.startswith("cuda"):
        return {}
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    return {  # what this process still holds, and what a server starting now finds free
        "allocated_GB": round(torch.cuda.memory_allocated() / 1e9, 2),
        "reserved_GB": round(torch.cuda.memory_reserved() / 1e9, 2),
        "device_free_GB": round(free / 1e9, 2),
        "device_total_GB": round(total / 1e9, 2),
    }


def hf_generate(
    model: Any, prompt_ids: list[int], new_tokens: int, repeats: int, device: str
) -> dict[str, Any]:
    """HF `generate` at batch 1, greedy, forced to make ``new_tokens`` (the seed paper's way)."""
    import torch
    from transformers import GenerationConfig

    ids = torch.tensor([prompt_ids], device=device)
    mask = torch.ones_like(ids)

    def config(n: int) -> Any:
        return GenerationConfig(
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=UNK,
            eos_token_id=EOS,
        )

    runs = []
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=mask, generation_config=config(8))
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            out = model.generate(
                input_ids=ids, attention_mask=mask, generation_config=config(new_tokens)
            )
            sync(device)
            seconds = time.perf_counter() - t0
            made = int(out.shape[1]) - len(prompt_ids)
            runs.append({"new_tokens": made, "s": round(seconds, 3), "tok_s": made / seconds})
    return {
        "prompt_tokens": len(prompt_ids),
        "new_tokens": new_tokens,
        "dtype": str(next(model.parameters()).dtype),
        "tok_s": statistics.median(r["tok_s"] for r in runs),
        "runs": runs,
    }


def load_nf4_lora(folder: Path, adapter: Path, device: str) -> Any:
    """The service's nf4 + unmerged-adapter model, loaded the way services/text/loading.py does."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from services.text.loading import nf4_config

    base = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=nf4_config(), dtype=torch.bfloat16, device_map={"": device}
    )
    model = PeftModel.from_pretrained(base, adapter, adapter_name=ADAPTER_NAME)
    model.eval()
    return model


# --- the service -------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """`python -m services.cli serve SERVICE` with the given ARTICLEFORGE_* environment."""

    name: str
    env: dict[str, str]
    log_path: Path
    ready_timeout: float
    port: int = field(default_factory=free_port)
    service: str = "text"
    ready_s: float | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    @contextlib.contextmanager
    def running(self) -> Iterator[Server]:
        import os

        import httpx

        command = [sys.executable, "-m", "services.cli", "serve", self.service]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        full_env = {**os.environ, **self.env}
        with open(self.log_path, "wb") as log:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
            )
            try:
                while True:
                    if self.proc.poll() is not None:
                        raise RuntimeError(
                            f"server {self.name} exited with {self.proc.returncode} before it "
                            f"was ready; log {self.log_path}:\n{self.log_tail()}"
                        )
                    with contextlib.suppress(httpx.HTTPError):
                        if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                            break
                    if time.perf_counter() - t0 > self.ready_timeout:
                        raise TimeoutError(
                            f"server {self.name} not ready after {self.ready_timeout:.0f} s; "
                            f"log {self.log_path}:\n{self.log_tail()}"
                        )
                    time.sleep(0.25)
                self.ready_s = time.perf_counter() - t0
                yield self
            finally:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()

    def metrics(self) -> list[str]:
        """The service's own gauges and counters after a scenario (KV usage, batch sizes...)."""
        import httpx

        try:
            text = httpx.get(f"{self.url}/metrics", timeout=10).text
        except httpx.HTTPError as exc:
            return [f"# unavailable: {exc!r}"]
        prefix = f"articleforge_{self.service}"
        lines = [ln for ln in text.splitlines() if ln.startswith(prefix)]
        return lines[:400]


# --- the client ---------------------------------------------------------------------------------


async def post_generate(
    client: Any, url: str, body: dict[str, Any], meta: dict[str, Any], origin: float
) -> dict[str, Any]:
    import httpx

    t0 = time.perf_counter()
    record: dict[str, Any] = {**meta, "start_s": round(t0 - origin, 4), "ok": False}
    try:
        response = await client.post(f"{url}/v1/generate", json=body)
    except httpx.HTTPError as exc:
        record.update(latency_s=time.perf_counter() - t0, error=repr(exc)[:500])
        return record
    record["latency_s"] = time.perf_counter() - t0
    record["status"] = response.status_code
    if response.status_code != 200:
        record["error"] = response.text[:500]
        return record
    data = response.json()
    usage, timings = data["usage"], data["timings"]
    record.update(
        ok=True,
        prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"],
        finish_reason=data["finish_reason"],
        ttft_s=timings["time_to_first_token_seconds"],
        queue_s=timings["queue_seconds"],
        server_total_s=timings["total_seconds"],
        server_decode_tok_s=timings["tokens_per_second"],
        tok_s=usage["completion_tokens"] / record["latency_s"],
    )
    return record


async def run_clients(
    url: str, plan: list[list[tuple[dict[str, Any], dict[str, Any]]]], budget_s: float
) -> tuple[list[dict[str, Any]], float]:
    """Each inner list is one client's (body, meta) requests, sent back to back.

    A client always sends its first request and starts no later one after ``budget_s``.
    """
    import httpx

    limits = httpx.Limits(max_connections=len(plan) + 8, max_keepalive_connections=len(plan) + 8)
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0), limits=limits) as client:
        origin = time.perf_counter()

        async def one_client(requests: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[Any]:
            records = []
            for i, (body, meta) in enumerate(requests):
                if i and time.perf_counter() - origin > budget_s:
                    break
                records.append(await post_generate(client, url, body, meta, origin))
            return records

        per_client = await asyncio.gather(*(one_client(requests) for requests in plan))
        wall = time.perf_counter() - origin
    return [r for records in per_client for r in records], wall


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return float(np.percentile(values, q))


def summarize(records: list[dict[str, Any]], wall: float | None) -> dict[str, Any]:
    ok = [r for r in records if r["ok"]]
    tokens = sum(r["completion_tokens"] for r in ok)
    ttft = [r["ttft_s"] for r in ok]
    summary: dict[str, Any] = {
        "requests": len(records),
        "ok": len(ok),
        "errors": len(records) - len(ok),
        "completion_tokens": tokens,
        "prompt_tokens": sum(r["prompt_tokens"] for r in ok),
        "prompt_tokens_mismatch": sum(r["prompt_tokens"] != r["prompt_tokens_sent"] for r in ok),
        "finish_reasons": dict(Counter(r["finish_reason"] for r in ok)),
        "per_request_tok_s_p50": percentile([r["tok_s"] for r in ok], 50),
        "server_decode_tok_s_p50": percentile([r["server_decode_tok_s"] for r in ok], 50),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p95_s": percentile(ttft, 95),
        "latency_p50_s": percentile([r["latency_s"] for r in ok], 50),
        "latency_p95_s": percentile([r["latency_s"] for r in ok], 95),
    }
    if wall is not None:
        summary["wall_s"] = wall
        summary["aggregate_tok_s"] = tokens / wall if wall > 0 else None
    return summary


# --- the scenarios ------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    tokenizer: Any
    results: dict[str, Any]
    out: Path
    started: float = field(default_factory=time.perf_counter)
    records: list[dict[str, Any]] = field(default_factory=list)

    def save(self) -> None:
        """Rewrites the JSON, so that a run cut short keeps what it measured."""
        self.results["records"] = self.records
        self.results["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        self.out.write_text(json.dumps(self.results, indent=1))

    def phase(self, name: str) -> None:
        print(f"[{time.perf_counter() - self.started:6.1f} s] {name}", flush=True)

    def failed(self, phase: str, exc: BaseException) -> None:
        print(f"{phase} failed: {exc}", file=sys.stderr, flush=True)
        error = "".join(traceback.format_exception(exc))
        self.results["errors"].append({"phase": phase, "error": error})
        self.save()

    def out_of_time(self, what: str) -> bool:
        """Past --time-budget, what is left is skipped (and listed) rather than cut off."""
        if time.perf_counter() - self.started < self.args.time_budget:
            return False
        print(f"  skipped {what}: past --time-budget {self.args.time_budget:.0f} s", flush=True)
        self.results.setdefault("skipped", []).append(what)
        return True

    def single_prompts(self, scenario: str, count: int) -> list[str]:
        rng = random.Random(f"{self.args.seed}/{scenario}")
        return [prompt_text(self.tokenizer, self.args.prompt_tokens, rng) for _ in range(count)]

    async def single(self, server: Server, scenario: str, repeats: int, model: str | None) -> Any:
        """1 stream, fixed prompt length, greedy; one request after another."""
        runs: list[dict[str, Any]] = []
        for i, prompt in enumerate(self.single_prompts(scenario, repeats)):
            if runs and self.out_of_time(f"{scenario} request {i}"):
                break
            body = {
                "prompt": prompt,
                "max_new_tokens": self.args.new_tokens,
                "temperature": 0.0,
                "seed": i,
            }
            if model:
                body["model"] = model
            meta = {"scenario": scenario, "concurrency": 1, "client": 0, "index": i}
            meta["prompt_tokens_sent"] = self.args.prompt_tokens
            records, _ = await run_clients(server.url, [[(body, meta)]], 0.0)
            runs.extend(records)
        self.records.extend(runs)
        summary = summarize(runs, None)
        ok = [r["tok_s"] for r in runs if r["ok"]]
        summary["tok_s_median"] = statistics.median(ok) if ok else None
        summary["tok_s_runs"] = ok
        return summary

    def sweep_plan(
        self, scenario: str, level: int, model: str | None
    ) -> list[list[tuple[dict[str, Any], dict[str, Any]]]]:
        lo, hi = self.args.prompt_range
        rng = random.Random(f"{self.args.seed}/{scenario}/{level}")
        plan = []
        for client in range(level):
            requests = []
            for index in range(self.args.requests_per_client):
                n = rng.randint(lo, hi)
                body: dict[str, Any] = {
                    "prompt": prompt_text(self.tokenizer, n, rng),
                    "max_new_tokens": self.args.new_tokens,
                    "temperature": self.args.temperature,
                    "seed": rng.randrange(2**31),
                }
                if model:
                    body["model"] = model
                meta = {"scenario": scenario, "concurrency": level, "client": client}
                meta.update(index=index, prompt_tokens_sent=n)
                requests.append((body, meta))
            plan.append(requests)
        return plan

    async def sweep(
        self, server: Server, scenario: str, levels: list[int], model: str | None
    ) -> None:
        done: list[dict[str, Any]] = self.results["scenarios"].setdefault(scenario, [])
        for level in levels:
            if self.out_of_time(f"{scenario} c={level}"):
                continue
            plan = self.sweep_plan(scenario, level, model)
            records, wall = await run_clients(server.url, plan, self.args.level_seconds)
            self.records.extend(records)
            summary = {"concurrency": level, **summarize(records, wall)}
            done.append(summary)
            self.save()
            print(
                f"  {scenario} c={level}: {summary['aggregate_tok_s']:.1f} tok/s in all, "
                f"{summary['ok']}/{summary['requests']} ok, wall {wall:.1f} s",
                flush=True,
            )

    async def warm(self, server: Server, model: str | None) -> dict[str, Any]:
        """One short request before measuring (not counted): first-request costs stay out."""
        prompt = "warm up"
        body: dict[str, Any] = {"prompt": prompt, "max_new_tokens": 4, "temperature": 0.0}
        if model:
            body["model"] = model
        meta = {"scenario": "warm", "concurrency": 1, "client": 0, "index": 0}
        meta["prompt_tokens_sent"] = len(self.tokenizer(prompt).input_ids)
        records, _ = await run_clients(server.url, [[(body, meta)]], 0)
        return records[0]


# --- the run ------------------------------------------------------------------------------------


def card_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(0))
    return f"cpu ({platform.processor() or platform.machine()})"


def card_slug(card: str) -> str:
    words = [w for w in re.split(r"[^a-z0-9]+", card.lower()) if w and w != "nvidia"]
    return words[0] if words and not card.startswith("cpu") else "cpu"


def versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "tokenizers", "httpx"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> dict[str, Any]:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "services"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return {"commit": head, "services_dirty": bool(dirty)}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "services_dirty": None}


def server_env(args: argparse.Namespace, folder: Path, nf4: bool) -> dict[str, str]:
    device = args.device
    env = {
        "ARTICLEFORGE_TEXT_MODEL": str(folder),
        "ARTICLEFORGE_TEXT_DEVICE": device,
        "ARTICLEFORGE_TEXT_MAX_BATCH_SIZE": str(args.max_batch_size),
        "ARTICLEFORGE_TEXT_MAX_QUEUE": str(max(256, 2 * max([*args.levels, *args.nf4_levels]))),
        "ARTICLEFORGE_TEXT_QUANTIZATION": "nf4" if nf4 else "none",
        "ARTICLEFORGE_LOG_LEVEL": "INFO",
    }
    if nf4:
        env["ARTICLEFORGE_TEXT_ADAPTER"] = f"{ADAPTER_NAME}={args.work_dir / 'adapter'}"
    env.update(args.env)
    return env


def print_table(results: dict[str, Any]) -> None:
    """The summary as a Markdown table, ready for docs/benchmarks.md."""
    scenarios, settings = results["scenarios"], results["settings"]
    base = scenarios.get("baseline_bf16", {}).get("tok_s")
    base4 = scenarios.get("baseline_nf4_lora", {}).get("tok_s")
    shape = f"{settings['prompt_tokens']} prompt + {settings['new_tokens']} new, greedy"
    mix = (
        f"prompts {settings['prompt_range'][0]}-{settings['prompt_range'][1]}, "
        f"{settings['new_tokens']} new, T={settings['temperature']}"
    )

    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}"

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:,.0f} ms"

    rows = [
        f"| scenario ({results['card']}) | tok/s | TTFT p50 | TTFT p95 | baseline, same call |",
        "|---|---:|---:|---:|---:|",
    ]

    def single(key: str, label: str, baseline: str) -> None:
        if key in scenarios:
            s = scenarios[key]
            rows.append(
                f"| {label}, 1 stream, {shape} (median of {s['ok']}) | {num(s['tok_s_median'])} "
                f"| {ms(s['ttft_p50_s'])} | {ms(s['ttft_p95_s'])} | {baseline} |"
            )

    def levels(key: str, label: str) -> None:
        for level in scenarios.get(key, []):
            rows.append(
                f"| {label}, {level['concurrency']} concurrent, {mix} "
                f"({num(level['per_request_tok_s_p50'])} per request) "
                f"| {num(level['aggregate_tok_s'])} in all "
                f"| {ms(level['ttft_p50_s'])} | {ms(level['ttft_p95_s'])} | |"
            )

    dense = "bf16" if settings["device"].startswith("cuda") else "fp32 (CPU)"
    single("single", dense, f"HF generate {dense}: {num(base)}")
    levels("sweep", dense)
    nf4 = "nf4 + unmerged LoRA r=64"
    single("nf4_single", nf4, f"HF generate nf4 + LoRA: {num(base4)}")
    levels("nf4_concurrent", nf4)
    if "single" not in scenarios and base is not None:
        rows.append(f"| HF generate {dense}, batch 1, {shape} | | | | {num(base)} |")
    if "nf4_single" not in scenarios and base4 is not None:
        rows.append(f"| HF generate {nf4}, batch 1, {shape} | | | | {num(base4)} |")
    for server in results["servers"]:
        ready = server.get("ready_s")
        wait = "-" if ready is None else f"{ready:.1f} s"
        rows.append(
            f"| server {server['name']}: start, load and warm-up to /readyz | {wait} | | | |"
        )
    print("\n".join(rows), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x.strip()]

    def env_item(text: str) -> tuple[str, str]:
        key, sep, value = text.partition("=")
        if not sep or not key.startswith("ARTICLEFORGE_"):
            raise argparse.ArgumentTypeError(f"--env takes ARTICLEFORGE_NAME=value, got {text!r}")
        return key, value

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", choices=sorted(SHAPES), default="llama2-7b")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (service and baselines)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"any of {SCENARIOS}")
    p.add_argument("--levels", type=ints, default=[1, 4, 16, 64, 128], help="sweep concurrency")
    p.add_argument("--nf4-levels", type=ints, default=[16], help="nf4 concurrency (sweep mix)")
    p.add_argument("--prompt-tokens", type=int, default=128, help="single-stream prompt length")
    p.add_argument("--prompt-range", type=ints, default=[64, 512], help="sweep prompt lengths")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7, help="sweep and nf4 levels")
    p.add_argument("--repeats", type=int, default=5, help="single-stream requests (median)")
    p.add_argument("--nf4-repeats", type=int, default=3)
    p.add_argument("--baseline-repeats", type=int, default=1, help="after one 8-token warm-up")
    p.add_argument("--requests-per-client", type=int, default=3)
    p.add_argument(
        "--level-seconds", type=float, default=30.0, help="no new request after this, per level"
    )
    p.add_argument("--max-batch-size", type=int, default=128)
    p.add_argument("--ready-timeout", type=float, default=420.0)
    p.add_argument(
        "--time-budget",
        type=float,
        default=540.0,
        help="seconds; later requests, levels and servers are skipped (the device allows 600)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--env",
        type=env_item,
        action="append",
        default=[],
        help="extra ARTICLEFORGE_NAME=value for both servers (repeatable); wins over the bench's",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="model and adapter folders, reused when current "
        "(default /tmp/articleforge-text-bench/MODEL)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="default bench/results/text_bench_CARD.json"
    )
    p.add_argument("--git-commit", default=None, help="recorded when the tree has no .git")
    args = p.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"--scenarios: unknown {sorted(unknown)}; choose from {SCENARIOS}")
    if len(args.prompt_range) != 2 or not 2 <= args.prompt_range[0] <= args.prompt_range[1]:
        p.error("--prompt-range takes LOW,HIGH with 2 <= LOW <= HIGH")
    if args.prompt_tokens < 2:
        p.error("--prompt-tokens must be >= 2 (bos + one byte)")
    args.env = dict(args.env)
    args.work_dir = args.work_dir or Path("/tmp/articleforge-text-bench") / args.model
    return args


def run_baselines(bench: Bench, folder: Path, adapter_dir: Path) -> None:
    """Builds what is missing and runs HF `generate` while no server holds the device."""
    import torch
    from transformers import AutoModelForCausalLM

    args, results = bench.args, bench.results
    base = None
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32  # as the service
    if folder_is_current(folder, args.model):
        results["model"].update(built=False)
    else:
        bench.phase(f"building the random {args.model} model on {args.device}")
        base, info = build_model_folder(folder, args.model, args.device)
        results["model"].update(info)
    prompt_ids = bench.tokenizer(bench.single_prompts("baseline", 1)[0]).input_ids
    try:
        if "baseline" in args.scenarios:
            bench.phase("HF generate baseline, dense")
            if base is None:
                base = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(args.device)
            base = base.to(dtype)
            results["scenarios"]["baseline_bf16"] = hf_generate(
                base, prompt_ids, args.new_tokens, args.baseline_repeats, args.device
            )
            bench.save()
        if "nf4" in args.scenarios and not (adapter_dir / "adapter_config.json").exists():
            bench.phase("building the random LoRA adapter")
            if base is None:
                base = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(args.device)
            results["model"]["adapter"] = build_adapter(base, adapter_dir)
        results["model"]["adapter_folder"] = str(adapter_dir)
    except Exception as exc:
        bench.failed("baseline_bf16", exc)
    del base
    results["device_memory_after_bf16"] = free_device(args.device)
    if "baseline" in args.scenarios and "nf4" in args.scenarios:
        bench.phase("HF generate baseline, nf4 + LoRA")
        try:
            t0 = time.perf_counter()
            lora_model = load_nf4_lora(folder, adapter_dir, args.device)
            load_s = round(time.perf_counter() - t0, 1)
            made = hf_generate(
                lora_model, prompt_ids, args.new_tokens, args.baseline_repeats, args.device
            )
            results["scenarios"]["baseline_nf4_lora"] = {"load_s": load_s, **made}
            del lora_model
        except Exception as exc:
            bench.failed("baseline_nf4_lora", exc)
        results["device_memory_after_nf4"] = free_device(args.device)
        bench.save()


def run_server(bench: Bench, folder: Path, name: str, nf4: bool) -> None:
    """One server: start, wait for /readyz, warm once, run its scenarios, stop."""
    args, scenarios = bench.args, bench.results["scenarios"]
    log_path = bench.out.with_name(f"{bench.out.stem}.server-{name}.log")
    server = Server(name, server_env(args, folder, nf4), log_path, args.ready_timeout)
    entry: dict[str, Any] = {"name": name, "env": server.env, "log": str(log_path)}
    bench.results["servers"].append(entry)
    if bench.out_of_time(f"server {name}"):
        return
    model = ADAPTER_NAME if nf4 else None
    bench.phase(f"starting server {name}")
    try:
        with server.running():
            entry["ready_s"] = round(server.ready_s or 0.0, 1)
            bench.phase(f"server {name} ready after {entry['ready_s']} s")
            entry["warm_request"] = asyncio.run(bench.warm(server, model))
            if nf4:
                bench.phase("nf4 + LoRA, 1 stream")
                scenarios["nf4_single"] = asyncio.run(
                    bench.single(server, "nf4_single", args.nf4_repeats, model)
                )
                bench.save()
                bench.phase(f"nf4 + LoRA, concurrency {args.nf4_levels}")
                asyncio.run(bench.sweep(server, "nf4_concurrent", args.nf4_levels, model))
            else:
                if "single" in args.scenarios:
                    bench.phase("dense, 1 stream")
                    scenarios["single"] = asyncio.run(
                        bench.single(server, "single", args.repeats, None)
                    )
                    bench.save()
                if "sweep" in args.scenarios:
                    bench.phase(f"dense, sweep {args.levels}")
                    asyncio.run(bench.sweep(server, "sweep", args.levels, None))
            entry["metrics_after"] = server.metrics()
    except Exception as exc:
        print(server.log_tail(), file=sys.stderr)
        bench.failed(f"server_{name}", exc)
    bench.save()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    card = card_name(args.device)
    out: Path = args.out or ROOT / "bench" / "results" / f"text_bench_{card_slug(card)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    folder, adapter_dir = args.work_dir / "model", args.work_dir / "adapter"
    results: dict[str, Any] = {
        "benchmark": "bench/text_bench.py",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "card": card,
        "versions": versions(),
        "git": git_commit() if args.git_commit is None else {"commit": args.git_commit},
        "argv": sys.argv[1:] if argv is None else argv,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": {
            "shape": SHAPES[args.model],
            "folder": str(folder),
            "tokenizer": (
                "byte-level, no merges: 0 <unk>, 1 <s> (bos), 2 </s> (eos), 3..258 bytes, "
                "259..31999 words ' w0'..; a plain prompt of n-1 ASCII characters is n tokens"
            ),
        },
        "servers": [],
        "scenarios": {},
        "errors": [],
        "records": [],
    }
    tokenizer = build_tokenizer(SHAPES[args.model]["vocab_size"])
    bench = Bench(args, tokenizer, results, out, started)

    run_baselines(bench, folder, adapter_dir)
    if {"single", "sweep"} & set(args.scenarios):
        run_server(bench, folder, "bf16", nf4=False)
    if "nf4" in args.scenarios:
        run_server(bench, folder, "nf4_lora", nf4=True)

    bench.phase(f"done; JSON in {out}")
    bench.save()
    print_table(results)
    bad = sum(s.get("errors", 0) for s in _summaries(results["scenarios"]))
    if results["errors"] or bad:
        print(f"{len(results['errors'])} phase(s) failed, {bad} request(s) failed", file=sys.stderr)
        return 1
    return 0


def _summaries(scenarios: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for value in scenarios.values():
        if isinstance(value, list):
            yield from value
        elif isinstance(value, dict):
            yield value


if __name__ == "__main__":
    sys.exit(main())
