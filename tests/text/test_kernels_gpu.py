"""The Triton kernels against their torch references, on a CUDA card (skipped elsewhere).

CI has no GPU; the benchmarks' device call runs this file there
(``python -m pytest tests/text/test_kernels_gpu.py``, see docs/benchmarks.md).
"""

from __future__ import annotations

import pytest
import torch

from services.text import fp8


def _fp8_card() -> bool:
    return torch.cuda.is_available() and fp8.unsupported_reason(torch.device("cuda")) is None


pytestmark = pytest.mark.skipif(not _fp8_card(), reason="needs a CUDA card with FP8 tensor cores")


def _weight(n: int, k: int) -> fp8.Fp8Weight:
    return fp8.Fp8Weight.quantize(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02)


@pytest.mark.parametrize("rows", [1, 3, 16, 40, 128])
@pytest.mark.parametrize("tile", [(32, 256, 1), (32, 256, 2), (16, 512, 4), (64, 128, 2)])
def test_fp8_weight_matmul_is_the_dequantized_product(rows: int, tile: tuple[int, int, int]):
    from services.text import kernels

    torch.manual_seed(rows)
    w = _weight(1000, 1100)  # neither a multiple of the tiles: the masks are exercised
    x = torch.randn(rows, 1100, device="cuda", dtype=torch.bfloat16)
    got = kernels.fp8_weight_matmul(x, w.q, w.scale, *tile)
    want = x.float() @ fp8.dequantize(w.q, w.scale).t()
    assert got.dtype == torch.bfloat16 and got.shape == (rows, 1000)
    # bf16 output rounding (2^-8) and float32 accumulation in another order: nothing more
    assert float((got.float() - want).norm() / want.norm()) < 4e-3


def test_quantize_rows_kernel_matches_torch():
    from services.text import kernels

    x = torch.randn(300, 4096, device="cuda", dtype=torch.bfloat16) * 3
    x[7] = 0  # a padded row: scale floor, zeros out
    q, s = kernels.quantize_rows(x)
    q2, s2 = fp8.quantize_rows_torch(x)
    assert torch.equal(s, s2)
    assert float((q.float() != q2.float()).float().mean()) < 1e-5
    assert not q[7].float().any()


def test_every_planned_bucket_gives_the_product_of_its_kernel():
    from services.text import kernels

    w = _weight(4096, 4096)
    planner = kernels.Fp8Planner(kernels.quantize_rows)
    planner.prepare([w])
    buckets = [1, 2, 4, 8, 16, 32, 64, 128]
    assert sorted(key[0] for key in planner.plans) == buckets
    dense = fp8.dequantize(w.q, w.scale)
    for rows in [*buckets, 5, 100]:  # the buckets' own sizes and rows padded up into one
        x = torch.randn(rows, 4096, device="cuda", dtype=torch.bfloat16)
        got = planner.matmul(x, w).float()
        # W8A16 multiplies bf16 rows by the dequantized weight; W8A8 quantizes the rows too
        want = x.float() @ dense.t() if planner.tile(rows, w) is not None else w.reference(x)
        assert got.shape == (rows, 4096)
        assert float((got - want).norm() / want.norm()) < 1e-2, rows
    assert planner.tile(129, w) is None  # past the weight-bound rows: always cuBLASLt


def test_rope_store_writes_an_e4m3_cache_as_the_torch_path_does():
    """The fused kernel's KV write into an fp8 cache: the same bytes as ``store_kv``, large
    values saturated at 448 instead of becoming NaN."""
    from services.text import kernels
    from services.text.attention import KV_FP8, store_kv

    heads, kv_heads, dim, tokens = 4, 4, 128, 37
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, device="cuda", dtype=torch.bfloat16)
    qkv[3, heads * dim] = 1e4  # a key far past E4M3's range
    positions = torch.arange(tokens, device="cuda")
    angles = positions[:, None].float() * torch.rand(dim // 2, device="cuda")
    cos, sin = angles.cos().repeat(1, 2), angles.sin().repeat(1, 2)
    slots = torch.randperm(64, device="cuda")[:tokens]
    caches = [torch.zeros(4, 16, kv_heads, dim, device="cuda", dtype=KV_FP8) for _ in range(4)]
    rotated = qkv.clone()
    kernels.rope_store(rotated, cos, sin, positions, slots, *caches[:2], heads, kv_heads, dim)
    k = rotated[:, heads * dim : (heads + kv_heads) * dim].view(-1, kv_heads, dim)
    v = rotated[:, (heads + kv_heads) * dim :].view(-1, kv_heads, dim)
    store_kv(caches[2], slots, k)
    store_kv(caches[3], slots, v)
    assert torch.equal(caches[0].view(torch.uint8), caches[2].view(torch.uint8))
    assert torch.equal(caches[1].view(torch.uint8), caches[3].view(torch.uint8))
    assert not caches[0].float().isnan().any() and float(caches[0].float().abs().max()) == 448.0


@pytest.mark.parametrize("group", [1, 4])
def test_the_decode_kernel_reads_an_e4m3_cache(group: int):
    """Split-K decode attention over fp8 pages against the torch gather of the same pages."""
    from services.text.attention import (
        KV_FP8,
        decode_attention_torch,
        decode_attention_triton,
    )

    torch.manual_seed(group)
    rows, kv_heads, dim, page, pages = 5, 8, 128, 16, 40
    k = (torch.randn(pages, page, kv_heads, dim, device="cuda") * 2).to(KV_FP8)
    v = (torch.randn(pages, page, kv_heads, dim, device="cuda") * 2).to(KV_FP8)
    q = torch.randn(rows, kv_heads * group, dim, device="cuda", dtype=torch.bfloat16)
    tables = torch.stack([torch.randperm(pages, device="cuda")[:8] for _ in range(rows)]).int()
    lengths = torch.tensor([1, 17, 64, 100, 128], device="cuda", dtype=torch.int32)
    want = decode_attention_torch(q.float(), k, v, tables, lengths)
    for splits in (1, 4):
        got = decode_attention_triton(q, k, v, tables, lengths, splits).float()
        assert float((got - want).norm() / want.norm()) < 1e-2, splits
