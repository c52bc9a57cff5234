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

Scenarios (`--scenarios`, any of them; default all). They run in this order, server by
server: baseline, then the bf16 server (burst, single, sweep, prefix), the fp8 server (burst,
fp8), the nf4 server (nf4):
  baseline  in-process HF `generate`, batch 1, 128-token prompt, 256 new tokens, greedy,
            min_new_tokens so that it makes all 256: on the bf16 model, and (with nf4) on the
            nf4 base + the unmerged LoRA adapter. Runs before any server holds the GPU.
  burst     a server's first traffic, right after its /readyz (no warm-up request before):
            `--burst-size` (16) requests at once with the sweep's mix (one request each), then
            the same burst again on the warm server (same lengths and seeds, other text, so no
            prefix-cache hits). TTFT p50/p95 (server timings) and aggregate tok/s of each, and
            the server's start-up time (process start to /readyz). On each server of
            `--burst-servers` (bf16,fp8) that the call starts.
  single    1 stream, 128-token prompt, 256 new tokens, greedy, `--repeats` times; median tok/s
            (completion tokens over the client's wall time per request).
  sweep     `--levels` concurrent clients (1, 4, 16, 64, 128); prompts of 64-512 tokens drawn
            with a fixed seed, 256 new tokens, temperature 0.7, a seed per request. Each client
            sends `--requests-per-client` requests back to back, but starts none after
            `--level-seconds`. Aggregate tok/s = sum of completion tokens / the level's wall time.
  prefix    the prefix cache, on the bf16 server, greedy, `--prefix-new-tokens` (8). A prompt P
            of `--prefix-prompt-tokens` (2000) is sent once; then `--prefix-repeats` (5) times a
            prompt as long whose first `--prefix-shared-tokens` (1900) tokens are P's and whose
            next token is not (a hit: the whole pages of the shared part can come from the
            cache), each followed by a fresh random prompt as long (a miss, the baseline).
            TTFT of both and `usage.prompt_tokens_details.cached_tokens` of each. Then
            `--prefix-concurrency` (64) requests at once that share a `--prefix-system-tokens`
            (1000) prefix, sent once before, each with its own `--prefix-distinct-range`
            (64-512) tokens, and the same lengths with no shared prefix: TTFT p50/p95 and the
            share of prompt tokens served from the cache (the delta of the service's counters
            articleforge_text_prefix_cache_hit_tokens_total / _prompt_tokens_total; null where
            the service has no such counters).
  fp8       a server with ARTICLEFORGE_TEXT_QUANTIZATION=fp8 on the same bf16 folder: the
            single scenario (the same prompts, `--repeats`) and `--fp8-levels` (64) with the
            bf16 sweep's own request plans, so that fp8/bf16 ratios of the same call land in
            the JSON (`scenarios.fp8.vs_bf16`) and the table. Where the service refuses fp8
            (a CPU, a card before Hopper/Ada) the bench records {"refused": "<its sentence>"}
            and goes on.
  fp8kv     the same as fp8 on a server that also keeps its KV cache in E4M3
            (ARTICLEFORGE_TEXT_KV_CACHE_DTYPE=fp8): `scenarios.fp8kv.vs_bf16`.
  nf4       a second server with ARTICLEFORGE_TEXT_QUANTIZATION=nf4 and the random LoRA adapter
            (r=64, alpha 16, dropout 0.1, all seven linear layers per block) unmerged as
            `writer`: the single scenario (`--nf4-repeats`) and `--nf4-levels` (16) with the
            sweep's mix.

On the GPU machine (after the wheels prelude of shared/device/README.md; the JSON is rewritten
after every phase, so a run cut short keeps what it measured, and `--time-budget` skips what is
left rather than letting the device's limit cut the run off):

    python bench/text_bench.py --out "$OUT/text_bench_h200.json"  # all (~7 min, estimated)
    python bench/text_bench.py --scenarios burst,single,sweep,prefix,fp8 --levels 1,16,64 \
        --out "$OUT/text_bench_h100_fp8_prefix.json"   # bf16 + fp8 + burst + prefix, no HF
    python bench/text_bench.py --scenarios single,sweep --levels 1,16,64 \
        --env ARTICLEFORGE_TEXT_CUDA_GRAPHS=false --out "$OUT/no_graphs.json"
    python bench/text_bench.py --scenarios prefix --env ARTICLEFORGE_TEXT_PREFIX_CACHE=false \
        --out "$OUT/no_prefix_cache.json"              # the prefix scenario with the cache off

On a CPU, the same code path in a few seconds of work (a 2-layer model, the same tokenizer;
fp8 is refused there, and recorded):

    python bench/text_bench.py --model tiny --device cpu --new-tokens 8 --prompt-tokens 16 \
        --prompt-range 8,32 --levels 1,2 --fp8-levels 2 --nf4-levels 2 \
        --requests-per-client 1 --burst-size 4 --prefix-prompt-tokens 200 \
        --prefix-shared-tokens 150 --prefix-repeats 2 --prefix-concurrency 4 \
        --prefix-system-tokens 60 --prefix-distinct-range 8,24 --out /tmp/text_bench_cpu.json

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
SCENARIOS = ("baseline", "single", "sweep", "burst", "prefix", "fp8", "fp8kv", "nf4")
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


def random_words(count: int, rng: random.Random) -> str:
    """``count`` characters of random lowercase words, each followed by a space."""
    chars: list[str] = []
    while len(chars) < count:
        chars.extend(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9)))
        chars.append(" ")
    return "".join(chars[:count])


