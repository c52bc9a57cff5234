"""Attention over the paged KV cache: decode rows and prefill chunks.

* Decode (one new token per row): on CUDA a Triton split-K kernel reads each row's pages
  through its block table, only up to the row's length, with the length read on the device so
  that the launch can be captured once in a CUDA graph and replayed for any lengths. Elsewhere
  (the CPU, or CUDA without Triton) a gather + SDPA does the same arithmetic.
* Prefill (a chunk of one prompt): SDPA over the chunk's own keys when it is the first chunk,
  else over the cached prefix plus the chunk, gathered from the pages, with a causal mask that
  starts at the chunk's offset.

The cache holds the model's dtype, or E4M3 (``ARTICLEFORGE_TEXT_KV_CACHE_DTYPE=fp8``: half the
bytes a token, so twice the tokens in the same memory and half the reads of a decode step).
FP8 pages are stored saturated at E4M3's largest value with a scale of 1, as vLLM does for a
checkpoint without calibrated KV scales, and widened back to the compute dtype where they are
read. A first prompt chunk attends over its own keys rounded the same way, so that a prompt
sees the same keys whether its prefix came from the cache or was computed just now.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any

import torch
import torch.nn.functional as F

KV_FP8 = torch.float8_e4m3fn
KV_FP8_MAX = float(torch.finfo(KV_FP8).max)  # 448


def as_cache_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` as the cache stores it: itself, or saturated and rounded to E4M3."""
    if dtype == x.dtype:
        return x
    return x.clamp(-KV_FP8_MAX, KV_FP8_MAX).to(dtype)


def kv_fp8_refusal(capability: tuple[int, int] | None, name: str = "this GPU") -> str | None:
    """None where an E4M3 KV cache can run (the CPU's torch path, or CUDA 8.9+, whose Triton
    kernels read E4M3); else the sentence that refuses ``ARTICLEFORGE_TEXT_KV_CACHE_DTYPE=fp8``.
    ``capability`` is None for the CPU."""
    if capability is None or capability >= (8, 9):
        return None
    major, minor = capability
    return (
        "ARTICLEFORGE_TEXT_KV_CACHE_DTYPE=fp8 needs compute capability 8.9 or newer (Ada or "
        f"Hopper) for its attention kernels, and {name} has {major}.{minor}; use "
        "ARTICLEFORGE_TEXT_KV_CACHE_DTYPE=auto"
    )


def store_kv(cache: torch.Tensor, slots: torch.Tensor, x: torch.Tensor) -> None:
    """Writes ``x`` ``[T, Hkv, D]`` to the flat cache indices ``slots`` (torch path)."""
    flat = cache.view(-1, *x.shape[1:])
    stored = as_cache_dtype(x, cache.dtype)
    if (
        cache.dtype == KV_FP8
    ):  # index_copy_ through the bytes: float8 copies need no kernel of their own
        flat, stored = flat.view(torch.uint8), stored.view(torch.uint8)
    flat.index_copy_(0, slots, stored)


