"""Where a denoising step's time goes, and which kernel settings make it shorter.

The image service's time is the UNet's: 25 steps of a batch of 2 x images (CFG). This bench
loads the random-weight UNet of a served shape (``bench/image_models.py``) as the service does
(fp16, channels_last, fused QKV) and times one forward, at several batch sizes:

* eagerly, with cuDNN's autotuner off and on, and under each SDPA backend;
* compiled (inductor, no CUDA graphs, so that every kernel is visible), with the service's
  inductor settings and with diffusers' speed guide's extra ones;

then profiles one compiled step and sums the GPU time by kind of kernel (convolution, matmul,
attention, fused elementwise/normalisation, copies) against the step's wall time: the summary a
closing note can cite. Appends JSON lines to $OUT/unet_variants.jsonl.

    python -m bench.unet_variants --shape sd15 --batches 2,16
    python -m bench.unet_variants --shape sd15-small --device cpu --batches 2 --no-compile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from bench.image_models import build

OUT = Path(os.environ.get("OUT", "/tmp"))
LOG = OUT / "unet_variants.jsonl"
STARTED = time.monotonic()

# First match wins; names are CUDA kernel names as the profiler reports them.
KINDS = [
    # Inductor's kernels are named after the ops they fuse ("..._convolution_native_group_norm"):
    # they are fused elementwise work, whatever op names they carry.
    ("triton fused (norm, activation, elementwise)", re.compile(r"^triton_", re.I)),
    ("attention", re.compile(r"flash|fmha|attention|sdpa|cudnn_.*mha|softmax", re.I)),
    ("convolution", re.compile(r"conv|implicit_gemm|winograd|dgrad|wgrad|fprop", re.I)),
    ("matmul", re.compile(r"gemm|cutlass|cublas|sm90_xmma|nvjet|matmul|\bmm\b|addmm", re.I)),
    ("copy", re.compile(r"memcpy|memset|copy|cat|elementwise_kernel.*copy", re.I)),
    ("other elementwise / normalisation", re.compile(r".")),
]


def rec(**fields: Any) -> None:
    fields["t"] = round(time.monotonic() - STARTED, 1)
    line = json.dumps(fields)
    print(line, flush=True)
    with LOG.open("a") as f:
        f.write(line + "\n")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def inputs(unet: Any, batch: int, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """A denoising step's arguments: latents, a timestep, text states (and SDXL's extras)."""
    config = unet.config
    side = config.sample_size
    kw: dict[str, Any] = {
        "sample": torch.randn(batch, config.in_channels, side, side, device=device, dtype=dtype),
        "timestep": torch.tensor(500, device=device),
        "encoder_hidden_states": torch.randn(
            batch, 77, config.cross_attention_dim, device=device, dtype=dtype
        ),
    }
    if config.addition_embed_type == "text_time":
        text = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        kw["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, text, device=device, dtype=dtype),
            "time_ids": torch.tensor([[side * 8, side * 8, 0, 0, side * 8, side * 8]] * batch).to(
                device, dtype
            ),
        }
    kw["sample"] = kw["sample"].contiguous(memory_format=torch.channels_last)
    return kw


def timed(step: Callable[[], Any], device: str, repeats: int) -> float:
    """Median seconds of one call, after two warm-up calls."""
    for _ in range(2):
        step()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


@contextlib.contextmanager
def sdpa(backend: str | None) -> Iterator[None]:
    if backend is None:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(getattr(SDPBackend, backend)):
        yield


def kind_of(name: str) -> str:
    return next(kind for kind, pattern in KINDS if pattern.search(name))


def gpu_ms_by_kind(prof: Any) -> tuple[dict[str, float], int]:
    """GPU milliseconds of a finished torch.profiler run by kind of kernel, and the kernels."""
    by_kind: dict[str, float] = {}
    kernels = 0
    for event in prof.key_averages():
        gpu_us = getattr(event, "self_device_time_total", 0) or 0
        if gpu_us <= 0 or event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        kernels += event.count
        kind = kind_of(event.key)
        by_kind[kind] = by_kind.get(kind, 0.0) + gpu_us / 1000
    return by_kind, kernels


def profile_summary(step: Callable[[], Any], device: str, label: str) -> None:
    """GPU time by kind of kernel for one step, against the step's wall time."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        step()
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        step()
        sync(device)
        wall = time.perf_counter() - t0
    by_kind, kernels = gpu_ms_by_kind(prof)
    busy = sum(by_kind.values())
    rec(
        event="profile",
        label=label,
        wall_ms=round(wall * 1000, 2),
        gpu_busy_ms=round(busy, 2),
        gpu_idle_ms=round(wall * 1000 - busy, 2),
        kernels=kernels,
        by_kind_ms={k: round(v, 2) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
    )
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30)
    (OUT / f"unet_profile_{label}.txt").write_text(table)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="sd15")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default="2,16", help="UNet batch sizes (2 x images)")
    parser.add_argument("--models", default="/tmp/models")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--skip-eager", action="store_true")
    parser.add_argument("--compile-batches", default="", help="default: --batches")
    parser.add_argument("--budget-s", type=float, default=400)
    args = parser.parse_args()
    from diffusers import UNet2DConditionModel

    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    folder = Path(args.models) / args.shape
    rec(event="build", shape=args.shape, **build(args.shape, folder, args.device, str(dtype)[6:]))
    unet: Any = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype)
    unet.to(args.device).eval()
    unet.fuse_qkv_projections()
    unet.to(memory_format=torch.channels_last)
    batches = [int(b) for b in args.batches.split(",")]
    backends: list[str | None] = [None]
    if args.device.startswith("cuda"):
        backends += ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"]

    def step_of(model: Any, batch: int) -> Callable[[], Any]:
        kw = inputs(unet, batch, args.device, dtype)

        def step() -> Any:
            with torch.inference_mode():
                return model(**kw).sample

        return step

    for benchmark in () if args.skip_eager else (False, True):
        torch.backends.cudnn.benchmark = benchmark
        for backend in backends:
            for batch in batches:
                try:
                    with sdpa(backend):
                        seconds = timed(step_of(unet, batch), args.device, args.repeats)
                except RuntimeError as exc:  # a backend that cannot run this shape
                    rec(event="eager", batch=batch, sdpa=backend, error=str(exc)[:300])
                    continue
                rec(
                    event="eager",
                    batch=batch,
                    cudnn_benchmark=benchmark,
                    sdpa=backend or "default",
                    ms=round(seconds * 1000, 2),
                    ms_per_image=round(seconds * 1000 / (batch / 2), 2),
                )
    torch.backends.cudnn.benchmark = False
    largest = max(batches)
    if not args.skip_eager:
        profile_summary(step_of(unet, largest), args.device, f"eager_b{largest}")
    if args.no_compile:
        rec(event="done")
        return
    import torch._inductor.config as inductor

    variants = [
        ("service", {"conv_1x1_as_mm": True}, False),
        (
            "guide-cudnn",  # no "+": a file name the device tool brings back
            {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True, "epilogue_fusion": False},
            True,
        ),
    ]
    for label, flags, benchmark in variants:
        if time.monotonic() - STARTED > args.budget_s:
            rec(event="skipped", variant=label, reason="over the time budget")
            continue
        torch._dynamo.reset()
        torch.backends.cudnn.benchmark = benchmark
        saved = {name: getattr(inductor, name) for name in flags}
        for name, value in flags.items():
            setattr(inductor, name, value)
        compiled = torch.compile(unet, fullgraph=True, dynamic=False)
        compile_batches = [int(b) for b in (args.compile_batches or args.batches).split(",")]
        for batch in compile_batches:
            t0 = time.perf_counter()
            step = step_of(compiled, batch)
            step()
            sync(args.device)
            compile_s = time.perf_counter() - t0
            seconds = timed(step, args.device, args.repeats)
            rec(
                event="compiled",
                variant=label,
                flags=flags,
                cudnn_benchmark=benchmark,
                batch=batch,
                compile_s=round(compile_s, 1),
                ms=round(seconds * 1000, 2),
                ms_per_image=round(seconds * 1000 / (batch / 2), 2),
            )
            if batch == max(compile_batches):
                profile_summary(step, args.device, f"compiled_{label}_b{batch}")
        for name, value in saved.items():
            setattr(inductor, name, value)
    rec(event="done")


if __name__ == "__main__":
    main()