def prompt_text(tokenizer: Any, n_tokens: int, rng: random.Random, head: str = "") -> str:
    """``head``, then random lowercase words, that the tokenizer turns into exactly ``n_tokens``
    (bos included). A head of k characters is the prompt's first k+1 tokens."""
    if len(head) > n_tokens - 1:
        raise ValueError(f"a head of {len(head)} characters does not fit {n_tokens} tokens")
    text = head + random_words(n_tokens - 1 - len(head), rng)
    got = len(tokenizer(text).input_ids)
    if got != n_tokens:
        raise RuntimeError(f"prompt meant to be {n_tokens} tokens is {got}")
    return text


def diverging_prompt(tokenizer: Any, base: str, shared: int, rng: random.Random) -> str:
    """A prompt as long as ``base`` whose first ``shared`` tokens (bos included) are base's and
    whose next token is not: exactly ``shared`` tokens in common."""
    n_tokens = len(base) + 1
    tail = random_words(n_tokens - shared, rng)
    if tail[0] == base[shared - 1]:  # the first new character must differ from base's
        tail = ("a" if base[shared - 1] != "a" else "b") + tail[1:]
    text = prompt_text(tokenizer, n_tokens, rng, head=base[: shared - 1] + tail)
    ids, base_ids = tokenizer(text).input_ids, tokenizer(base).input_ids
    if ids[:shared] != base_ids[:shared] or ids[shared] == base_ids[shared]:
        raise RuntimeError(f"prompt meant to share exactly {shared} tokens with its base does not")
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


class ServerRefused(RuntimeError):
    """The server did not start: it exited, or its /readyz named why loading failed."""

    def __init__(self, name: str, sentence: str, log_path: Path) -> None:
        super().__init__(f"server {name} refused to start: {sentence} (log {log_path})")
        self.sentence = sentence


_CLI_ERROR = re.compile(r"^(configuration error|error|articleforge [a-z ]+): ")
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): ")


def refusal_sentence(log: str) -> str:
    """What a server that exited at start-up said: the CLI's own error lines ("configuration
    error: ...", "articleforge serve text: ..."; rich wraps them at the console's width, so
    wrapped lines are joined), else an exception's last line, else the last line."""
    lines = [line.rstrip() for line in log.splitlines()]
    blocks: list[str] = []
    i = 0
    while i < len(lines):
        if not _CLI_ERROR.match(lines[i]):
            i += 1
            continue
        parts = [lines[i]]
        i += 1
        while i < len(lines) and lines[i].strip():
            line = lines[i]
            if _CLI_ERROR.match(line) or _LOG_LINE.match(line) or line.startswith("Traceback"):
                break
            parts.append(line.strip())
            i += 1
        blocks.append(" ".join(parts))
    if blocks:
        return " ".join(blocks)
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line.strip()
    return next((line.strip() for line in reversed(lines) if line.strip()), "(no output)")


def load_failure(response: Any) -> str | None:
    """The reason in a 503 from /readyz once loading has failed (the process stays up then);
    None while the model is still loading."""
    if response is None or response.status_code != 503:
        return None
    try:
        message = str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return None
    return None if "still loading" in message else message