def gather_kv(cache: torch.Tensor, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``cache[index]`` in the compute ``dtype``."""
    if cache.dtype != KV_FP8:
        return cache[index]
    return cache.view(torch.uint8)[index].view(KV_FP8).to(dtype)


def _expand_kv(x: torch.Tensor, group: int) -> torch.Tensor:
    """``[..., kv_heads, D]`` -> ``[..., kv_heads * group, D]`` (grouped-query attention)."""
    return x if group == 1 else x.repeat_interleave(group, dim=-2)


def prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    start: int,
    k_cache: torch.Tensor | None,
    v_cache: torch.Tensor | None,
    slots: torch.Tensor | None,
) -> torch.Tensor:
    """One prompt chunk. ``q`` is ``[L, Hq, D]``, ``k``/``v`` the chunk's ``[L, Hkv, D]``.

    ``start`` tokens of this sequence are already cached; ``slots`` holds the flat cache index
    of each of its first ``start + L`` positions (needed only when ``start > 0``).
    """
    length, heads, dim = q.shape
    group = heads // k.shape[1]
    if start == 0:
        keys, values, mask, causal = k, v, None, True
        if k_cache is not None and k_cache.dtype != k.dtype:  # the keys a later hit will read
            keys = as_cache_dtype(k, k_cache.dtype).to(k.dtype)
            values = as_cache_dtype(v, k_cache.dtype).to(v.dtype)
    else:
        assert k_cache is not None and v_cache is not None and slots is not None
        keys = gather_kv(k_cache.view(-1, *k_cache.shape[2:]), slots, q.dtype)
        values = gather_kv(v_cache.view(-1, *v_cache.shape[2:]), slots, q.dtype)
        positions = torch.arange(start + length, device=q.device)
        mask = positions[None, :] <= (start + torch.arange(length, device=q.device))[:, None]
        causal = False
    with _no_cudnn(q):
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None],
            _expand_kv(keys, group).transpose(0, 1)[None],
            _expand_kv(values, group).transpose(0, 1)[None],
            attn_mask=mask,
            is_causal=causal,
            scale=1.0 / math.sqrt(dim),
        )
    return out[0].transpose(0, 1)


def _no_cudnn(q: torch.Tensor) -> Any:
    """On CUDA, SDPA without the cuDNN backend: cuDNN builds a plan for every new sequence
    length (hundreds of ms each, measured on an H200), and prompt chunks come in every
    length. PyTorch's own flash and memory-efficient kernels need no plan."""
    if q.device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    )


