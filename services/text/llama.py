"""A lean Llama forward for the engine (Llama, Llama-3, Mistral), built from the loaded HF model.

gpt-fast's shape: fused QKV and gate/up projections, RMSNorm, rotary embeddings from a table,
and attention over the paged KV cache (``attention.py``). The weights come from the model that
transformers loaded (``from_pretrained`` on the safetensors, nf4 through bitsandbytes, adapters
through peft), so loading stays the library's job; this file only re-packs them.

Unmerged LoRA adapters run batched: for each projection the adapters' A matrices are stacked
into one ``[R, in]`` matrix and their B matrices (scaling folded in) into one ``[out, R]``
block matrix. A row picks its adapter through a 0/1 mask over the R columns, so every row of a
batch, whatever its adapter, goes through the same three matmuls, and the step stays one
static graph.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from services.text import fp8
from services.text.attention import (
    decode_attention_torch,
    decode_attention_triton,
    prefill_attention,
    store_kv,
    triton_available,
)
from services.text.fp8 import Fp8Weight

logger = logging.getLogger(__name__)

SUPPORTED = ("llama", "mistral")
# How a projection multiplies its rows by its FP8 weight (``kernels.Fp8Planner.matmul`` on CUDA).
Fp8Matmul = Callable[[torch.Tensor, Fp8Weight], torch.Tensor]


class Unsupported(Exception):
    """The model or its adapters need the HF model code (the engine falls back to it)."""


@dataclass
class Segment:
    """A prompt chunk inside a step's token list."""

    offset: int  # where its tokens start in the step's flat token list
    length: int
    start: int  # tokens of this sequence already cached
    slots: torch.Tensor | None  # flat cache slots of positions [0, start + length), if start > 0


@dataclass
class StepInputs:
    """Everything one forward needs besides the token ids and positions."""

    slots: torch.Tensor | None  # [T] where each token's K/V goes; None: no cache (scoring)
    num_decode: int = 0  # the first num_decode tokens are decode rows
    block_tables: torch.Tensor | None = None  # int32 [num_decode, pages]
    lengths: torch.Tensor | None = None  # int32 [num_decode]: cached tokens incl. the new one
    segments: list[Segment] = field(default_factory=list)
    splits: int = 0  # Triton decode splits; 0 = the torch path
    lora_rows: torch.Tensor | None = None  # int64 [T]: adapter index of each token (0 = none)
    _masks: dict[int, torch.Tensor] = field(default_factory=dict)

    def lora_mask(self, table: torch.Tensor) -> torch.Tensor:
        mask = self._masks.get(id(table))
        if mask is None:
            assert self.lora_rows is not None
            mask = self._masks[id(table)] = table[self.lora_rows]
        return mask