# The prefix cache's counters (cumulative); a share of prompt tokens served from the cache is
# the delta of the second over the delta of the first.
PREFIX_COUNTERS = (
    "articleforge_text_prompt_tokens_total",
    "articleforge_text_prefix_cache_hit_tokens_total",
    "articleforge_text_prefix_cache_hits_total",
)


def counter_delta(
    before: dict[str, float | None], after: dict[str, float | None]
) -> dict[str, float | None]:
    delta: dict[str, float | None] = {}
    for name, value in after.items():
        start = before.get(name)
        delta[name] = None if value is None or start is None else value - start
    return delta


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
    ready_at: float | None = None
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
                        said = refusal_sentence(self.log_tail(20000))
                        raise ServerRefused(self.name, said, self.log_path)
                    try:
                        response = httpx.get(f"{self.url}/readyz", timeout=2)
                    except httpx.HTTPError:
                        response = None
                    if response is not None and response.status_code == 200:
                        break
                    failed = load_failure(response)
                    if failed:
                        raise ServerRefused(self.name, failed, self.log_path)
                    if time.perf_counter() - t0 > self.ready_timeout:
                        raise TimeoutError(
                            f"server {self.name} not ready after {self.ready_timeout:.0f} s; "
                            f"log {self.log_path}:\n{self.log_tail()}"
                        )
                    time.sleep(0.25)
                self.ready_at = time.perf_counter()
                self.ready_s = self.ready_at - t0
                yield self
            finally:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()

    def counters(self, names: tuple[str, ...] = PREFIX_COUNTERS) -> dict[str, float | None]:
        """Counters from /metrics, summed over labels; None for each one the service lacks."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = httpx.get(f"{self.url}/metrics", timeout=10).text
        except httpx.HTTPError:
            return dict.fromkeys(names)
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in names:
                    found[sample.name] = found.get(sample.name, 0.0) + sample.value
        return {name: found.get(name) for name in names}

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
        # Prompt tokens served from the prefix cache; None where the service does not say.
        cached_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
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


def cached_sum(records: list[dict[str, Any]]) -> int | None:
    cached = [r.get("cached_tokens") for r in records]
    counted = [int(c) for c in cached if c is not None]
    if not cached or len(counted) != len(cached):
        return None
    return sum(counted)


def ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


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
        # From usage.prompt_tokens_details; None where the service does not report it.
        "cached_tokens": cached_sum(ok),
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

    async def single(
        self,
        server: Server,
        scenario: str,
        repeats: int,
        model: str | None,
        prompts_of: str | None = None,
    ) -> Any:
        """1 stream, fixed prompt length, greedy; one request after another. ``prompts_of``
        names the scenario whose prompts to send (fp8 sends bf16's, to compare like with like)."""
        runs: list[dict[str, Any]] = []
        prompts = self.single_prompts(prompts_of or scenario, repeats)
        for i, prompt in enumerate(prompts):
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
        self, scenario: str, level: int, model: str | None, plan_of: str | None = None
    ) -> list[list[tuple[dict[str, Any], dict[str, Any]]]]:
        lo, hi = self.args.prompt_range
        rng = random.Random(f"{self.args.seed}/{plan_of or scenario}/{level}")
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
        self,
        server: Server,
        scenario: str,
        levels: list[int],
        model: str | None,
        plan_of: str | None = None,
    ) -> None:
        done: list[dict[str, Any]] = self.results["scenarios"].setdefault(scenario, [])
        for level in levels:
            if self.out_of_time(f"{scenario} c={level}"):
                continue
            plan = self.sweep_plan(scenario, level, model, plan_of)
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

    async def burst(self, server: Server, scenario: str, model: str | None) -> dict[str, Any]:
        """``--burst-size`` requests at once, right after /readyz (no warm-up request before),
        then the same burst again on the now warm server. Both rounds have the same prompt
        lengths and seeds (the sweep's mix) but their own text, so the second gets no prefix
        cache hits from the first: first vs warm is start-up cost, not caching."""
        args = self.args
        lo, hi = args.prompt_range
        rng = random.Random(f"{args.seed}/burst/{args.burst_size}")
        shapes = [(rng.randint(lo, hi), rng.randrange(2**31)) for _ in range(args.burst_size)]
        result: dict[str, Any] = {"size": args.burst_size, "startup_s": server.ready_s}
        for round_name in ("first", "warm"):
            if round_name == "warm" and self.out_of_time(f"{scenario} warm"):
                break
            text_rng = random.Random(f"{args.seed}/burst/{round_name}")
            plan = []
            for client, (n, seed) in enumerate(shapes):
                body: dict[str, Any] = {
                    "prompt": prompt_text(self.tokenizer, n, text_rng),
                    "max_new_tokens": args.new_tokens,
                    "temperature": args.temperature,
                    "seed": seed,
                }
                if model:
                    body["model"] = model
                meta = {"scenario": f"{scenario}_{round_name}", "concurrency": args.burst_size}
                meta.update(client=client, index=0, prompt_tokens_sent=n)
                plan.append([(body, meta)])
            sent_at = time.perf_counter()
            records, wall = await run_clients(server.url, plan, 0.0)
            self.records.extend(records)
            summary = summarize(records, wall)
            if round_name == "first" and server.ready_at is not None:
                summary["sent_after_ready_s"] = sent_at - server.ready_at
            result[round_name] = summary
            print(
                f"  {scenario} {round_name}: TTFT p50 {summary['ttft_p50_s']}, "
                f"{summary['aggregate_tok_s']:.1f} tok/s in all, "
                f"{summary['ok']}/{summary['requests']} ok",
                flush=True,
            )
        first, warm = result["first"], result.get("warm", {})
        result["ttft_p50_first_over_warm"] = ratio(first["ttft_p50_s"], warm.get("ttft_p50_s"))
        result["ttft_p95_first_over_warm"] = ratio(first["ttft_p95_s"], warm.get("ttft_p95_s"))
        return result

    async def one_request(
        self, server: Server, prompt: str, scenario: str, index: int
    ) -> dict[str, Any]:
        """One greedy request of ``--prefix-new-tokens``, alone on the server."""
        body = {
            "prompt": prompt,
            "max_new_tokens": self.args.prefix_new_tokens,
            "temperature": 0.0,
            "seed": index,
        }
        meta = {"scenario": scenario, "concurrency": 1, "client": 0, "index": index}
        meta["prompt_tokens_sent"] = len(prompt) + 1
        records, _ = await run_clients(server.url, [[(body, meta)]], 0.0)
        self.records.extend(records)
        return records[0]

    async def prefix(self, server: Server) -> dict[str, Any]:
        """Time to first token when a prompt's first ``--prefix-shared-tokens`` are in the
        prefix cache (a prompt P was sent once before), against fresh prompts of the same
        length, one request at a time, hits and misses interleaved."""
        args = self.args
        n, shared = args.prefix_prompt_tokens, args.prefix_shared_tokens
        page = page_size(server.env)
        rng = random.Random(f"{args.seed}/prefix/{n}/{shared}")
        base = prompt_text(self.tokenizer, n, rng)
        result: dict[str, Any] = {
            "prompt_tokens": n,
            "shared_tokens": shared,
            "page_size": page,
            "cacheable_tokens": shared // page * page,  # whole pages of the shared part
            "new_tokens": args.prefix_new_tokens,
        }
        result["prime"] = await self.one_request(server, base, "prefix_prime", 0)
        hits: list[dict[str, Any]] = []
        misses: list[dict[str, Any]] = []
        for i in range(args.prefix_repeats):
            if i and self.out_of_time(f"prefix request {i}"):
                break
            hit = diverging_prompt(self.tokenizer, base, shared, rng)
            hits.append(await self.one_request(server, hit, "prefix_hit", i))
            miss = prompt_text(self.tokenizer, n, rng)
            misses.append(await self.one_request(server, miss, "prefix_miss", i))
        for name, records in (("hit", hits), ("miss", misses)):
            summary = summarize(records, None)
            summary["cached_tokens_runs"] = [r.get("cached_tokens") for r in records if r["ok"]]
            summary["ttft_runs_s"] = [r["ttft_s"] for r in records if r["ok"]]
            result[name] = summary
        result["ttft_p50_hit_over_miss"] = ratio(
            result["hit"]["ttft_p50_s"], result["miss"]["ttft_p50_s"]
        )
        print(
            f"  prefix: TTFT p50 hit {result['hit']['ttft_p50_s']}, miss "
            f"{result['miss']['ttft_p50_s']}, cached {result['hit']['cached_tokens_runs']}",
            flush=True,
        )
        return result

    async def prefix_shared(self, server: Server) -> dict[str, Any]:
        """``--prefix-concurrency`` requests at once that all begin with the same
        ``--prefix-system-tokens`` (a system prompt, sent once before so that it is cached),
        each followed by its own ``--prefix-distinct-range`` tokens; then the same lengths
        with no shared prefix. The cached share comes from the Prometheus counters' delta."""
        args = self.args
        level, system = args.prefix_concurrency, args.prefix_system_tokens
        lo, hi = args.prefix_distinct_range
        page = page_size(server.env)
        rng = random.Random(f"{args.seed}/prefix_shared/{level}/{system}")
        system_text = prompt_text(self.tokenizer, system, rng)
        lengths = [system + rng.randint(lo, hi) for _ in range(level)]
        result: dict[str, Any] = {
            "concurrency": level,
            "shared_tokens": system,
            "distinct_range": [lo, hi],
            "page_size": page,
            "cacheable_tokens_per_request": system // page * page,
            "new_tokens": args.prefix_new_tokens,
        }
        result["prime"] = await self.one_request(server, system_text, "prefix_shared_prime", 0)
        for name, head in (("hit", system_text), ("miss", "")):
            if name == "miss" and self.out_of_time("prefix_shared miss"):
                break
            plan = []
            for client, n in enumerate(lengths):
                body = {
                    "prompt": prompt_text(self.tokenizer, n, rng, head=head),
                    "max_new_tokens": args.prefix_new_tokens,
                    "temperature": 0.0,
                    "seed": client,
                }
                meta = {"scenario": f"prefix_shared_{name}", "concurrency": level}
                meta.update(client=client, index=0, prompt_tokens_sent=n)
                plan.append([(body, meta)])
            before = server.counters()
            records, wall = await run_clients(server.url, plan, 0.0)
            counters = counter_delta(before, server.counters())
            self.records.extend(records)
            summary = summarize(records, wall)
            summary["counters"] = counters
            summary["cached_share"] = ratio(
                counters["articleforge_text_prefix_cache_hit_tokens_total"],
                counters["articleforge_text_prompt_tokens_total"],
            )
            summary["cached_share_usage"] = ratio(
                summary["cached_tokens"], summary["prompt_tokens"]
            )
            result[name] = summary
            print(
                f"  prefix_shared {name} c={level}: TTFT p50 {summary['ttft_p50_s']}, "
                f"p95 {summary['ttft_p95_s']}, cached share {summary['cached_share']}",
                flush=True,
            )
        result["ttft_p50_hit_over_miss"] = ratio(
            result["hit"]["ttft_p50_s"], result.get("miss", {}).get("ttft_p50_s")
        )
        return result


