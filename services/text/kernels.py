"""Fused Triton kernels for the CUDA decode path (imported only where Triton is present).

A decode step of a 7B model reads 13.5 GB of weights in ~3.5 ms; done with plain torch ops,
the glue between the matmuls (RMSNorm, rotary embedding, KV write, SiLU) adds ~40 small
launches per layer, about 2.5 ms more. These kernels do that glue in four launches per layer:
* ``add_rms_norm``: ``h += y`` then ``x = RMSNorm(h)``, one row per program;
* ``rope_store``: rotary embedding of q and k in place, and k, v written to their cache slots;
* ``silu_mul``: ``silu(gate) * up`` from the fused gate/up output;
* ``quantize_rows`` (fp8 only): each activation row to E4M3 with its own scale, one launch.

And, for fp8, ``fp8_weight_matmul``: an E4M3 weight times bf16 rows, the weight widened inside
the kernel (weight-only FP8), for the few-row products of decode steps, where cuBLASLt's FP8
GEMM (``torch._scaled_mm``) is tuned for large tiles. ``Fp8Planner`` times both on the card at
start-up, per row bucket and weight shape, and keeps the faster.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import triton
import triton.language as tl

from services.text.fp8 import FP8, FP8_MAX, Fp8Weight

logger = logging.getLogger(__name__)


@triton.jit  # type: ignore[untyped-decorator,unused-ignore]
def _add_rms_norm(  # type: ignore[no-untyped-def]
    H, Y, W, X, stride_h, stride_y, stride_x, n, eps, HAS_Y: tl.constexpr, BLOCK: tl.constexpr
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    h = tl.load(H + row * stride_h + cols, mask=mask, other=0.0)
    if HAS_Y:
        h = h + tl.load(Y + row * stride_y + cols, mask=mask, other=0.0)
        tl.store(H + row * stride_h + cols, h, mask=mask)
    f = h.to(tl.float32)
    scale = tl.rsqrt(tl.sum(f * f, axis=0) / n + eps)
    w = tl.load(W + cols, mask=mask, other=0.0)
    out = w * (f * scale).to(h.dtype)
    tl.store(X + row * stride_x + cols, out, mask=mask)


def add_rms_norm(
    h: torch.Tensor, y: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """Adds ``y`` into ``h`` in place (if given) and returns RMSNorm(h) * weight."""
    rows, n = h.shape
    out = torch.empty_like(h)
    _add_rms_norm[(rows,)](
        h,
        y if y is not None else h,
        weight,
        out,
        h.stride(0),
        y.stride(0) if y is not None else 0,
        out.stride(0),
        n,
        eps,
        HAS_Y=y is not None,
        BLOCK=triton.next_power_of_2(n),
        num_warps=8,
    )
    return out


@triton.jit  # type: ignore[untyped-decorator,unused-ignore]
def _rope_store(  # type: ignore[no-untyped-def]
    QKV,
    COS,
    SIN,
    POS,
    SLOTS,
    KC,
    VC,
    stride_t,
    stride_cos,
    stride_slot,
    HEADS: tl.constexpr,
    KV_HEADS: tl.constexpr,
    DIM: tl.constexpr,
    STORE: tl.constexpr,
    SATURATE: tl.constexpr,
    KV_MAX: tl.constexpr,
):
    token = tl.program_id(0)
    head = tl.program_id(1)  # 0..HEADS-1: a query head; then the key heads
    half = tl.arange(0, DIM // 2)
    pos = tl.load(POS + token)
    cos = tl.load(COS + pos * stride_cos + half)
    sin = tl.load(SIN + pos * stride_cos + half)
    base = QKV + token * stride_t + head * DIM
    a = tl.load(base + half).to(tl.float32)
    b = tl.load(base + DIM // 2 + half).to(tl.float32)
    ra = (a * cos - b * sin).to(QKV.dtype.element_ty)
    rb = (b * cos + a * sin).to(QKV.dtype.element_ty)
    tl.store(base + half, ra)
    tl.store(base + DIM // 2 + half, rb)
    if STORE:
        if head >= HEADS:
            kv = head - HEADS
            slot = tl.load(SLOTS + token)
            dst = slot * stride_slot + kv * DIM
            vsrc = QKV + token * stride_t + (HEADS + KV_HEADS + kv) * DIM
            # All in float32 (exact for bf16 values): Triton wants a name's type to be the same
            # on both sides of the `if`.
            ka = ra.to(tl.float32)
            kb = rb.to(tl.float32)
            va = tl.load(vsrc + half).to(tl.float32)
            vb = tl.load(vsrc + DIM // 2 + half).to(tl.float32)
            if SATURATE:  # an E4M3 cache: clamp first, so that nothing large becomes NaN
                ka = tl.minimum(tl.maximum(ka, -KV_MAX), KV_MAX)
                kb = tl.minimum(tl.maximum(kb, -KV_MAX), KV_MAX)
                va = tl.minimum(tl.maximum(va, -KV_MAX), KV_MAX)
                vb = tl.minimum(tl.maximum(vb, -KV_MAX), KV_MAX)
            tl.store(KC + dst + half, ka.to(KC.dtype.element_ty))
            tl.store(KC + dst + DIM // 2 + half, kb.to(KC.dtype.element_ty))
            tl.store(VC + dst + half, va.to(VC.dtype.element_ty))
            tl.store(VC + dst + DIM // 2 + half, vb.to(VC.dtype.element_ty))


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
    """Rotates q and k inside the fused ``[T, (H + 2 Hkv) * D]`` projection in place; with
    ``slots``, also writes k and v to the paged cache. ``cos``/``sin`` are ``[positions, D]``
    float32 tables whose two halves are equal (the Llama layout)."""
    store = slots is not None and k_cache is not None and v_cache is not None
    _rope_store[(qkv.shape[0], heads + kv_heads)](
        qkv,
        cos,
        sin,
        positions,
        slots if store else positions,
        k_cache if store else qkv,
        v_cache if store else qkv,
        qkv.stride(0),
        cos.stride(0),
        k_cache.stride(1) if store and k_cache is not None else 0,
        HEADS=heads,
        KV_HEADS=kv_heads,
        DIM=dim,
        STORE=store,
        SATURATE=store and k_cache is not None and k_cache.dtype == FP8,
        KV_MAX=FP8_MAX,
        num_warps=1,
    )


@triton.jit  # type: ignore[untyped-decorator,unused-ignore]
def _silu_mul(GU, OUT, stride_gu, stride_out, n, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n
    gate = tl.load(GU + row * stride_gu + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(GU + row * stride_gu + n + cols, mask=mask, other=0.0)
    act = (gate / (1.0 + tl.exp(-gate))).to(up.dtype)
    tl.store(OUT + row * stride_out + cols, act * up, mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    rows, width = gate_up.shape
    n = width // 2
    out = torch.empty((rows, n), dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul[(rows, triton.cdiv(n, block))](
        gate_up, out, gate_up.stride(0), out.stride(0), n, BLOCK=block, num_warps=4
    )
    return out


@triton.jit  # type: ignore[untyped-decorator,unused-ignore]
def _quantize_rows(X, Q, S, stride_x, stride_q, n, fp8_max, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(x), axis=0) / fp8_max, 1e-12)
    q = tl.clamp(x / scale, -fp8_max, fp8_max)
    tl.store(Q + row * stride_q + cols, q.to(Q.dtype.element_ty), mask=mask)
    tl.store(S + row, scale)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[T, K]`` -> (E4M3 ``[T, K]``, float32 ``[T, 1]``) in one launch: each row's largest
    magnitude maps to 448 (``fp8.quantize_rows_torch`` in one kernel instead of five)."""
    rows, n = x.shape
    q = torch.empty((rows, n), dtype=FP8, device=x.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
    _quantize_rows[(rows,)](
        x, q, scale, x.stride(0), q.stride(0), n, FP8_MAX,
        BLOCK=triton.next_power_of_2(n), num_warps=8,
    )  # fmt: skip
    return q, scale


@triton.jit  # type: ignore[untyped-decorator,unused-ignore]
def _fp8_weight_matmul(  # type: ignore[no-untyped-def]
    X,
    W,
    S,
    Y,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_ym,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    DOT: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    span = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    k_lo = pid_k * span
    k_hi = tl.minimum(k_lo + span, K)
    if DOT:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        kk = k0 + rk
        kmask = kk < k_hi
        w = tl.load(
            W + rn[:, None] * stride_wn + kk[None, :],
            mask=(rn[:, None] < N) & kmask[None, :],
            other=0.0,
        )
        if DOT:
            x = tl.load(
                X + rm[:, None] * stride_xm + kk[None, :],
                mask=(rm[:, None] < M) & kmask[None, :],
                other=0.0,
            )
            acc += tl.dot(x, tl.trans(w.to(x.dtype)))
        else:
            x = tl.load(X + pid_m * stride_xm + kk, mask=kmask, other=0.0)
            acc += tl.sum(w.to(tl.float32) * x.to(tl.float32)[None, :], axis=1)
    s = tl.load(S + rn, mask=rn < N, other=0.0)
    if DOT:
        out = acc * s[None, :]
        ptrs = Y + rm[:, None] * stride_ym + rn[None, :]
        mask = (rm[:, None] < M) & (rn[None, :] < N)
    else:
        out = acc * s
        ptrs = Y + pid_m * stride_ym + rn
        mask = rn < N
    if SPLIT_K == 1:
        tl.store(ptrs, out.to(Y.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(ptrs, out, mask=mask)


def fp8_weight_matmul(
    x: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor,
    block_n: int = 32,
    block_k: int = 256,
    split_k: int = 1,
    num_warps: int = 4,
    num_stages: int = 3,
    dot: bool | None = None,
) -> torch.Tensor:
    """``x`` ``[M, K]`` (bf16) times an E4M3 weight ``q`` ``[N, K]`` with per-channel
    ``scale`` (``[1, N]`` float32): ``x @ (q * scale).T`` in x's dtype, the weight widened to
    bf16 inside the kernel (weight-only FP8: activations are not quantized). For small ``M``,
    where a step is bound by reading the weight: one row reduces on the CUDA cores (``dot``
    False); more go through ``tl.dot`` in tiles of 16-64 rows; ``split_k`` > 1 adds float32
    partial sums atomically."""
    m, k = x.shape
    n = q.shape[0]
    if dot is None:
        dot = m > 1
    block_m = max(16, min(64, triton.next_power_of_2(m))) if dot else 1
    grid = (triton.cdiv(n, block_n), split_k, triton.cdiv(m, block_m))
    if split_k == 1:
        y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    else:
        y = torch.zeros((m, n), dtype=torch.float32, device=x.device)
    _fp8_weight_matmul[grid](
        x, q, scale, y, m, n, k, x.stride(0), q.stride(0), y.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split_k, DOT=dot,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return y if split_k == 1 else y.to(x.dtype)


# Tiles of ``fp8_weight_matmul`` that the planner tries: (BLOCK_N, BLOCK_K, SPLIT_K).
W8A16_TILES = ((32, 256, 1), (32, 256, 2), (64, 128, 2), (16, 512, 4), (64, 256, 1))
# Above this many rows a step is no longer bound by reading the weight; cuBLASLt's FP8 GEMM
# (both operands in E4M3, twice bf16's tensor-core rate) wins and is not timed against.
W8A16_MAX_ROWS = 128
# Relative error a tile may show against the float32 product of the dequantized weight: bf16
# output rounding (2^-9) and float32 sums in another order come to a few 1e-3.
W8A16_MAX_ERROR = 2e-2


def row_bucket(rows: int) -> int:
    """The planner's row bucket of a product: the next power of two."""
    return int(triton.next_power_of_2(rows))


def graph_microseconds(fn: Callable[[], Any], inner: int = 20, iters: int = 10) -> float:
    """Microseconds per call of ``fn`` on the current CUDA device, ``inner`` calls captured in
    one CUDA graph and replayed ``iters`` times, so that launch overhead does not count (decode
    steps replay graphs too)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # compiles, and settles the allocator
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(inner):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return 1000.0 * start.elapsed_time(end) / (iters * inner)


class Fp8Planner:
    """Which kernel multiplies an FP8 weight by ``rows`` activation rows: ``None`` for
    ``torch._scaled_mm`` on rows quantized by ``quantize_rows`` (W8A8), or the
    ``fp8_weight_matmul`` tile that was faster on this card (W8A16).

    Plans are per (row bucket: the next power of two, out features, in features), timed once
    by ``prepare`` at start-up, before any graph is captured; a tile is timed only after its
    product matched the dequantized weight's on this card. A bucket met later without a plan
    (never the case for the engine, which prepares every bucket up to ``W8A16_MAX_ROWS``) is
    timed then, or, inside a graph capture, where nothing can be timed, takes W8A8.
    """

    def __init__(self, quantize_rows: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]):
        self.quantize_rows = quantize_rows
        self.plans: dict[tuple[int, int, int], tuple[int, int, int] | None] = {}
        self.timings: dict[tuple[int, int, int], dict[str, float]] = {}

    def tile(self, rows: int, weight: Fp8Weight) -> tuple[int, int, int] | None:
        if rows > W8A16_MAX_ROWS:
            return None
        n, k = weight.q.shape
        key = (row_bucket(rows), int(n), int(k))
        if key in self.plans:
            return self.plans[key]
        if torch.cuda.is_current_stream_capturing():
            return None
        return self._time(key, weight, _dense(weight))

    def prepare(self, weights: list[Fp8Weight]) -> None:
        """Plans every row bucket up to ``W8A16_MAX_ROWS`` for each distinct weight shape."""
        shapes: dict[tuple[int, int], Fp8Weight] = {}
        for w in weights:
            shapes.setdefault((int(w.q.shape[0]), int(w.q.shape[1])), w)
        for (n, k), w in shapes.items():
            dense = _dense(w)  # the reference every bucket's tiles are checked against
            bucket = 1
            while bucket <= W8A16_MAX_ROWS:
                if (bucket, n, k) not in self.plans:
                    self._time((bucket, n, k), w, dense)
                bucket *= 2
            del dense
        logger.info("text engine: fp8 matmul plan (rows, out, in -> tile or w8a8) %s", self.plans)

    def matmul(self, x: torch.Tensor, weight: Fp8Weight) -> torch.Tensor:
        tile = self.tile(x.shape[0], weight)
        if tile is None:
            return weight.matmul(x, self.quantize_rows)
        return fp8_weight_matmul(x, weight.q, weight.scale, *tile)

    def _time(
        self, key: tuple[int, int, int], weight: Fp8Weight, dense: torch.Tensor
    ) -> tuple[int, int, int] | None:
        rows, _, k = key
        x = torch.randn((rows, k), dtype=torch.bfloat16, device=weight.q.device)
        times = {"w8a8": graph_microseconds(partial(weight.matmul, x, self.quantize_rows))}
        # Each tile must first give the product of the dequantized weight: a kernel that
        # compiles but computes wrongly on this card (or Triton build) is never chosen.
        want = x.float() @ dense.t()
        tiles: dict[str, tuple[int, int, int]] = {}
        for tile in W8A16_TILES:
            name = ",".join(map(str, tile))
            call = partial(fp8_weight_matmul, x, weight.q, weight.scale, *tile)
            try:
                error = float((call().float() - want).norm() / want.norm().clamp(min=1e-30))
                if not error < W8A16_MAX_ERROR:
                    logger.warning(
                        "text engine: fp8 tile %s off by %.2g on %s rows x %s; not used",
                        name, error, rows, tuple(weight.q.shape),
                    )  # fmt: skip
                    continue
                t = graph_microseconds(call)
            except Exception as exc:  # noqa: BLE001 (a tile this card cannot compile is skipped)
                logger.debug("text engine: fp8 tile %s skipped: %s", name, exc)
                continue
            tiles[name], times[name] = tile, t
        fastest = min(times, key=times.__getitem__)
        best = tiles.get(fastest)  # None: w8a8
        self.plans[key] = best
        self.timings[key] = {name: round(t, 2) for name, t in times.items()}
        return best


def _dense(weight: Fp8Weight) -> torch.Tensor:
    """The float32 values of an FP8 weight, ``[out, in]``."""
    return weight.q.float() * weight.scale.reshape(-1, 1)
