"""Settings of the image service (``ARTICLEFORGE_IMAGE_*``)."""

from __future__ import annotations

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
    # How long a request may wait for compatible requests to join its batch, in milliseconds.
    image_batch_wait_ms: float = Field(default=20.0, ge=0, le=5000)
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
    # torch.compile the UNet at start-up; the lifespan's warm-up pays the compile time so the
    # first request does not. CUDA only in practice (on the CPU it needs a C++ toolchain).
    image_compile: bool = False
    # torch.compile mode used when `image_compile` is on. `reduce-overhead` and `max-autotune`
    # record CUDA graphs and `max-autotune*` benchmarks kernels, per input shape: each new batch
    # size or image size pays that again on its first request (minutes with max-autotune).
    image_compile_mode: Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = "default"
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
        return self

    @property
    def model_name(self) -> str:
        return self.image_served_model_name or self.image_model