def decode_attention_torch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    lengths: torch.Tensor,
) -> torch.Tensor:
    """``q`` ``[B, Hq, D]``; every row's pages gathered whole, positions past its length masked."""
    rows, heads, dim = q.shape
    page = k_cache.shape[1]
    group = heads // k_cache.shape[2]
    tables = block_tables.long()
    keys = gather_kv(k_cache, tables, q.dtype).flatten(1, 2)  # [B, pages * page, Hkv, D]
    values = gather_kv(v_cache, tables, q.dtype).flatten(1, 2)
    positions = torch.arange(block_tables.shape[1] * page, device=q.device)
    mask = positions[None, :] < lengths[:, None]  # [B, T]
    out = F.scaled_dot_product_attention(
        q[:, :, None, :],  # [B, Hq, 1, D]
        _expand_kv(keys, group).transpose(1, 2),
        _expand_kv(values, group).transpose(1, 2),
        attn_mask=mask[:, None, None, :],
        scale=1.0 / math.sqrt(dim),
    )
    return out[:, :, 0, :]


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _kernels() -> tuple[Any, Any]:
    import triton
    import triton.language as tl

    @triton.jit  # type: ignore[untyped-decorator,unused-ignore]
    def paged_decode(  # type: ignore[no-untyped-def]
        Q,
        K,
        V,
        TABLES,
        LENGTHS,
        OUT,
        MAX,
        SUM,
        scale,
        stride_qb,
        stride_qh,
        stride_kp,
        stride_ks,
        stride_kh,
        stride_tb,
        stride_ob,
        stride_oh,
        stride_os,
        stride_mb,
        stride_mh,
        GROUP: tl.constexpr,
        PAGE: tl.constexpr,
        DIM: tl.constexpr,
        BLOCK: tl.constexpr,
        SPLITS: tl.constexpr,
    ):
        # One program: one row, one query head, one split of the row's tokens. It walks its
        # split BLOCK tokens at a time (several pages), each token found through the table.
        row = tl.program_id(0)
        head = tl.program_id(1)
        split = tl.program_id(2)
        kv_head = head // GROUP
        length = tl.load(LENGTHS + row)
        blocks = tl.cdiv(length, BLOCK)
        per_split = tl.cdiv(blocks, SPLITS)
        first = split * per_split
        last = tl.minimum(first + per_split, blocks)
        dims = tl.arange(0, DIM)
        offs = tl.arange(0, BLOCK)
        q = tl.load(Q + row * stride_qb + head * stride_qh + dims).to(tl.float32) * scale
        best = -float("inf")
        total = 0.0
        acc = tl.zeros([DIM], dtype=tl.float32)
        for b in range(first, last):
            token = b * BLOCK + offs
            valid = token < length
            page = tl.load(TABLES + row * stride_tb + token // PAGE, mask=valid, other=0)
            where = page.to(tl.int64) * stride_kp + (token % PAGE) * stride_ks + kv_head * stride_kh
            where = where[:, None] + dims[None, :]
            k = tl.load(K + where, mask=valid[:, None], other=0.0).to(tl.float32)
            scores = tl.sum(k * q[None, :], axis=1)
            scores = tl.where(valid, scores, -float("inf"))
            new_best = tl.maximum(best, tl.max(scores, axis=0))
            rescale = tl.exp(best - new_best)
            weights = tl.exp(scores - new_best)
            v = tl.load(V + where, mask=valid[:, None], other=0.0).to(tl.float32)
            acc = acc * rescale + tl.sum(weights[:, None] * v, axis=0)
            total = total * rescale + tl.sum(weights, axis=0)
            best = new_best
        out = OUT + row * stride_ob + head * stride_oh + split * stride_os + dims
        tl.store(out, acc)
        tl.store(MAX + row * stride_mb + head * stride_mh + split, best)
        tl.store(SUM + row * stride_mb + head * stride_mh + split, total)

    @triton.jit  # type: ignore[untyped-decorator,unused-ignore]
    def combine(  # type: ignore[no-untyped-def]
        PART,
        MAX,
        SUM,
        OUT,
        stride_pb,
        stride_ph,
        stride_ps,
        stride_mb,
        stride_mh,
        stride_ob,
        stride_oh,
        DIM: tl.constexpr,
        SPLITS: tl.constexpr,
    ):
        row = tl.program_id(0)
        head = tl.program_id(1)
        splits = tl.arange(0, SPLITS)
        dims = tl.arange(0, DIM)
        best = tl.load(MAX + row * stride_mb + head * stride_mh + splits)
        total = tl.load(SUM + row * stride_mb + head * stride_mh + splits)
        weight = tl.exp(best - tl.max(best, axis=0))  # an empty split (best = -inf) weighs 0
        where = row * stride_pb + head * stride_ph + splits[:, None] * stride_ps + dims[None, :]
        parts = tl.load(PART + where)
        out = tl.sum(parts * weight[:, None], axis=0) / tl.sum(total * weight, axis=0)
        tl.store(OUT + row * stride_ob + head * stride_oh + dims, out.to(OUT.dtype.element_ty))

    return paged_decode, combine


def splits_for(rows: int, heads: int, sms: int) -> int:
    """Enough splits of each row's tokens to give every multiprocessor a few programs."""
    splits = 1
    while rows * heads * splits < 4 * sms and splits < 32:
        splits *= 2
    return splits


DECODE_BLOCK = 64  # tokens per inner step of the decode kernel


def decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    lengths: torch.Tensor,
    splits: int,
) -> torch.Tensor:
    rows, heads, dim = q.shape
    page, kv_heads = k_cache.shape[1], k_cache.shape[2]
    partial = torch.empty((rows, heads, splits, dim), dtype=torch.float32, device=q.device)
    best = torch.empty((rows, heads, splits), dtype=torch.float32, device=q.device)
    total = torch.empty_like(best)
    out = torch.empty_like(q)
    decode, combine = _kernels()
    decode[(rows, heads, splits)](
        q,
        k_cache,
        v_cache,
        block_tables,
        lengths,
        partial,
        best,
        total,
        1.0 / math.sqrt(dim),
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        partial.stride(0),
        partial.stride(1),
        partial.stride(2),
        best.stride(0),
        best.stride(1),
        GROUP=heads // kv_heads,
        PAGE=page,
        DIM=dim,
        BLOCK=DECODE_BLOCK,
        SPLITS=splits,
        num_warps=4,
    )
    combine[(rows, heads)](
        partial,
        best,
        total,
        out,
        partial.stride(0),
        partial.stride(1),
        partial.stride(2),
        best.stride(0),
        best.stride(1),
        out.stride(0),
        out.stride(1),
        DIM=dim,
        SPLITS=splits,
        num_warps=4,
    )
    return out