# --- the run ------------------------------------------------------------------------------------


def card_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(0))
    return f"cpu ({platform.processor() or platform.machine()})"


def fp8_capable(device: str) -> bool:
    """Whether the card has FP8 tensor cores (compute capability 8.9, Ada, or newer)."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return False
    return tuple(torch.cuda.get_device_capability(torch.device(device))) >= (8, 9)


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


# The servers the bench can start, and the quantization each one runs.
QUANTIZATION = {"bf16": "none", "fp8": "fp8", "fp8kv": "fp8", "nf4_lora": "nf4"}


def server_env(args: argparse.Namespace, folder: Path, name: str) -> dict[str, str]:
    device = args.device
    most = max([*args.levels, *args.nf4_levels, *args.fp8_levels, args.burst_size])
    most = max(most, args.prefix_concurrency)
    env = {
        "ARTICLEFORGE_TEXT_MODEL": str(folder),
        "ARTICLEFORGE_TEXT_DEVICE": device,
        "ARTICLEFORGE_TEXT_MAX_BATCH_SIZE": str(args.max_batch_size),
        "ARTICLEFORGE_TEXT_MAX_QUEUE": str(max(256, 2 * most)),
        "ARTICLEFORGE_TEXT_QUANTIZATION": QUANTIZATION[name],
        "ARTICLEFORGE_LOG_LEVEL": "INFO",
    }
    if name == "fp8kv":  # fp8 weights and an E4M3 KV cache
        env["ARTICLEFORGE_TEXT_KV_CACHE_DTYPE"] = "fp8"
    if name == "nf4_lora":
        env["ARTICLEFORGE_TEXT_ADAPTER"] = f"{ADAPTER_NAME}={args.work_dir / 'adapter'}"
    env.update(args.env)
    return env


def page_size(env: dict[str, str]) -> int:
    """The server's KV page size: what the prefix cache can share is whole pages."""
    from services.text.config import TextSettings

    default = TextSettings.model_fields["text_kv_page_size"].default
    return int(env.get("ARTICLEFORGE_TEXT_KV_PAGE_SIZE", default))


