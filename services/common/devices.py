"""Device and dtype settings (`auto`, `cpu`, `cuda:N`; `auto`, `float32`, ...) to torch objects."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def resolve_dtype(setting: str, device: torch.device, cuda_auto: torch.dtype) -> torch.dtype:
    """`auto` is ``cuda_auto`` on CUDA (bf16 for the LM, fp16 for diffusion) and fp32 on CPU."""
    if setting == "auto":
        return cuda_auto if device.type == "cuda" else torch.float32
    return DTYPES[setting]
