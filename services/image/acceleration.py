"""What makes the image pipeline fast on CUDA, applied once at load time.

* fused QKV projections (diffusers' ``fuse_qkv_projections``): one matmul per attention block
  instead of three;
* channels_last memory for the denoiser and the VAE (what cuDNN's fp16 convolutions want);
* with ``ARTICLEFORGE_IMAGE_QUANTIZATION=fp8``, the UNet's linear layers and 1x1 convolutions
  as FP8 matmuls (services/image/fp8.py), converted here, before compile;
* ``torch.compile`` of the denoiser and of the VAE decoder, with static shapes: each (size, batch)
  compiles once, and ``reduce-overhead`` records a CUDA graph for it, so a denoising step is one
  graph replay instead of a thousand kernel launches;
* batch buckets: with compile on, every call runs at one of a few batch sizes that the warm-up
  compiled. The engine either pads a batch up to the next bucket (the padded rows are drawn and
  thrown away) or cuts it down to a smaller one, whichever the measured call times
  (``Acceleration.call_time``, at the request's step count) say draws more images per second.

With DeepCache on (``ARTICLEFORGE_IMAGE_DEEP_CACHE_INTERVAL``, services/image/deep_cache.py) the
UNet is left eager and only the VAE decoder compiles: its shallow steps run the UNet's blocks one
by one, and its full steps read a block's output through a hook that a compiled graph would not
run.

SDXL's original VAE overflows in float16, so its pipeline casts the VAE to float32 and back on
every call (``force_upcast``): serve SDXL with an fp16-safe VAE (madebyollin/sdxl-vae-fp16-fix,
whose config turns that off); docs/deployment.md says how.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from services.image.config import ImageSettings
from services.image.fp8 import Fp8Conversion, convert_unet

logger = logging.getLogger(__name__)

# (width, height, batch bucket, classifier-free guidance on): one compiled shape of the pipeline.
ShapeKey = tuple[int, int, int, bool]


def enabled(flag: bool | None, device: torch.device) -> bool:
    """An on/off setting whose unset value means "on with CUDA"."""
    return device.type == "cuda" if flag is None else flag


@dataclass
class Acceleration:
    """What ``accelerate`` did, and the compiled shapes the engine has run so far."""

    compiled: bool = False
    mode: str = ""
    fused_qkv: bool = False
    quantization: str = "none"
    fp8: Fp8Conversion | None = None  # what the fp8 conversion replaced
    buckets: list[int] = field(default_factory=lambda: [1])
    seen: set[ShapeKey] = field(default_factory=set)
    # Seconds of one call of each compiled shape, by step count, as measured (moving averages):
    # a call costs a fixed part (text encoder, VAE decode) plus a part per denoising step.
    call_seconds: dict[ShapeKey, dict[int, float]] = field(default_factory=dict)
    provisional: set[tuple[ShapeKey, int]] = field(default_factory=set)  # warm-up figures

    def status(self) -> dict[str, Any]:
        """What was applied, for the service's info and logs."""
        return {
            "compiled": self.compiled,
            "compile_mode": self.mode or None,
            "fused_qkv": self.fused_qkv,
            "quantization": self.quantization,
            "fp8_layers": None if self.fp8 is None else self.fp8.total,
            "fp8_layers_by_role": None if self.fp8 is None else dict(self.fp8.layers),
            "batch_buckets": list(self.buckets) if self.compiled else None,
        }

    def bucket(self, images: int) -> int:
        """The batch size a call of ``images`` images runs at (itself without compile)."""
        if not self.compiled:
            return images
        index = bisect.bisect_left(self.buckets, images)
        return self.buckets[index] if index < len(self.buckets) else images

    def observe(self, key: ShapeKey, steps: int, seconds: float, *, warmup: bool = False) -> None:
        """Records how long a finished call of ``steps`` steps took.

        A warm-up figure is a first estimate, which the first real call of that step count
        replaces; real calls then keep a moving average.
        """
        points = self.call_seconds.setdefault(key, {})
        old = None if (key, steps) in self.provisional else points.get(steps)
        points[steps] = seconds if old is None else 0.7 * old + 0.3 * seconds
        if warmup:
            self.provisional.add((key, steps))
        else:
            self.provisional.discard((key, steps))

    def call_time(self, key: ShapeKey, steps: int) -> float | None:
        """Estimated seconds of a call of ``steps`` steps, or None before any measurement.

        The figure for that step count where there is one; else a straight line (fixed part
        plus a part per step) through the step counts measured; from a single step count,
        in proportion to the steps.
        """
        points = self.call_seconds.get(key)
        if not points:
            return None
        if steps in points:
            return points[steps]
        nearest = min(points, key=lambda s: abs(s - steps))
        proportional = points[nearest] * steps / nearest
        if len(points) < 2:
            return proportional
        mean_s = sum(points) / len(points)
        mean_t = sum(points.values()) / len(points)
        spread = sum((s - mean_s) ** 2 for s in points)
        per_step = sum((s - mean_s) * (t - mean_t) for s, t in points.items()) / spread
        fixed = mean_t - per_step * mean_s
        if per_step <= 0 or fixed < 0:  # noise: no usable line
            return proportional
        return fixed + per_step * steps

    def images_per_second(
        self, width: int, height: int, images: int, guided: bool, steps: int
    ) -> float:
        """Relative speed of a call of ``images`` images (padded to its bucket) at ``steps``.

        Measured call times where there are some; a shape not measured yet is assumed to cost
        in proportion to its bucket, which makes padding never look better than cutting.
        """
        size = self.bucket(images)
        seconds = self.call_time((width, height, size, guided), steps)
        return images / seconds if seconds else images / size

    def note_shape(self, key: ShapeKey) -> bool:
        """True the first time a compiled shape is run (it compiles now)."""
        if not self.compiled or key in self.seen:
            return False
        self.seen.add(key)
        return True


