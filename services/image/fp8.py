"""FP8 (E4M3) matmuls for the UNet (``ARTICLEFORGE_IMAGE_QUANTIZATION=fp8``, Hopper and Ada).

The compiled SD-1.5 step at batch 16 spends 25 % of its GPU time in matmuls (docs/benchmarks.md,
"Where the time goes"). On an H100 FP8 tensor cores do twice the dense fp16 rate, so the
matmuls run in E4M3 with the text service's recipe (services/common/fp8.py): weights per output
channel, quantized once here at load time; each activation row (a token, or a pixel) quantized
on the fly with its own scale; the product through ``torch._scaled_mm`` with row-wise scales.

What converts (``convert_unet``), every layer whose two sides are multiples of 16 (what the FP8
GEMM needs):
* every ``nn.Linear``: attention's projections (the fused ``to_qkv`` and ``to_kv`` when QKV
  fusion is on, else ``to_q``, ``to_k`` and ``to_v``; ``to_out``), the feed-forward (GEGLU's
  projection and the output), the time embedding and each ResNet's ``time_emb_proj``;
* every 1x1 ``nn.Conv2d`` (SD-1.5's transformer blocks' ``proj_in`` and ``proj_out``, the
  ResNets' ``conv_shortcut``), as a matmul over pixels: on channels_last memory an NCHW map is
  already a ``[pixels, channels]`` matrix, so the reshapes are views and the output comes back
  channels_last. The service's inductor setting ``conv_1x1_as_mm`` runs them as fp16 matmuls
  anyway; these are the same matmuls in E4M3.

The unfused ``to_q``, ``to_k`` and ``to_v`` that QKV fusion leaves behind (no longer called)
stay as they are, and are not counted.

What does not: the 3x3 convolutions (29 % of the step), attention's own product (SDPA), the
norms, the VAE and the text encoder. PyTorch has no FP8 convolution: ``F.conv2d`` on
``float8_e4m3fn`` tensors raises ("getCudnnDataTypeFromScalarType() not supported for
Float8_e4m3fn" on CUDA, tdrussell/diffusion-pipe#151; "slow_conv2d_cpu not implemented for
'Float8_e4m3fn'" on the CPU; ``bench/image_fp8.py`` records what the card says), and torchao's
FP8 conv2d (pytorch/ao#3315) calls fbgemm-gpu-genai's ``f8f8bf16_conv`` kernel with per-tensor
scales, not torch or cuDNN. They stay fp16.

Why not torchao's ``Float8DynamicActivationFloat8WeightConfig`` (style point 13 prefers a
well-kept library): it does the same arithmetic (the same ``torch._scaled_mm`` with row-wise
scales, and for fp16 models the same bf16 output cast back, pytorch/ao#2431), but its wheels
are built for one torch release and the GPU machines run torch 2.11 with no registry in reach;
its 1x1 convolutions would still need code of our own (it quantizes ``nn.Linear`` only, or
conv2d through fbgemm-gpu-genai); and the project already has this path, tested on the CPU and
measured on an H100 in the text service. So both services share one small module instead of
adding a dependency pinned to the torch version.

The modules are plain torch ops, so torch.compile traces them whole (``fullgraph=True``):
inductor fuses each row quantization into one reduction kernel and the cast and bias add into
the GEMM's neighbours, and ``reduce-overhead`` records them into the CUDA graph like any other
kernel. Where the card's row-wise FP8 GEMM cannot write fp16 (CUTLASS's writes bf16 only), it
writes bf16 and the cast back to fp16 fuses with the bias add: one more rounding (2^-9),
far below E4M3's (2^-4).

On the CPU ``torch._scaled_mm`` is torch's reference implementation: ``convert_unet`` works
there, so the tests and ``bench/image_fp8.py`` measure the image difference on the CPU, but the
service refuses fp8 there (``check_quantization`` in services/image/loading.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from services.common.fp8 import FP8, quantize_weight, scaled_matmul

logger = logging.getLogger(__name__)

SETTING = "ARTICLEFORGE_IMAGE_QUANTIZATION"
# The FP8 GEMM wants both sides of the weight in multiples of 16.
ALIGN = 16
# Kinds of converted layer, in the order the status lists them.
ROLES = ("attention", "feed-forward", "time embedding", "proj_in/proj_out", "conv_shortcut")


class Fp8Linear(nn.Module):
    """A linear layer whose weight is E4M3 (per output channel) and whose input rows are
    quantized to E4M3 on every call; bias added in the input's dtype."""

    q: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, gemm_dtype: torch.dtype
    ) -> None:
        super().__init__()
        q, scale = quantize_weight(weight.detach())
        # Buffers, not parameters: diffusers takes a model's dtype from its first parameter.
        self.register_buffer("q", q)
        self.register_buffer("scale", scale.reshape(1, -1).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.out_features, self.in_features = int(q.shape[0]), int(q.shape[1])
        # What the GEMM writes: the model's dtype, or bf16 where the card's kernel writes no other.
        self.gemm_dtype = gemm_dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear, gemm_dtype: torch.dtype) -> Fp8Linear:
        return cls(linear.weight, linear.bias, gemm_dtype)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, in]`` -> ``[T, out]`` in x's dtype."""
        y = scaled_matmul(x, self.q, self.scale, out_dtype=self.gemm_dtype).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rows(x.reshape(-1, self.in_features))
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, weight=float8_e4m3fn, gemm_out={self.gemm_dtype}"
        )


