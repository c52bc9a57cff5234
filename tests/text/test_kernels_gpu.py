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