def accelerate(pipe: Any, settings: ImageSettings, device: torch.device) -> Acceleration:
    result = Acceleration(buckets=settings.batch_buckets())
    vae = getattr(pipe, "vae", None)
    if enabled(settings.image_fuse_qkv, device) and hasattr(pipe, "fuse_qkv_projections"):
        pipe.fuse_qkv_projections()
        result.fused_qkv = True
    denoiser: Any = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if device.type == "cuda":
        # diffusers already uses PyTorch SDPA attention (AttnProcessor2_0) on torch >= 2.
        denoiser.to(memory_format=torch.channels_last)
        if vae is not None:
            vae.to(memory_format=torch.channels_last)
    if settings.image_quantization == "fp8":
        quantize(pipe, settings, result)
    if not enabled(settings.image_compile, device):
        return result
    import torch._inductor.config as inductor
    from torch import _dynamo

    cache = settings.export_compile_cache_dir()  # before anything compiles
    # 1x1 convolutions as matmuls: what diffusers' own speed guide sets for its UNets.
    inductor.conv_1x1_as_mm = True
    # Every (size, bucket, guidance on/off) is its own static graph; keep them all.
    _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64)
    mode = settings.image_compile_mode
    # DeepCache's shallow steps call the UNet's blocks one by one and its full steps read a
    # block's output through a hook, which a compiled graph would not run (services/image/
    # deep_cache.py): with it on, the UNet stays eager.
    eager_unet = settings.image_deep_cache_interval > 1 and getattr(pipe, "unet", None) is not None
    if eager_unet:
        logger.info(
            "image model %s: the UNet is not compiled: ARTICLEFORGE_IMAGE_DEEP_CACHE_INTERVAL=%d "
            "runs its shallow steps block by block, eagerly",
            settings.image_model,
            settings.image_deep_cache_interval,
        )
    else:
        compiled = torch.compile(denoiser, mode=mode, fullgraph=True, dynamic=False)
        if getattr(pipe, "unet", None) is not None:
            pipe.unet = compiled
        else:
            pipe.transformer = compiled
    if vae is not None:
        # The decoder module, not `vae.decode`: the pipeline hands that its generators.
        vae.decoder = torch.compile(vae.decoder, mode=mode, fullgraph=True, dynamic=False)
    result.compiled, result.mode = True, mode
    logger.info(
        "image model %s: torch.compile (%s) of %s; batch buckets %s; compile cache %s",
        settings.image_model,
        mode,
        "the VAE decoder" if eager_unet else "the denoiser and the VAE decoder",
        ",".join(map(str, result.buckets)),
        cache,
    )
    return result


def quantize(pipe: Any, settings: ImageSettings, result: Acceleration) -> None:
    """The UNet's matmuls in FP8 (the loader has checked the card). A transformer denoiser
    (SD3, Flux) is not converted: its layers were not measured."""
    unet = getattr(pipe, "unet", None)
    if unet is None:
        raise ValueError(
            f"ARTICLEFORGE_IMAGE_QUANTIZATION=fp8 converts a UNet, and {settings.image_model} "
            "has a transformer denoiser; use ARTICLEFORGE_IMAGE_QUANTIZATION=none"
        )
    result.fp8 = convert_unet(unet)
    result.quantization = "fp8"
    logger.info(
        "image model %s: fp8 (E4M3) matmuls in %s of the UNet, GEMM out %s; the 3x3 "
        "convolutions, attention, the VAE and the text encoder stay %s",
        settings.image_model,
        result.fp8.describe(),
        result.fp8.gemm_dtype,
        str(next(unet.parameters()).dtype)[6:],
    )


def compile_cache_counts() -> tuple[int, int]:
    """Graphs that inductor found in its cache, and graphs that it compiled, in this process so
    far."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return inductor["fxgraph_cache_hit"], inductor["fxgraph_cache_miss"]


class StepCache:
    """Reuses the denoiser's last output on skipped steps of one pipeline call.

    Step ``i`` of ``steps`` calls the denoiser when it lies in the first or last 20% of the
    schedule, or when ``(i - start) % interval == 0`` inside that middle window; otherwise the
    last prediction (cloned: a CUDA-graph output is overwritten by the next replay) stands in.
    Classifier-free guidance batches both halves into one call, so one call is one step.
    """

    def __init__(self, interval: int) -> None:
        self.interval = interval

    def runs(self, index: int, steps: int) -> bool:
        start, end = int(0.2 * steps), steps - int(0.2 * steps)
        if self.interval <= 1 or not start <= index < end:
            return True
        return (index - start) % self.interval == 0

    @contextlib.contextmanager
    def around(self, denoiser: Any, steps: int) -> Iterator[None]:
        original = denoiser.forward
        calls = 0
        last: Any = None

        def forward(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls, last
            index, calls = calls, calls + 1
            if last is not None and not self.runs(index, steps):
                return last
            out = original(*args, **kwargs)
            last = _cloned(out)
            return out

        # An instance attribute: nn.Module.__call__ finds it first. A compiled module already
        # has one (torch.compile's OptimizedModule), which comes back afterwards.
        own = "forward" in vars(denoiser)
        denoiser.forward = forward
        try:
            yield
        finally:
            if own:
                denoiser.forward = original
            else:
                del denoiser.forward


def _cloned(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, tuple):
        return tuple(_cloned(x) for x in out)
    if hasattr(out, "sample"):  # UNet2DConditionOutput
        return type(out)(sample=out.sample.clone())
    return out
