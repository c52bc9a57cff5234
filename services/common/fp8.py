"""FP8 (E4M3) matmuls shared by the text and image services.

One recipe serves both: a weight ``[out, in]`` in ``float8_e4m3fn`` with one float32 scale per
output channel, and each activation row quantized on the fly with its own scale (its largest
magnitude maps to 448, E4M3's largest finite value). The product runs through
``torch._scaled_mm`` with those row-wise scales: on Hopper (and Ada) that is cuBLASLt /
CUTLASS's FP8 tensor-core GEMM, which applies the scales in its epilogue and accumulates in
float32. On the CPU ``torch._scaled_mm`` is a reference implementation: tests use it for the
arithmetic; the services refuse fp8 there (``unsupported_reason``).

services/text/fp8.py adds what only the text service needs (fused projections, FP8
checkpoints); services/image/fp8.py wraps the product in modules that replace a UNet's linear
layers and 1x1 convolutions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
# A row of zeros (a padded graph row) gets this scale instead of 0, so nothing divides by 0.
MIN_SCALE = 1e-12

QuantizeRows = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def unsupported_reason(device: torch.device, setting: str, otherwise: str) -> str | None:
    """None where FP8 matmuls run on tensor cores; else the one sentence that refuses
    ``{setting}=fp8`` and says to use ``{setting}={otherwise}`` instead."""
    if device.type != "cuda":
        return (
            f"{setting}=fp8 needs an NVIDIA GPU with FP8 tensor cores "
            f"(Hopper or Ada, compute capability 8.9 or newer), and this service runs on "
            f"{device.type}; use {setting}={otherwise}"
        )
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        name = torch.cuda.get_device_name(device)
        return (
            f"{setting}=fp8 needs FP8 tensor cores (Hopper or Ada, compute "
            f"capability 8.9 or newer), and the {name} has compute capability {major}.{minor}; "
            f"use {setting}={otherwise}"
        )
    try:  # the smallest row-wise product, so that a torch built without it is refused here
        a = torch.zeros((16, 16), dtype=FP8, device=device)
        one = torch.ones((16, 1), dtype=torch.float32, device=device)
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one.t(), out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError) as exc:
        return (
            f"{setting}=fp8 is refused: this torch build cannot run a "
            f"row-wise scaled FP8 matmul on {torch.cuda.get_device_name(device)} ({exc}); "
            f"use {setting}={otherwise}"
        )
    return None


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[out, in]`` -> (E4M3 ``[out, in]``, float32 scale ``[out]``); ``q * scale ~ weight``."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / FP8_MAX).clamp(min=MIN_SCALE)
    q = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def quantize_rows_torch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[T, K]`` -> (E4M3 ``[T, K]``, float32 ``[T, 1]``): one dynamic scale per token.

    Plain torch ops: under torch.compile inductor fuses them into one reduction kernel."""
    f = x.float()
    scale = (f.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=MIN_SCALE)
    return (f / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 values of E4M3 ``q`` with per-row ``scale`` (``[rows]`` or ``[rows, 1]``)."""
    return q.float() * scale.reshape(-1, 1).float()


def scaled_matmul(
    x: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor,
    quantize_rows: QuantizeRows = quantize_rows_torch,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``x @ W.T``: ``x`` ``[T, in]`` times the transposed E4M3 weight ``q`` ``[out, in]``
    (scales ``[1, out]``), ``[T, out]`` in ``out_dtype`` (default: x's dtype)."""
    xq, xs = quantize_rows(x)
    return torch._scaled_mm(xq, q.t(), scale_a=xs, scale_b=scale, out_dtype=out_dtype or x.dtype)


@dataclass
class Fp8Weight:
    """A linear layer's weight in E4M3: ``q`` ``[out, in]`` row-major, ``scale`` ``[1, out]``."""

    q: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def quantize(cls, weight: torch.Tensor) -> Fp8Weight:
        q, scale = quantize_weight(weight)
        return cls(q, scale.reshape(1, -1).contiguous())

    @classmethod
    def cat(cls, parts: list[Fp8Weight]) -> Fp8Weight:
        """Several layers fused along the output dimension (q, k, v; gate, up)."""
        if len(parts) == 1:
            return parts[0]
        return cls(torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts], dim=1))

    @property
    def out_features(self) -> int:
        return int(self.q.shape[0])

    def matmul(self, x: torch.Tensor, quantize_rows: QuantizeRows) -> torch.Tensor:
        """``x`` ``[T, in]`` (bf16) -> ``x @ W.T`` ``[T, out]`` in x's dtype."""
        return scaled_matmul(x, self.q, self.scale, quantize_rows)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same product in float32 from dequantized operands (for checks)."""
        xq, xs = quantize_rows_torch(x)
        return dequantize(xq, xs) @ dequantize(self.q, self.scale).t()