def fp8_vs_bf16(scenarios: dict[str, Any], name: str = "fp8") -> dict[str, Any]:
    """fp8 (or fp8kv) over bf16, both servers of the same call: 1 stream and each common
    sweep level."""
    single, fp8 = scenarios.get("single") or {}, scenarios.get(f"{name}_single") or {}
    out: dict[str, Any] = {
        "single_tok_s": ratio(fp8.get("tok_s_median"), single.get("tok_s_median")),
        "single_ttft_p50": ratio(fp8.get("ttft_p50_s"), single.get("ttft_p50_s")),
        "levels": {},
    }
    bf16_levels = {lv["concurrency"]: lv for lv in scenarios.get("sweep", [])}
    for level in scenarios.get(f"{name}_concurrent", []):
        dense = bf16_levels.get(level["concurrency"])
        if dense is None:
            continue
        out["levels"][str(level["concurrency"])] = {
            "aggregate_tok_s": ratio(level.get("aggregate_tok_s"), dense.get("aggregate_tok_s")),
            "ttft_p50": ratio(level.get("ttft_p50_s"), dense.get("ttft_p50_s")),
            "ttft_p95": ratio(level.get("ttft_p95_s"), dense.get("ttft_p95_s")),
        }
    return out


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

    def times(value: float | None) -> str:
        return "-" if value is None else f"×{value:.2f}"

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

    def burst(key: str, label: str) -> None:
        if key not in scenarios:
            return
        b = scenarios[key]
        for round_name, what in (("first", "right after /readyz"), ("warm", "again, warm")):
            s = b.get(round_name)
            if s is None:
                continue
            startup = f", start-up {b['startup_s']:.1f} s" if round_name == "first" else ""
            rows.append(
                f"| {label} burst: {b['size']} at once {what}{startup}, {mix} "
                f"| {num(s['aggregate_tok_s'])} in all | {ms(s['ttft_p50_s'])} "
                f"| {ms(s['ttft_p95_s'])} | |"
            )
        rows.append(
            f"| {label} burst, first ÷ warm | | {times(b.get('ttft_p50_first_over_warm'))} "
            f"| {times(b.get('ttft_p95_first_over_warm'))} | |"
        )

    dense = "bf16" if settings["device"].startswith("cuda") else "fp32 (CPU)"
    burst("burst", dense)
    single("single", dense, f"HF generate {dense}: {num(base)}")
    levels("sweep", dense)
    for name in ("fp8", "fp8kv"):
        fp8 = scenarios.get(name)
        if fp8 is not None and "refused" in fp8:
            rows.append(f"| {name}: the server refused to start: {fp8['refused']} | | | | |")
        elif fp8 is not None:
            burst(f"{name}_burst", name)
            dense_single = scenarios.get("single", {}).get("tok_s_median")
            single(f"{name}_single", name, f"{dense} server: {num(dense_single)}")
            levels(f"{name}_concurrent", name)
            vs = fp8_vs_bf16(scenarios, name)
            rows.append(
                f"| {name} ÷ {dense}, 1 stream, same call | {times(vs['single_tok_s'])} "
                f"| {times(vs['single_ttft_p50'])} | | |"
            )
            for level, r in vs["levels"].items():
                rows.append(
                    f"| {name} ÷ {dense}, {level} concurrent, same call "
                    f"| {times(r['aggregate_tok_s'])} | {times(r['ttft_p50'])} "
                    f"| {times(r['ttft_p95'])} | |"
                )
    prefix = scenarios.get("prefix")
    if prefix is not None:
        hit, miss = prefix["hit"], prefix["miss"]
        cached = [c for c in hit.get("cached_tokens_runs", []) if c is not None]
        said = (
            f"cached {min(cached)}-{max(cached)} tokens" if cached else "cached tokens not reported"
        )
        rows.append(
            f"| prefix hit: {prefix['prompt_tokens']}-token prompt, first "
            f"{prefix['shared_tokens']} as a prompt sent before ({said}; "
            f"{prefix['cacheable_tokens']} in whole pages), {prefix['new_tokens']} new, greedy "
            f"({hit['ok']} requests) | | {ms(hit['ttft_p50_s'])} | {ms(hit['ttft_p95_s'])} "
            f"| no shared prefix: {ms(miss['ttft_p50_s'])} |"
        )
        rows.append(
            f"| prefix miss: fresh {prefix['prompt_tokens']}-token prompts ({miss['ok']}) "
            f"| | {ms(miss['ttft_p50_s'])} | {ms(miss['ttft_p95_s'])} "
            f"| hit ÷ miss p50 {times(prefix.get('ttft_p50_hit_over_miss'))} |"
        )
    shared = scenarios.get("prefix_shared")
    if shared is not None:
        lo, hi = shared["distinct_range"]
        for name in ("hit", "miss"):
            s = shared.get(name)
            if s is None:
                continue
            share = s.get("cached_share")
            what = (
                f"{shared['shared_tokens']} shared (cached before) + {lo}-{hi} own tokens"
                if name == "hit"
                else "no shared prefix, same lengths"
            )
            share_text = (
                "counters missing" if share is None else f"{share:.0%} of prompt tokens cached"
            )
            rows.append(
                f"| {shared['concurrency']} at once, {what}, {shared['new_tokens']} new, greedy "
                f"({share_text}) | {num(s.get('aggregate_tok_s'))} in all | {ms(s['ttft_p50_s'])} "
                f"| {ms(s['ttft_p95_s'])} | |"
            )
    nf4 = "nf4 + unmerged LoRA r=64"
    burst("nf4_burst", nf4)
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

    def names(text: str) -> list[str]:
        return [x.strip() for x in text.split(",") if x.strip()]

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
    p.add_argument(
        "--fp8-levels", type=ints, default=[64], help="fp8 concurrency (the bf16 sweep's plans)"
    )
    p.add_argument("--burst-size", type=int, default=16, help="requests sent at once by `burst`")
    p.add_argument(
        "--burst-servers",
        type=names,
        default=["bf16", "fp8"],
        help="servers whose first requests are the burst, of bf16,fp8,nf4 (those started)",
    )
    p.add_argument("--prefix-prompt-tokens", type=int, default=2000, help="`prefix` prompts")
    p.add_argument(
        "--prefix-shared-tokens", type=int, default=1900, help="tokens a hit shares with P"
    )
    p.add_argument("--prefix-repeats", type=int, default=5, help="hits (and as many misses)")
    p.add_argument("--prefix-new-tokens", type=int, default=8, help="`prefix`, greedy")
    p.add_argument(
        "--prefix-concurrency", type=int, default=64, help="requests at once on a shared prefix"
    )
    p.add_argument(
        "--prefix-system-tokens", type=int, default=1000, help="their shared prefix (bos incl.)"
    )
    p.add_argument(
        "--prefix-distinct-range",
        type=ints,
        default=[64, 512],
        help="their own tokens after the shared prefix",
    )
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
        help="extra ARTICLEFORGE_NAME=value for every server (repeatable); wins over the bench's",
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
    if not 2 <= args.prefix_shared_tokens < args.prefix_prompt_tokens:
        p.error("--prefix-shared-tokens must be >= 2 and below --prefix-prompt-tokens")
    if args.prefix_system_tokens < 2:
        p.error("--prefix-system-tokens must be >= 2 (bos + one byte)")
    lo_hi = args.prefix_distinct_range
    if len(lo_hi) != 2 or not 1 <= lo_hi[0] <= lo_hi[1]:
        p.error("--prefix-distinct-range takes LOW,HIGH with 1 <= LOW <= HIGH")
    bad_servers = set(args.burst_servers) - {"bf16", "fp8", "nf4"}
    if bad_servers:
        p.error(f"--burst-servers: unknown {sorted(bad_servers)}; choose from bf16, fp8, nf4")
    for option in ("burst_size", "prefix_repeats", "prefix_concurrency", "prefix_new_tokens"):
        if getattr(args, option) < 1:
            p.error(f"--{option.replace('_', '-')} must be >= 1")
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


