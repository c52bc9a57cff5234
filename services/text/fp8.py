"""FP8 (E4M3) linear layers: weights per output channel, activations per token.

A decode step of a 7B model reads every weight once, so halving the bytes of the weights halves
the step's floor. ``ARTICLEFORGE_TEXT_QUANTIZATION=fp8`` stores every linear layer of the
decoder blocks in ``float8_e4m3fn`` with one float32 scale per output channel, and quantizes
each activation row on the fly with its own scale (its largest magnitude maps to 448, E4M3's
largest finite value). The product runs through ``torch._scaled_mm``: on Hopper (and Ada) it
is cuBLASLt / CUTLASS's FP8 tensor-core GEMM with row-wise scales applied in its epilogue, the
same kernel family that torchao's float8 inference and vLLM's ``Fp8LinearMethod`` use, so no
kernel library beyond torch is needed. It accumulates in float32 and writes bf16.

The embeddings, the norms and ``lm_head`` stay in bf16 (as vLLM keeps them), and so do
unmerged LoRA adapters, whose low-rank product runs beside the FP8 base on the bf16 input.

Checkpoints already in FP8 load too: the weights arrive as E4M3 values (transformers casts
them to bf16 exactly, since every E4M3 value is a bf16 value) and their scales are read from
the safetensors (``weight_scale``, per tensor or per channel), in the layouts that
llm-compressor (``compressed-tensors``, ``float-quantized``), vLLM/AutoFP8 (``fp8``) and
fbgemm (``fbgemm_fp8``) write. A static ``input_scale`` is not used: activations are always
scaled per token, which is at least as fine.

On the CPU ``torch._scaled_mm`` exists as a reference implementation; the tests use it for the
arithmetic, but the service refuses fp8 there (``unsupported_reason``): it would be slower than
float32 and gain nothing.

The arithmetic (quantizing weights and rows, the scaled product, ``Fp8Weight``) lives in
services/common/fp8.py, which the image service's FP8 UNet uses too; this module re-exports it
and keeps what only the text service needs: FP8 checkpoints.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from services.common.fp8 import (
    FP8,
    FP8_MAX,
    MIN_SCALE,
    Fp8Weight,
    dequantize,
    quantize_rows_torch,
    quantize_weight,
)
from services.common.fp8 import unsupported_reason as _unsupported_reason

__all__ = [
    "CHECKPOINT_METHODS",
    "FP8",
    "FP8_MAX",
    "MIN_SCALE",
    "Fp8Weight",
    "attach_checkpoint_scales",
    "checkpoint_method",
    "dequantize",
    "from_linear",
    "quantize_rows_torch",
    "quantize_weight",
    "read_weight_scales",
    "unsupported_reason",
]

logger = logging.getLogger(__name__)

# The quantization methods whose checkpoints hold E4M3 weights with `weight_scale` beside them.
CHECKPOINT_METHODS = ("compressed-tensors", "fp8", "fbgemm_fp8")


def unsupported_reason(device: torch.device) -> str | None:
    """None where FP8 matmuls run on tensor cores; else the one sentence that refuses fp8."""
    return _unsupported_reason(device, "ARTICLEFORGE_TEXT_QUANTIZATION", "none or nf4")


# --- FP8 checkpoints --------------------------------------------------------------------------


def checkpoint_method(config: Any) -> str | None:
    """The FP8 method of a checkpoint's ``quantization_config``, or None if it is not one."""
    qc = getattr(config, "quantization_config", None)
    if qc is None:
        return None
    if not isinstance(qc, dict):
        qc = qc.to_dict() if hasattr(qc, "to_dict") else vars(qc)
    method = qc.get("quant_method")
    if method not in CHECKPOINT_METHODS:
        return None
    if method == "compressed-tensors":
        groups = qc.get("config_groups") or {}
        weights = [g.get("weights") or {} for g in groups.values()]
        fp8 = weights and all(w.get("num_bits") == 8 and w.get("type") == "float" for w in weights)
        if not fp8:
            raise ValueError(
                "this compressed-tensors checkpoint is not FP8 (8-bit float weights); the "
                "text service loads only its float-quantized FP8 form"
            )
        strategies = {w.get("strategy") for w in weights}
        if not strategies <= {"tensor", "channel"}:
            raise ValueError(
                f"FP8 weight strategy {sorted(map(str, strategies))} is not supported; "
                "per-tensor and per-channel scales are"
            )
    if method == "fp8" and qc.get("weight_block_size"):
        raise ValueError(
            "block-wise FP8 checkpoints (weight_block_size) are not supported; per-tensor and "
            "per-channel scales are"
        )
    return str(method)


def read_weight_scales(folder: Path) -> dict[str, torch.Tensor]:
    """``{module name: float32 scale}`` for every ``<module>.weight_scale`` in the folder."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [p.name for p in sorted(folder.glob("*.safetensors"))]
    scales: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                if key.endswith(".weight_scale"):
                    scales[key.removesuffix(".weight_scale")] = f.get_tensor(key).float()
    return scales


def attach_checkpoint_scales(model: Any, scales: dict[str, torch.Tensor]) -> int:
    """Gives each linear layer loaded from an FP8 checkpoint its ``fp8_scale`` (``[out]``).

    Its weight holds the E4M3 values cast to the model's dtype (exact). Returns how many
    layers got one; a layer named in ``scales`` that the model lacks is an error.
    """
    modules = dict(model.named_modules())
    attached = 0
    for name, scale in scales.items():
        module = modules.get(name)
        if module is None:  # checkpoints name the causal LM's modules; so does the model
            raise ValueError(f"the FP8 checkpoint has a scale for {name!r}, a module it lacks")
        out = module.weight.shape[0]
        if scale.numel() not in (1, out):
            raise ValueError(f"{name}.weight_scale has {scale.numel()} values; expected 1 or {out}")
        module.fp8_scale = scale.reshape(-1).expand(out).contiguous().to(module.weight.device)
        attached += 1
    return attached


def from_linear(module: Any) -> Fp8Weight:
    """The FP8 form of a loaded linear: its checkpoint's E4M3 values and scales when it came
    from an FP8 checkpoint, else its bf16 weight quantized per output channel."""
    scale = getattr(module, "fp8_scale", None)
    if scale is not None:
        return Fp8Weight(module.weight.detach().to(FP8), scale.reshape(1, -1).float())
    return Fp8Weight.quantize(module.weight.detach())
