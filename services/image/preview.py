"""Step previews: a linear latent-to-RGB map instead of a VAE decode (or, as an option, TAESD).

A Stable Diffusion latent has 4 channels at 1/8 of the image size; a fixed 4x3 matrix (fitted
once against VAE decodes, as ComfyUI's and AUTOMATIC1111's "approx cheap" previews do) turns it
into a rough colour image for the cost of one small matmul, so a preview every few steps adds
nothing noticeable to a GPU step. The preview has the latent's size (64x64 for a 512x512 image).
It is computed on the device and copied to the host without a sync (``PendingPreview``), so the
engine thread never waits for it; the PNG is encoded on another thread.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import torch

# Rows: latent channels; columns: R, G, B. From ComfyUI's latent_formats.py (SD15 and SDXL).
SD15_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
SD15_BIAS = (0.0, 0.0, 0.0)
SDXL_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
SDXL_BIAS = (0.1084, -0.0175, -0.0011)


class PendingPreview:
    """A preview's pixels on their way to the host: made on the device, copied without a sync.

    The engine thread starts it and moves on; ``png_b64`` (called on another thread) waits for
    the copy and encodes. On the CPU the pixels are there at once.
    """

    def __init__(self, pixels: torch.Tensor) -> None:
        self.event: Any = None
        if pixels.device.type == "cuda":
            host = torch.empty(pixels.shape, dtype=pixels.dtype, pin_memory=True)
            host.copy_(pixels, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
            pixels = host
        self.pixels = pixels

    def png_b64(self) -> str:
        if self.event is not None:
            self.event.synchronize()
        return _png_b64(self.pixels)


class LatentPreviewer:
    def __init__(self, factors: Any, bias: Any) -> None:
        self.factors = torch.tensor(factors, dtype=torch.float32)
        self.bias = torch.tensor(bias, dtype=torch.float32)

    @classmethod
    def for_pipeline(cls, pipe: Any) -> LatentPreviewer | None:
        """The previewer for a pipeline's latent space, or None when there is no known map."""
        channels = getattr(getattr(pipe, "vae", None), "config", {}).get("latent_channels")
        if channels != 4:
            return None
        if "XL" in type(pipe).__name__:
            return cls(SDXL_FACTORS, SDXL_BIAS)
        return cls(SD15_FACTORS, SD15_BIAS)

    def start(self, latent: torch.Tensor) -> PendingPreview:
        """Starts the preview of one latent (C, h, w), on the latent's device."""
        if self.factors.device != latent.device:
            self.factors = self.factors.to(latent.device)
            self.bias = self.bias.to(latent.device)
        with torch.inference_mode():
            rgb = torch.einsum("chw,cr->hwr", latent.detach().float(), self.factors) + self.bias
            return PendingPreview(((rgb + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8))


class TinyVaePreviewer:
    """Previews through a tiny VAE (TAESD): the image's full size, a few ms of GPU per preview.

    diffusers' ``AutoencoderTiny`` decodes the pipeline's latents as they are (its scaling
    factor is 1) into [-1, 1].
    """

    def __init__(self, vae: Any) -> None:
        self.vae = vae

    @torch.inference_mode()
    def start(self, latent: torch.Tensor) -> PendingPreview:
        param = next(self.vae.parameters())
        decoded = self.vae.decode(latent[None].to(param.device, param.dtype)).sample[0]
        rgb = ((decoded.float() + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8)
        return PendingPreview(rgb.permute(1, 2, 0).contiguous())


def _png_b64(pixels: torch.Tensor) -> str:
    """Base64 PNG of an (h, w, 3) uint8 tensor; fast zlib, a preview is thrown away soon."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(out, format="PNG", compress_level=1)
    return base64.b64encode(out.getvalue()).decode("ascii")
