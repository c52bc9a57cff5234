"""Settings of the image service (``ARTICLEFORGE_IMAGE_*``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from services.common.config import CommonSettings

SchedulerName = Literal[
    "dpmpp_2m", "dpmpp_2m_karras", "euler", "euler_a", "ddim", "pndm", "unipc", "lcm"
]


class ImageSettings(CommonSettings):
    # HF id or local folder of a diffusers text-to-image pipeline (SD 1.5, SDXL, SD-Turbo, ...),
    # loaded through AutoPipelineForText2Image; or `tiny` (a small random-weight SD built offline).
    image_model: str = "tiny"
    # Weights dtype; `auto` is float16 on CUDA and float32 on the CPU.
    image_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # `auto` picks CUDA when present; otherwise `cpu`, `cuda` or `cuda:N`.
    image_device: str = "auto"
    # Most images generated in one pipeline call (the sum of `n` over the requests batched
    # together). A request asking for more images than this is refused with a 400.
    image_max_batch_size: int = Field(default=8, ge=1, le=64)
    # The longest a request waits for compatible requests to join its batch, in milliseconds
    # (counted from its arrival). A batch closes sooner when it is full, or when no compatible
    # request has arrived for `image_batch_quiet_ms`: a burst of requests, whose arrivals are
    # spread over a few milliseconds of HTTP parsing, is drawn as one batch, and a lone request
    # waits only the quiet time. A quiet time of 0 turns that rule off (the full wait applies).
    image_batch_wait_ms: float = Field(default=50.0, ge=0, le=5000)
    image_batch_quiet_ms: float = Field(default=10.0, ge=0, le=5000)
    # Most requests admitted at once (running + waiting); beyond it the service answers 429.
    image_max_queue: int = Field(default=64, ge=1)
    # Longest prompt (and negative prompt) accepted, in characters. CLIP reads at most 77 tokens
    # of it anyway; the limit keeps junk out of the PNG metadata and the logs.
    image_max_prompt_length: int = Field(default=2000, ge=1, le=20_000)
    # Longest image side accepted, in pixels (also bounded by 2048 in the request schema).
    image_max_side: int = Field(default=2048, ge=8, le=2048)
    # Most denoising steps a request may ask for (also bounded by 150 in the request schema).
    # Steps are what an image costs; lower it to bound each request's time on the GPU.
    image_max_steps: int = Field(default=150, ge=1, le=150)
    # Denoising steps when a request does not say (SD-Turbo wants 1-4).
    image_default_steps: int = Field(default=30, ge=1, le=150)
    # Classifier-free guidance scale when a request does not say (SD-Turbo wants 0).
    image_default_guidance_scale: float = Field(default=7.0, ge=0.0, le=30.0)
    # Scheduler when a request does not say.
    image_default_scheduler: SchedulerName = "dpmpp_2m"
    # Run a safety checker on every image; a flagged image is answered as `nsfw: true` with no
    # pixels. Off by default, as in AUTOMATIC1111.
    image_safety_checker: bool = False
    # Where the checker comes from: HF id or folder of a StableDiffusionSafetyChecker with its
    # CLIPImageProcessor. Default: the model's own `safety_checker/` when it has one (SD 1.5,
    # `tiny`), else CompVis/stable-diffusion-safety-checker.
    image_safety_checker_model: str | None = None
    # torch.compile the denoiser (UNet) and the VAE decoder. Unset: on with CUDA, off on the CPU
    # (where inductor needs a C++ toolchain and gains little). The start-up warm-up pays the
    # compile time for the sizes and batch buckets below, so the first request does not; /readyz
    # answers 503 until it is done.
    image_compile: bool | None = None
    # torch.compile mode. `reduce-overhead` also records CUDA graphs (one per shape), which takes
    # the per-step launch overhead away: the fastest on an H200 at every batch size measured
    # (docs/benchmarks.md). `max-autotune*` benchmarks kernels as well: minutes per shape.
    image_compile_mode: Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = "reduce-overhead"
    # Where torch.compile keeps what it compiled (inductor's graph and kernel caches). A restart
    # of the same model, card and versions then loads its graphs from there instead of compiling
    # them again; put it on a volume (docker-compose.yml does: the image service's /cache).
    # Unset: TORCHINDUCTOR_CACHE_DIR when that is set, else `compile/` under
    # ARTICLEFORGE_CACHE_DIR.
    image_compile_cache_dir: Path | None = None
    # Fuse each attention block's Q, K and V projections into one matmul (diffusers'
    # `fuse_qkv_projections`, UNet and VAE). Unset: on with CUDA, off on the CPU.
    image_fuse_qkv: bool | None = None
    # Batch sizes compiled at start-up, comma-separated. With compile on, a batch runs at one of
    # them: the batcher either pads the waiting images up to the next bucket or takes only as
    # many as a smaller bucket holds (the rest start the next batch), whichever draws more
    # images per second by the step times measured so far. Unset: powers of two up to
    # `image_max_batch_size`, and that size itself.
    image_batch_buckets: str | None = None
    # Image sizes compiled at start-up, WIDTHxHEIGHT, comma-separated; unset: the model's native
    # size. Another size still works: its first request compiles it (the log says so).
    image_warmup_sizes: str | None = None
    # zlib level of the PNGs (0-9). Encoding runs in a thread pool beside the pipeline; level 1
    # was measured as the best trade (docs/benchmarks.md): near level 6's size at a fraction of
    # its time.
    image_png_compress_level: int = Field(default=1, ge=0, le=9)
    # Threads that encode PNGs while the pipeline draws the next batch.
    image_encode_threads: int = Field(default=4, ge=1, le=64)
    # --- Options that change the images: off by default. ---
    # `fp8`: the UNet's matmuls in FP8 E4M3 (its linear layers and 1x1 convolutions, ~25 % of a
    # compiled SD-1.5 step; per-channel weight scales, per-pixel/token activation scales;
    # services/image/fp8.py), as ARTICLEFORGE_TEXT_QUANTIZATION=fp8 does for the text model.
    # The 3x3 convolutions, attention, the VAE and the text encoder stay in the model's dtype.
    # Needs FP8 tensor cores (Hopper or Ada); refused elsewhere at start-up. It changes the
    # pixels slightly (docs/deployment.md has the measured difference).
    image_quantization: Literal["none", "fp8"] = "none"
    # Step caching: in the middle of the schedule (the first and last 20% of the steps always
    # run the denoiser), only every Nth step calls it; the others reuse the last noise
    # prediction. Fewer UNet calls, slightly different images. 0 or 1: off.
    image_step_cache_interval: int = Field(default=0, ge=0, le=10)
    # DeepCache-style feature reuse (Ma et al., CVPR 2024): every Nth step (and the last 10% of
    # the steps) runs the whole UNet and keeps the features its deep part hands the last up
    # block; the steps between run only the shallow path (conv_in, the first down block, the
    # last up block) on those features. Fewer deep-block calls, slightly different images; the
    # UNet then runs eagerly (torch.compile covers the VAE decoder only). 0 or 1: off. Not
    # together with step caching.
    image_deep_cache_interval: int = Field(default=0, ge=0, le=10)
    # Previews through a tiny VAE (TAESD, diffusers' AutoencoderTiny: HF id or folder, e.g.
    # madebyollin/taesd) instead of the linear latent-to-RGB map: sharper previews at full size,
    # for a few milliseconds per preview. Unset: the linear map.
    image_preview_vae: str | None = None
    # With `stream: true`, send a cheap latent-to-RGB preview every K steps; 0 turns them off.
    image_preview_every: int = Field(default=5, ge=0, le=150)
    # Name written as `Model:` into each PNG's parameters; defaults to the model setting.
    image_served_model_name: str | None = None
    # Bind address and port of `articleforge serve image`.
    image_host: str = "127.0.0.1"
    image_port: int = Field(default=8002, ge=1, le=65535)

    @model_validator(mode="after")
    def _check(self) -> ImageSettings:
        if self.image_default_steps > self.image_max_steps:
            raise ValueError(
                f"ARTICLEFORGE_IMAGE_DEFAULT_STEPS ({self.image_default_steps}) is larger than "
                f"ARTICLEFORGE_IMAGE_MAX_STEPS ({self.image_max_steps}); lower the default or "
                "raise the limit"
            )
        if self.image_device == "cpu" and self.image_dtype == "float16":
            raise ValueError(
                "ARTICLEFORGE_IMAGE_DTYPE=float16 does not run on the CPU "
                "(ARTICLEFORGE_IMAGE_DEVICE=cpu); use float32 or auto"
            )
        buckets = self.batch_buckets()
        if buckets[-1] < self.image_max_batch_size:
            raise ValueError(
                f"ARTICLEFORGE_IMAGE_BATCH_BUCKETS ({self.image_batch_buckets}) must reach "
                f"ARTICLEFORGE_IMAGE_MAX_BATCH_SIZE ({self.image_max_batch_size})"
            )
        if self.image_step_cache_interval > 1 and self.image_deep_cache_interval > 1:
            raise ValueError(
                "ARTICLEFORGE_IMAGE_STEP_CACHE_INTERVAL "
                f"({self.image_step_cache_interval}) and ARTICLEFORGE_IMAGE_DEEP_CACHE_INTERVAL "
                f"({self.image_deep_cache_interval}) are both on; they cache the same UNet "
                "steps in two ways, so set one of them to 0"
            )
        self.warmup_sizes()  # raises on a malformed entry
        return self

    def compile_cache_dir(self) -> Path:
        """The folder that inductor's caches go to (see ``image_compile_cache_dir``)."""
        if self.image_compile_cache_dir is not None:
            return self.image_compile_cache_dir.expanduser()
        inductor_own = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        if inductor_own:
            return Path(inductor_own).expanduser()
        return self.resolved_cache_dir() / "compile"

    def export_compile_cache_dir(self) -> Path:
        """Points inductor at ``compile_cache_dir``. Inductor takes its cache folder from the
        environment only, when it first compiles: call this before."""
        path = self.compile_cache_dir()
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
        return path

    def batch_buckets(self) -> list[int]:
        """The compiled batch sizes, ascending."""
        if self.image_batch_buckets is None:
            sizes = {self.image_max_batch_size}
            sizes.update(1 << k for k in range(7) if 1 << k < self.image_max_batch_size)
            return sorted(sizes)
        try:
            sizes = {int(part) for part in self.image_batch_buckets.split(",") if part.strip()}
        except ValueError:
            raise ValueError(
                f"ARTICLEFORGE_IMAGE_BATCH_BUCKETS must be comma-separated integers, got "
                f"{self.image_batch_buckets!r}"
            ) from None
        if not sizes or min(sizes) < 1:
            raise ValueError(
                "ARTICLEFORGE_IMAGE_BATCH_BUCKETS must name batch sizes of at least 1, got "
                f"{self.image_batch_buckets!r}"
            )
        return sorted(sizes)

    def warmup_sizes(self) -> list[tuple[int, int]]:
        """(width, height) pairs to compile at start-up; empty means the native size."""
        sizes = []
        for part in (self.image_warmup_sizes or "").split(","):
            if not part.strip():
                continue
            width, sep, height = part.strip().lower().partition("x")
            if not (sep and width.isdigit() and height.isdigit()):
                raise ValueError(
                    "ARTICLEFORGE_IMAGE_WARMUP_SIZES must be WIDTHxHEIGHT entries, "
                    f"comma-separated; got {part.strip()!r}"
                )
            if int(width) % 8 or int(height) % 8:
                raise ValueError(
                    f"ARTICLEFORGE_IMAGE_WARMUP_SIZES: {part.strip()} is not a multiple of 8"
                )
            sizes.append((int(width), int(height)))
        return sizes

    @property
    def model_name(self) -> str:
        return self.image_served_model_name or self.image_model