class Fp8Conv1x1(Fp8Linear):
    """A 1x1 convolution (stride 1, no padding, one group) as a matmul over an NCHW map's
    pixels; on channels_last memory both reshapes are views."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, gemm_dtype: torch.dtype) -> Fp8Conv1x1:
        return cls(conv.weight.flatten(1), conv.bias, gemm_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.rows(x.permute(0, 2, 3, 1).reshape(n * h * w, c))
        return y.reshape(n, h, w, self.out_features).permute(0, 3, 1, 2)


@dataclass
class Fp8Conversion:
    """What ``convert_unet`` did: converted layers by role, and those left in float."""

    layers: dict[str, int] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)  # eligible by kind, sides not multiples of 16
    gemm_dtype: str = ""

    @property
    def total(self) -> int:
        return sum(self.layers.values())

    def describe(self) -> str:
        parts = ", ".join(f"{role} {n}" for role, n in self.layers.items() if n)
        kept = f"; {len(self.kept)} left in float (sides not multiples of 16)" if self.kept else ""
        return f"{self.total} layers ({parts}){kept}"


def role_of(name: str) -> str:
    """The kind of a converted layer, from its name in the UNet."""
    parts = name.split(".")
    if any(part.startswith("attn") for part in parts):
        return "attention"
    if "ff" in parts:
        return "feed-forward"
    if parts[0] in ("time_embedding", "add_embedding") or parts[-1] == "time_emb_proj":
        return "time embedding"
    if parts[-1] in ("proj_in", "proj_out"):
        return "proj_in/proj_out"
    if parts[-1] == "conv_shortcut":
        return "conv_shortcut"
    return "other"


def gemm_dtype_for(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """``dtype`` where the row-wise FP8 GEMM can write it on ``device``, else bfloat16."""
    if device.type != "cuda" or dtype == torch.bfloat16:
        return dtype
    a = torch.zeros((16, 16), dtype=FP8, device=device)
    one = torch.ones((16, 1), dtype=torch.float32, device=device)
    try:
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one.t(), out_dtype=dtype)
    except (RuntimeError, NotImplementedError):
        return torch.bfloat16
    return dtype


def _is_1x1(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and tuple(module.kernel_size) == (1, 1)
        and tuple(module.stride) == (1, 1)
        and module.padding in ((0, 0), "valid")
        and tuple(module.dilation) == (1, 1)
        and module.groups == 1
        and module.padding_mode == "zeros"
    )


def _unused_by_fusion(model: nn.Module) -> set[str]:
    """The projections that QKV fusion replaced (the fused processor never calls them)."""
    unused: set[str] = set()
    for name, module in model.named_modules():
        if not getattr(module, "fused_projections", False):
            continue
        prefix = f"{name}." if name else ""
        if getattr(module, "to_qkv", None) is not None:
            unused.update(f"{prefix}{p}" for p in ("to_q", "to_k", "to_v"))
        elif getattr(module, "to_kv", None) is not None:
            unused.update(f"{prefix}{p}" for p in ("to_k", "to_v"))
    return unused


def convert_unet(unet: Any, *, convolutions: bool = True) -> Fp8Conversion:
    """Replaces the UNet's linear layers (and, with ``convolutions``, its 1x1 convolutions)
    with FP8 modules, in place, after QKV fusion and channels_last and before torch.compile.
    Runs on any device; the service calls it on FP8 cards only."""
    first = next(unet.parameters())
    gemm_dtype = gemm_dtype_for(first.device, first.dtype)
    result = Fp8Conversion(layers=dict.fromkeys(ROLES, 0), gemm_dtype=str(gemm_dtype)[6:])
    unused = _unused_by_fusion(unet)
    targets = [
        (name, module)
        for name, module in unet.named_modules()
        if name not in unused
        and not isinstance(module, Fp8Linear)
        and (isinstance(module, nn.Linear) or (convolutions and _is_1x1(module)))
    ]
    for name, module in targets:
        out_features, in_features = module.weight.shape[0], module.weight[0].numel()
        if out_features % ALIGN or in_features % ALIGN:
            result.kept.append(name)
            continue
        new: Fp8Linear
        if isinstance(module, nn.Linear):
            new = Fp8Linear.from_linear(module, gemm_dtype)
        else:
            new = Fp8Conv1x1.from_conv(module, gemm_dtype)
        parent_name, _, child = name.rpartition(".")
        setattr(unet.get_submodule(parent_name) if parent_name else unet, child, new)
        role = role_of(name)
        result.layers[role] = result.layers.get(role, 0) + 1
    return result
