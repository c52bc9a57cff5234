"""Loads the diffusers text-to-image pipeline (and the optional safety checker)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from services.common import fp8
from services.common.devices import resolve_device, resolve_dtype
from services.common.model_source import ModelLoadError
from services.common.tiny import resolve_model
from services.image.acceleration import Acceleration, accelerate
from services.image.config import ImageSettings
from services.image.preview import LatentPreviewer, TinyVaePreviewer

logger = logging.getLogger(__name__)

DEFAULT_SAFETY_CHECKER = "CompVis/stable-diffusion-safety-checker"


class SafetyChecker:
    """StableDiffusionSafetyChecker, run by us on the decoded images of any pipeline.

    The pipelines' own integration blacks flagged images out (and SDXL has none); we keep the
    flags and let the reply say `nsfw: true` instead.
    """

    def __init__(self, checker: Any, extractor: Any, device: torch.device) -> None:
        # Its warning says a black image will be returned; we return none (see above).
        logging.getLogger(type(checker).__module__).setLevel(logging.ERROR)
        self.checker = checker
        self.extractor = extractor
        self.device = device
        # CLIP's normalisation, built once rather than for every batch.
        self.mean = torch.tensor(extractor.image_mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(extractor.image_std, device=device).view(1, 3, 1, 1)

    def flags(self, images: torch.Tensor) -> list[bool]:
        """One flag per image of a batch of NCHW float images in [0, 1], on their device.

        The CLIP preprocessing (shortest side to the extractor's size, centre crop, the CLIP
        normalisation) runs on the images' device too, batched, instead of through PIL.
        """
        import torch.nn.functional as F

        extractor = self.extractor
        size = extractor.size.get("shortest_edge") or min(extractor.size.values())
        crop_h, crop_w = extractor.crop_size["height"], extractor.crop_size["width"]
        x = images.to(self.device, torch.float32)
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        new_h, new_w = max(crop_h, round(h * scale)), max(crop_w, round(w * scale))
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True)
        top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
        x = x[..., top : top + crop_h, left : left + crop_w].clamp(0, 1)
        clip_input = ((x - self.mean) / self.std).to(self.checker.dtype)
        # The tensor path of the checker (its ONNX export's): no numpy round trip. It blacks out
        # what it flags in the second argument; we pass a placeholder and keep only the flags.
        placeholder = torch.zeros(len(x), 1, device=x.device)
        _, flagged = self.checker.forward_onnx(clip_input, placeholder)
        return [bool(f) for f in flagged.tolist()]


@dataclass
class LoadedPipeline:
    pipe: Any
    device: torch.device
    dtype: torch.dtype
    model_name: str
    scheduler_config: Any  # the model's own; every call builds a fresh scheduler from it
    default_width: int
    default_height: int
    min_side: int  # smallest side the denoiser's down/up-sampling handles
    previewer: LatentPreviewer | TinyVaePreviewer | None
    safety: SafetyChecker | None
    acceleration: Acceleration = field(default_factory=Acceleration)


def _has_component(path: str, index: dict[str, Any], name: str) -> bool:
    entry = index.get(name)
    registered = isinstance(entry, list | tuple) and entry[0] is not None
    return registered or (Path(path) / name).is_dir()


def load_safety_checker(
    settings: ImageSettings, path: str, index: dict[str, Any], device: torch.device
) -> SafetyChecker:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    source, sub = settings.image_safety_checker_model, None
    if source is None:
        if _has_component(path, index, "safety_checker"):
            source, sub = path, "safety_checker"
        else:
            source = DEFAULT_SAFETY_CHECKER
    logger.info("image safety checker: loading from %s%s", source, f" ({sub})" if sub else "")
    checker: Any = StableDiffusionSafetyChecker.from_pretrained(source, subfolder=sub or "")
    extractor = CLIPImageProcessor.from_pretrained(
        source, subfolder="feature_extractor" if sub else ""
    )
    checker.to(device).eval()
    return SafetyChecker(checker, extractor, device)


def load_previewer(
    settings: ImageSettings, pipe: Any, device: torch.device, dtype: torch.dtype
) -> LatentPreviewer | TinyVaePreviewer | None:
    if settings.image_preview_vae is None:
        return LatentPreviewer.for_pipeline(pipe)
    from diffusers import AutoencoderTiny

    logger.info("image previews: tiny VAE from %s", settings.image_preview_vae)
    taesd: Any = AutoencoderTiny.from_pretrained(settings.image_preview_vae, torch_dtype=dtype)
    return TinyVaePreviewer(taesd.to(device).eval())


def _denoiser(pipe: Any) -> Any:
    return getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)


def check_quantization(settings: ImageSettings) -> None:
    """Refuses ``ARTICLEFORGE_IMAGE_QUANTIZATION=fp8`` where FP8 matmuls cannot run, with one
    sentence, before anything is loaded."""
    if settings.image_quantization != "fp8":
        return
    problem = fp8.unsupported_reason(
        resolve_device(settings.image_device), "ARTICLEFORGE_IMAGE_QUANTIZATION", "none"
    )
    if problem is not None:
        raise ModelLoadError(problem)


def load_image_pipeline(settings: ImageSettings, allow_cpu_fp8: bool = False) -> LoadedPipeline:
    """The pipeline, accelerated as the settings say. ``allow_cpu_fp8``: skip the fp8 device
    check (tests and bench/image_fp8.py run torch's reference FP8 matmul on the CPU; the service
    never does)."""
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline

    if not allow_cpu_fp8:
        check_quantization(settings)
    path = resolve_model(settings.image_model, "image", settings.resolved_cache_dir())
    device = resolve_device(settings.image_device)
    dtype = resolve_dtype(settings.image_dtype, device, torch.float16)
    index = dict(DiffusionPipeline.load_config(path))
    kwargs: dict[str, Any] = {"dtype": dtype}
    if "safety_checker" in index:
        # Never the pipeline's own checker: it would black images out (see SafetyChecker).
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    logger.info(
        "image model %s: loading from %s on %s (%s)", settings.image_model, path, device, dtype
    )
    pipe = AutoPipelineForText2Image.from_pretrained(path, **kwargs)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    denoiser = _denoiser(pipe)
    if denoiser is None:
        raise ValueError(f"{settings.image_model} has neither a UNet nor a transformer")
    acceleration = accelerate(pipe, settings, device)

    sample = denoiser.config.sample_size
    sample_h, sample_w = (sample, sample) if isinstance(sample, int) else tuple(sample)
    scale = int(pipe.vae_scale_factor)
    downsamples = max(len(getattr(denoiser.config, "block_out_channels", (0,))) - 1, 0)
    safety = (
        load_safety_checker(settings, path, index, device)
        if settings.image_safety_checker
        else None
    )
    return LoadedPipeline(
        pipe=pipe,
        device=device,
        dtype=dtype,
        model_name=settings.model_name,
        scheduler_config=pipe.scheduler.config,
        default_width=sample_w * scale,
        default_height=sample_h * scale,
        min_side=max(8, scale * 2**downsamples),
        previewer=load_previewer(settings, pipe, device, dtype),
        safety=safety,
        acceleration=acceleration,
    )