def _w8a8(
    x: torch.Tensor,
    weight: Fp8Weight,
    quantize_rows: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    return weight.matmul(x, quantize_rows)


class Projection:
    """One or several HF linears fused into one: ``x -> cat(q(x), k(x), v(x))``, plus LoRA.

    The base product is one of: a bf16/fp32 ``weight`` (``F.linear``), an ``fp8`` weight
    (``fp8_matmul``: ``torch._scaled_mm`` on per-token quantized rows, or on CUDA, for the few
    rows of a decode step, the weight-only kernel that ``kernels.Fp8Planner`` found faster), or
    the HF ``modules`` themselves (bitsandbytes' nf4 layers, which cannot be fused).
    """

    def __init__(
        self,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        modules: list[Callable[[torch.Tensor], torch.Tensor]],
        lora: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
        fp8: Fp8Weight | None = None,
        fp8_matmul: Fp8Matmul | None = None,
    ) -> None:
        self.weight, self.bias, self.modules, self.lora = weight, bias, modules, lora
        self.fp8, self.fp8_matmul = fp8, fp8_matmul

    def __call__(self, x: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        if self.fp8 is not None:
            assert self.fp8_matmul is not None
            y = self.fp8_matmul(x, self.fp8)
            if self.bias is not None:
                y = y + self.bias
        elif self.weight is not None:
            y = F.linear(x, self.weight, self.bias)
        elif len(self.modules) == 1:
            y = self.modules[0](x)
        else:
            y = torch.cat([m(x) for m in self.modules], dim=-1)
        if self.lora is not None and inputs.lora_rows is not None:
            a, b, table = self.lora
            y = y + F.linear(F.linear(x, a) * inputs.lora_mask(table), b)
        return y


def _is_quantized(module: Any) -> bool:
    return hasattr(getattr(module, "weight", None), "quant_state")


def _lora_parts(module: Any) -> tuple[Any, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The base linear of a (possibly peft-wrapped) linear, and its adapters' (A, B * scale)."""
    if not hasattr(module, "base_layer"):
        return module, {}
    parts = {}
    for name in module.lora_A:
        if getattr(module, "use_dora", {}).get(name):
            raise Unsupported(f"adapter {name!r} uses DoRA")
        a = module.lora_A[name].weight
        b = module.lora_B[name].weight * module.scaling[name]
        parts[name] = (a, b)
    return module.base_layer, parts


class _Tables:
    """One 0/1 column-selection table per distinct LoRA column layout, shared across layers."""

    def __init__(self, adapters: Sequence[str], device: torch.device, dtype: torch.dtype) -> None:
        self.adapters, self.device, self.dtype = list(adapters), device, dtype
        self._tables: dict[tuple[tuple[int, int], ...], torch.Tensor] = {}

    def get(self, columns: list[tuple[int, int]]) -> torch.Tensor:
        """``columns``: (adapter index, rank) per block, in column order."""
        key = tuple(columns)
        table = self._tables.get(key)
        if table is None:
            total = sum(r for _, r in columns)
            table = torch.zeros((len(self.adapters) + 1, total), dtype=self.dtype)
            at = 0
            for index, rank in columns:
                table[index, at : at + rank] = 1
                at += rank
            table = self._tables[key] = table.to(self.device)
        return table


def _bias(bases: Sequence[Any]) -> torch.Tensor | None:
    if all(b.bias is None for b in bases):
        return None
    return torch.cat(
        [b.bias if b.bias is not None else b.weight.new_zeros(b.weight.shape[0]) for b in bases]
    ).detach()


def _fuse(
    modules: list[Any],
    adapters: Sequence[str],
    tables: _Tables,
    fp8_matmul: Fp8Matmul | None = None,
) -> Projection:
    """``fp8_matmul`` set: the fused weight in FP8 (``fp8.py``), multiplied by it."""
    bases, loras = zip(*(_lora_parts(m) for m in modules), strict=True)
    dtype = bases[0].weight.dtype
    if any(_is_quantized(b) for b in bases):
        projection = Projection(None, None, list(bases), None)
        dtype = torch.bfloat16
    elif fp8_matmul is not None:
        bias = _bias(bases)
        quantized = Fp8Weight.cat([fp8.from_linear(b) for b in bases])
        projection = Projection(None, bias, [], None, quantized, fp8_matmul)
        for b in bases:  # the FP8 copy replaces the originals; free them now
            b.weight.data = b.weight.data.new_empty(0)
    else:
        weight = torch.cat([b.weight for b in bases]) if len(bases) > 1 else bases[0].weight
        projection = Projection(weight.detach(), _bias(bases), [], None)
        if len(bases) > 1:  # the fused copy replaces the originals; free them now
            for b in bases:
                b.weight.data = b.weight.data.new_empty(0)
    outs = [b.out_features for b in bases]
    a_blocks, b_blocks, columns = [], [], []
    total_out = sum(outs)
    for sub, parts in enumerate(loras):
        for index, name in enumerate(adapters, start=1):
            if name not in parts:
                continue
            a, b = parts[name]
            a_blocks.append((a, sub))
            b_blocks.append(b)
            columns.append((index, a.shape[0]))
    if a_blocks:
        like = a_blocks[0][0]
        if not dtype.is_floating_point or dtype.itemsize == 1:
            dtype = torch.bfloat16
        a_all = torch.cat([a for a, _ in a_blocks]).to(dtype)
        b_all = torch.zeros((total_out, a_all.shape[0]), dtype=dtype, device=like.device)
        col = 0
        for (_, sub), b in zip(a_blocks, b_blocks, strict=True):
            row = sum(outs[:sub])
            b_all[row : row + b.shape[0], col : col + b.shape[1]] = b.to(dtype)
            col += b.shape[1]
        projection.lora = (a_all.detach(), b_all.detach(), tables.get(columns))
    return projection


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _TorchGlue:
    """``kernels.py``'s three operations in plain torch, with the same signatures and in-place
    effects, in transformers' arithmetic (rotary embedding in the weights' dtype)."""

    @staticmethod
    def add_rms_norm(
        h: torch.Tensor, y: torch.Tensor | None, weight: torch.Tensor, eps: float
    ) -> torch.Tensor:
        if y is not None:
            h.add_(y)
        return _rms_norm(h, weight, eps)

    @staticmethod
    def rope_store(
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor | None,
        k_cache: torch.Tensor | None,
        v_cache: torch.Tensor | None,
        heads: int,
        kv_heads: int,
        dim: int,
    ) -> None:
        c = cos[positions].to(qkv.dtype)[:, None, :]
        s = sin[positions].to(qkv.dtype)[:, None, :]
        rotated = qkv[:, : (heads + kv_heads) * dim].view(-1, heads + kv_heads, dim)
        rotated.copy_(rotated * c + _rotate_half(rotated) * s)
        if slots is not None and k_cache is not None and v_cache is not None:
            k = rotated[:, heads:]
            v = qkv[:, (heads + kv_heads) * dim :].view(-1, kv_heads, dim)
            store_kv(k_cache, slots, k)
            store_kv(v_cache, slots, v)

    @staticmethod
    def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up


@dataclass
class _Layer:
    input_norm: torch.Tensor
    qkv: Projection
    o: Projection
    post_norm: torch.Tensor
    gate_up: Projection
    down: Projection


class LeanLlama:
    def __init__(
        self, hf_model: Any, adapters: Sequence[str], context: int, fp8_linears: bool = False
    ) -> None:
        """``fp8_linears``: the decoder blocks' linear layers in FP8 (``fp8.py``); the caller
        has checked that the device runs FP8 matmuls (the CPU runs torch's reference)."""
        inner = hf_model.get_base_model() if hasattr(hf_model, "get_base_model") else hf_model
        config = inner.config
        if config.model_type not in SUPPORTED:
            raise Unsupported(f"model type {config.model_type!r}")
        if getattr(config, "hidden_act", "silu") not in ("silu", "swish"):
            raise Unsupported(f"activation {config.hidden_act!r}")
        body = inner.model
        self.config = config
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.vocab = config.vocab_size
        self.embed = body.embed_tokens.weight.detach()
        self.device = self.embed.device
        self.dtype = self.embed.dtype
        self.norm = body.norm.weight.detach()
        lm_head = inner.lm_head
        head_base, head_lora = _lora_parts(lm_head)
        if head_lora or _is_quantized(head_base):
            raise Unsupported("an adapter or quantization on lm_head")
        self.lm_head = head_base.weight.detach()
        tables = _Tables(adapters, self.device, self.dtype)
        quant: Fp8Matmul | None = None
        self.fp8_planner: Any = None
        if fp8_linears:
            if self.device.type == "cuda" and triton_available():
                from services.text.kernels import Fp8Planner, quantize_rows

                self.fp8_planner = Fp8Planner(quantize_rows)
                quant = self.fp8_planner.matmul
            else:  # torch's reference FP8 matmul (the CPU tests)
                quant = partial(_w8a8, quantize_rows=fp8.quantize_rows_torch)
        self.fp8 = fp8_linears
        self.layers = []
        for layer in body.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                _Layer(
                    input_norm=layer.input_layernorm.weight.detach(),
                    qkv=_fuse([attn.q_proj, attn.k_proj, attn.v_proj], adapters, tables, quant),
                    o=_fuse([attn.o_proj], adapters, tables, quant),
                    post_norm=layer.post_attention_layernorm.weight.detach(),
                    gate_up=_fuse([mlp.gate_proj, mlp.up_proj], adapters, tables, quant),
                    down=_fuse([mlp.down_proj], adapters, tables, quant),
                )
            )
        if self.fp8_planner is not None and self.layers:  # every layer has the same shapes
            first = self.layers[0]
            parts = (first.qkv, first.o, first.gate_up, first.down)
            self.fp8_planner.prepare([p.fp8 for p in parts if p.fp8 is not None])
        positions = torch.arange(context, device=self.device)[None]
        probe = torch.zeros((1, 1, self.head_dim), dtype=torch.float32, device=self.device)
        cos, sin = body.rotary_emb(probe, positions)
        self.cos, self.sin = cos[0].float(), sin[0].float()  # [context, head_dim]
        # The Triton rope kernel reads one half of the table: Llama's layout, both halves equal.
        self.fused = (
            self.device.type == "cuda"
            and triton_available()
            and bool(
                torch.equal(self.cos[:, : self.head_dim // 2], self.cos[:, self.head_dim // 2 :])
            )
        )

    @torch.inference_mode()
    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        inputs: StepInputs,
        keys: list[torch.Tensor] | None,
        values: list[torch.Tensor] | None,
        logit_rows: torch.Tensor | None,
    ) -> torch.Tensor:
        """Token ids ``[T]`` at ``positions`` -> logits ``[rows, vocab]`` for ``logit_rows``.

        One loop for every device; only the glue between the matmuls differs: fused Triton
        kernels on CUDA (``kernels.py``), plain torch ops elsewhere (``_TorchGlue``).
        """
        if self.fused:
            from services.text import kernels as glue
        else:
            glue = _TorchGlue  # type: ignore[assignment]
        h = F.embedding(ids, self.embed)
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        q_size, kv_size = heads * dim, kv_heads * dim
        x = glue.add_rms_norm(h, None, self.layers[0].input_norm, self.eps)
        for i, layer in enumerate(self.layers):
            qkv = layer.qkv(x, inputs)
            k_cache = keys[i] if keys is not None else None
            v_cache = values[i] if values is not None else None
            glue.rope_store(
                qkv, self.cos, self.sin, positions, inputs.slots, k_cache, v_cache,
                heads, kv_heads, dim,
            )  # fmt: skip
            q = qkv[:, :q_size].view(-1, heads, dim)
            k = qkv[:, q_size : q_size + kv_size].view(-1, kv_heads, dim)
            v = qkv[:, q_size + kv_size :].view(-1, kv_heads, dim)
            attn = self._attention(q, k, v, inputs, k_cache, v_cache)
            y = layer.o(attn.reshape(-1, q_size), inputs)
            x = glue.add_rms_norm(h, y, layer.post_norm, self.eps)
            y = layer.down(glue.silu_mul(layer.gate_up(x, inputs)), inputs)
            last = i + 1 == len(self.layers)
            norm = self.norm if last else self.layers[i + 1].input_norm
            x = glue.add_rms_norm(h, y, norm, self.eps)
        if logit_rows is not None:
            x = x[logit_rows]
        return F.linear(x, self.lm_head)

    def _attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        inputs: StepInputs,
        k_cache: torch.Tensor | None,
        v_cache: torch.Tensor | None,
    ) -> torch.Tensor:
        """Attention after the step's k and v are in the cache (when there is one)."""
        if inputs.slots is None or k_cache is None or v_cache is None:
            return prefill_attention(q, k, v, 0, None, None, None)
        n = inputs.num_decode
        if not inputs.segments:  # a pure decode step (the CUDA-graph case)
            return self._decode(q, k_cache, v_cache, inputs)
        out = torch.empty_like(q)
        if n:
            out[:n] = self._decode(q[:n], k_cache, v_cache, inputs)
        for seg in inputs.segments:
            part = slice(seg.offset, seg.offset + seg.length)
            out[part] = prefill_attention(
                q[part], k[part], v[part], seg.start, k_cache, v_cache, seg.slots
            )
        return out

    def _decode(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, inputs: StepInputs
    ) -> torch.Tensor:
        assert inputs.block_tables is not None and inputs.lengths is not None
        if inputs.splits:
            return decode_attention_triton(
                q, k_cache, v_cache, inputs.block_tables, inputs.lengths, inputs.splits
            )
        return decode_attention_torch(q, k_cache, v_cache, inputs.block_tables, inputs.lengths)
