"""Moving step inputs from the host to the device without stalling it.

The sampler and the model runner build each step's inputs on the host; a copy from pageable
memory would wait for the device to drain and undo the engine's overlap of host and device work.
"""

from __future__ import annotations

from typing import Any

import torch


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host to device without a stream sync: through pinned memory on CUDA."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def to_host_async(t: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Starts copying a device tensor to the host; returns the host tensor and the event to
    wait on before reading it (None off CUDA, where the copy is done already)."""
    if t.device.type != "cuda":
        return t, None
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return host, done