def run_server(bench: Bench, folder: Path, name: str) -> None:
    """One server (bf16, fp8 or nf4_lora): start, wait for /readyz, run its scenarios, stop.

    With `burst` the server's first requests are the burst, right after /readyz; otherwise one
    warm-up request (not counted) goes first."""
    args, scenarios = bench.args, bench.results["scenarios"]
    log_path = bench.out.with_name(f"{bench.out.stem}.server-{name}.log")
    server = Server(name, server_env(args, folder, name), log_path, args.ready_timeout)
    entry: dict[str, Any] = {"name": name, "env": server.env, "log": str(log_path)}
    bench.results["servers"].append(entry)
    if bench.out_of_time(f"server {name}"):
        return
    model = ADAPTER_NAME if name == "nf4_lora" else None
    short = name.split("_")[0]  # bf16, fp8, nf4: the prefix of its scenarios' keys
    bench.phase(f"starting server {name}")
    try:
        with server.running():
            entry["ready_s"] = round(server.ready_s or 0.0, 1)
            bench.phase(f"server {name} ready after {entry['ready_s']} s")
            if "burst" in args.scenarios and short in args.burst_servers:
                key = "burst" if name == "bf16" else f"{short}_burst"
                bench.phase(f"{name}, burst of {args.burst_size} right after /readyz")
                scenarios[key] = asyncio.run(bench.burst(server, key, model))
                bench.save()
            else:
                entry["warm_request"] = asyncio.run(bench.warm(server, model))
            if name == "nf4_lora":
                bench.phase("nf4 + LoRA, 1 stream")
                scenarios["nf4_single"] = asyncio.run(
                    bench.single(server, "nf4_single", args.nf4_repeats, model)
                )
                bench.save()
                bench.phase(f"nf4 + LoRA, concurrency {args.nf4_levels}")
                asyncio.run(bench.sweep(server, "nf4_concurrent", args.nf4_levels, model))
            elif name in ("fp8", "fp8kv"):
                scenarios[name] = {"server": name}
                bench.phase(f"{name}, 1 stream (the bf16 server's prompts)")
                scenarios[f"{name}_single"] = asyncio.run(
                    bench.single(server, f"{name}_single", args.repeats, None, prompts_of="single")
                )
                bench.save()
                bench.phase(f"{name}, concurrency {args.fp8_levels} (the bf16 sweep's plans)")
                asyncio.run(
                    bench.sweep(
                        server, f"{name}_concurrent", args.fp8_levels, None, plan_of="sweep"
                    )
                )
                scenarios[name]["vs_bf16"] = fp8_vs_bf16(scenarios, name)
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
                if "prefix" in args.scenarios and not bench.out_of_time("prefix"):
                    bench.phase(
                        f"prefix cache: {args.prefix_prompt_tokens}-token prompts, "
                        f"{args.prefix_shared_tokens} shared"
                    )
                    scenarios["prefix"] = asyncio.run(bench.prefix(server))
                    bench.save()
                if "prefix" in args.scenarios and not bench.out_of_time("prefix_shared"):
                    bench.phase(
                        f"prefix cache: {args.prefix_concurrency} at once, "
                        f"{args.prefix_system_tokens} shared tokens"
                    )
                    scenarios["prefix_shared"] = asyncio.run(bench.prefix_shared(server))
            entry["metrics_after"] = server.metrics()
    except ServerRefused as exc:
        entry["refused"] = exc.sentence
        if name in ("fp8", "fp8kv"):  # expected on a CPU or a card before Ada/Hopper: recorded
            bench.phase(f"server {name} refused to start: {exc.sentence}")
            scenarios[name] = {"refused": exc.sentence}
            if fp8_capable(args.device):  # but a card with FP8 tensor cores should have run it
                print(server.log_tail(), file=sys.stderr)
                bench.failed(f"server_{name}", exc)
        else:
            print(server.log_tail(), file=sys.stderr)
            bench.failed(f"server_{name}", exc)
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
    chosen = set(args.scenarios)
    if {"single", "sweep", "prefix"} & chosen or (
        "burst" in chosen and "bf16" in args.burst_servers
    ):
        run_server(bench, folder, "bf16")
    if "fp8" in chosen:
        run_server(bench, folder, "fp8")
    if "fp8kv" in chosen:
        run_server(bench, folder, "fp8kv")
    if "nf4" in chosen:
        run_server(bench, folder, "nf4_lora")

    bench.phase(f"done; JSON in {out}")
    bench.save()
    print_table(results)
    bad = sum(not record["ok"] for record in results["records"])
    if results["errors"] or bad:
        print(f"{len(results['errors'])} phase(s) failed, {bad} request(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
