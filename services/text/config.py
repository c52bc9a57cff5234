"""Settings of the text service (``ARTICLEFORGE_TEXT_*``)."""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Literal

from pydantic import Field, model_validator

from services.common.config import CommonSettings

_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class TextSettings(CommonSettings):
    # HF id, local folder, or `tiny` (a small random-weight Llama built offline).
    text_model: str = "tiny"
    # PEFT adapter(s): `path`, or `name=path,name2=path2`. A request picks one with `model`.
    text_adapter: str | None = None
    # `nf4`: bitsandbytes 4-bit NormalFloat, bf16 compute, no double quantization (seed paper).
    # `fp8`: the decoder's linear layers in FP8 E4M3 (per-channel weight scales, per-token
    # activation scales; services/text/fp8.py), from a bf16 or an FP8 checkpoint. Needs FP8
    # tensor cores (Hopper or Ada); refused at start-up elsewhere.
    text_quantization: Literal["none", "nf4", "fp8"] = "none"
    # Weights dtype; `auto` is bfloat16 on CUDA and float32 on the CPU.
    text_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # `auto` picks CUDA when present; otherwise `cpu`, `cuda` or `cuda:N`.
    text_device: str = "auto"
    # Merge a single adapter into a 16/32-bit base at load time (free per token); with fp8
    # the merged weights are then quantized. Adapters on an nf4 base or an FP8 checkpoint, or
    # several adapters, always stay unmerged.
    text_merge_adapter: bool = True
    # Most requests decoded together (running rows of the continuous batch). One CUDA graph
    # is captured per batch-size bucket up to this number at start-up.
    text_max_batch_size: int = Field(default=128, ge=1, le=512)
    # Most requests admitted at once (running + waiting); beyond it the service answers 429.
    text_max_queue: int = Field(default=256, ge=1)
    # When the engine is idle and a request arrives, how long it waits for others to start
    # with it, in milliseconds. A busy engine admits new requests at every step.
    text_batch_wait_ms: float = Field(default=5.0, ge=0, le=1000)
    # Most prompt tokens prefilled in one engine step. A longer prompt runs in chunks, so a
    # running stream waits at most one chunk between two tokens (about 50 ms for 2048
    # tokens of a 7B model on an H100-class card).
    text_prefill_chunk_tokens: int = Field(default=2048, ge=16, le=65536)
    # What the KV cache stores: `auto` is the model's dtype; `fp8` is E4M3 (vLLM's
    # `--kv-cache-dtype fp8`): half the bytes a token, so twice the tokens fit and a decode step
    # of many rows reads half the KV; scale 1, saturated at 448 (services/text/attention.py).
    # Native runner only; on CUDA it needs compute capability 8.9 or newer (Ada, Hopper).
    text_kv_cache_dtype: Literal["auto", "fp8"] = "auto"
    # Tokens per KV-cache page.
    text_kv_page_size: int = Field(default=16, ge=1, le=1024)
    # Share the KV pages of a common prompt prefix between requests (vLLM's automatic prefix
    # caching): full pages of prompt tokens are keyed by a hash of the whole prefix and stay
    # in the cache after their request ends, until the memory is needed. The five section
    # prompts of one article then prefill their shared prefix once. Native runner only.
    text_prefix_cache: bool = True
    # Share of the GPU's memory the engine may fill (weights, activations, KV cache); the KV
    # cache gets what is left of it after the weights and a full-size prefill. CUDA only.
    text_gpu_memory_utilization: float = Field(default=0.9, gt=0, le=0.99)
    # KV-cache size in tokens; overrides the memory share. On the CPU the default is what
    # fits in 1 GiB (at most max_batch_size full context windows).
    text_kv_cache_tokens: int | None = Field(default=None, ge=16)
    # Replay decode steps as CUDA graphs (captured at start-up). CUDA only.
    text_cuda_graphs: bool = True
    # `native`: the engine's own Llama forward (Llama, Llama-3, Mistral); `hf`: the
    # transformers model, one sequence at a time; `auto`: native where it can, else hf.
    text_runner: Literal["auto", "native", "hf"] = "auto"
    # Longest prompt accepted, in tokens (also bounded by the model's context window).
    text_max_input_tokens: int = Field(default=3072, ge=1)
    # Largest `max_new_tokens` a request may ask for.
    text_max_new_tokens: int = Field(default=2048, ge=1)
    # `max_new_tokens` when a request does not say.
    text_default_max_new_tokens: int = Field(default=512, ge=1)
    # Name the base model is served under in `/v1/models`; defaults to the model setting.
    text_served_model_name: str | None = None
    # Largest request body, in bytes (ARTICLEFORGE_MAX_BODY_BYTES, as in every service). 4 MiB
    # here: a perplexity batch may hold 500,000 characters, at up to 6 bytes each as JSON.
    max_body_bytes: int = Field(default=4 << 20, ge=1024)
    # Bind address and port of `articleforge serve text`.
    text_host: str = "127.0.0.1"
    text_port: int = Field(default=8001, ge=1, le=65535)

    @model_validator(mode="after")
    def _check(self) -> TextSettings:
        if self.text_default_max_new_tokens > self.text_max_new_tokens:
            raise ValueError(
                "ARTICLEFORGE_TEXT_DEFAULT_MAX_NEW_TOKENS "
                f"({self.text_default_max_new_tokens}) is larger than "
                f"ARTICLEFORGE_TEXT_MAX_NEW_TOKENS ({self.text_max_new_tokens}); lower the "
                "default or raise the limit"
            )
        names = self.adapters()  # fails at start-up on a malformed adapter list
        if self.base_model_name in names:
            raise ValueError(
                f"ARTICLEFORGE_TEXT_ADAPTER names an adapter {self.base_model_name!r}, the "
                "base model's own name, so requests could not tell them apart; name it, e.g. "
                f"ARTICLEFORGE_TEXT_ADAPTER=writer={names[self.base_model_name]}"
            )
        return self

    def adapters(self) -> dict[str, str]:
        """``{name: path}`` parsed from ``text_adapter``, in the order given."""
        if not self.text_adapter:
            return {}
        found: dict[str, str] = {}
        for item in (part.strip() for part in self.text_adapter.split(",")):
            if not item:
                continue
            name, sep, path = item.partition("=")
            if not sep:
                path = item
                name = PurePath(item.rstrip("/")).name or "adapter"
            name, path = name.strip(), path.strip()
            if not _ADAPTER_NAME.match(name) or not path:
                raise ValueError(
                    f"ARTICLEFORGE_TEXT_ADAPTER entry {item!r} is not `path` or `name=path` "
                    "(names use letters, digits, '.', '_' and '-')"
                )
            if name in found:
                raise ValueError(f"ARTICLEFORGE_TEXT_ADAPTER names {name!r} twice")
            found[name] = path
        return found

    @property
    def base_model_name(self) -> str:
        return self.text_served_model_name or self.text_model
