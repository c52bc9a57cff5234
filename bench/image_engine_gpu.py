"""The image engine in process, against eager diffusers in the same call (no HTTP).

For choosing the defaults: eager diffusers (the anchors' way) beside the service's engine in
each compile setting, at one image, one request of n=8, and 8 concurrent requests; previews on
and off; a torch.profiler table of a batch of 8 for the eager engine and the fastest one; and
the PNG levels on this host's CPU; or, with ``--preview-study``, only what streaming
(per-step progress, previews) costs inside the engine. Appends JSON lines to
$OUT/image_engine.jsonl.

    python -m bench.image_engine_gpu --shape sd15 --modes eager,reduce-overhead
    python -m bench.image_engine_gpu --shape sd15-small --device cpu --modes eager  # smoke
    python -m bench.image_engine_gpu --shape sd15 --skip-baseline --deep-cache 3  # DeepCache
    python -m bench.image_engine_gpu --shape sd15 --skip-baseline --modes reduce-overhead \
        --buckets 1,8 --preview-study
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.image_models import build

OUT = Path(os.environ.get("OUT", "/tmp"))
LOG = OUT / "image_engine.jsonl"
STARTED = time.monotonic()


def rec(**fields: Any) -> None:
    fields["t"] = round(time.monotonic() - STARTED, 1)
    line = json.dumps(fields)
    print(line, flush=True)
    with LOG.open("a") as f:
        f.write(line + "\n")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def eager_baseline(folder: Path, args: argparse.Namespace) -> None:
    """Plain diffusers, as a user's script would run it (the anchors' measurement): the same
    runs as bench/image_bench.py's baseline, PNDM at 50 steps included."""
    from bench.image_bench import eager_diffusers

    for result in eager_diffusers(
        folder, argparse.Namespace(**vars(args), pndm=True), [args.steps]
    ):
        rec(event="eager_diffusers", **result)


async def engine_run(folder: Path, device: str, mode: str, args: argparse.Namespace) -> None:
    from services.image.config import ImageSettings
    from services.image.engine import ImageEngine
    from services.image.loading import load_image_pipeline
    from services.image.schemas import ImageParams

    env = {
        "image_model": str(folder),
        "image_device": device,
        "image_compile": mode != "eager",
        "image_max_batch_size": 8,
        "image_batch_buckets": args.buckets,
        "image_batch_wait_ms": 20,
        "image_default_steps": args.steps,
        "image_default_guidance_scale": args.guidance,
        "image_default_scheduler": args.scheduler,
        "image_deep_cache_interval": args.deep_cache,
    }
    if mode != "eager":
        env["image_compile_mode"] = mode
    settings = ImageSettings(**env)
    t0 = time.perf_counter()
    loaded = await asyncio.to_thread(load_image_pipeline, settings)
    loaded_s = time.perf_counter() - t0
    engine = ImageEngine(settings, loaded)
    t0 = time.perf_counter()
    await asyncio.wrap_future(engine.start())
    rec(
        event="engine_ready",
        mode=mode,
        deep_cache=args.deep_cache,
        load_s=round(loaded_s, 1),
        warmup_s=round(time.perf_counter() - t0, 1),
    )

    async def one(n: int, seed: int, stream: bool = False) -> Any:
        params = ImageParams(prompt="a lighthouse at dawn, oil painting", n=n, seed=seed)
        job = engine.prepare(params, f"bench-{seed}", stream=stream)
        handle = engine.submit(job)
        previews = 0
        async for update in handle.progress():
            previews += update.preview_b64 is not None
        assert handle.result is not None
        return handle.result, previews

    async def timed(label: str, coros: Any, images: int) -> None:
        times = []
        for rep in range(3):
            t0 = time.perf_counter()
            results = await asyncio.gather(*coros(rep))
            times.append(time.perf_counter() - t0)
        first = results[0][0]
        rec(
            event="engine",
            mode=mode,
            deep_cache=args.deep_cache,
            scenario=label,
            images=images,
            s_median=round(statistics.median(times), 3),
            s_min=round(min(times), 3),
            s_per_image=round(statistics.median(times) / images, 4),
            inference_s=round(first.inference_seconds, 3),
            batch_size=first.batch_size,
            previews=results[0][1],
            png_kib=round(len(first.images[0].png or b"") / 1024, 1),
        )

    if args.preview_study:
        await preview_study(engine, one, mode, args)
        engine.shutdown()
        return
    await timed("1 request", lambda r: [one(1, 10 + r)], 1)
    await timed("1 request, stream", lambda r: [one(1, 10 + r, stream=True)], 1)
    await timed("n=8", lambda r: [one(8, 100 + 10 * r)], 8)
    await timed("8 concurrent", lambda r: [one(1, 200 + 10 * r + k) for k in range(8)], 8)
    await timed(
        "8 concurrent, stream", lambda r: [one(1, 300 + 10 * r + k, True) for k in range(8)], 8
    )
    await timed("16 concurrent", lambda r: [one(1, 400 + 20 * r + k) for k in range(16)], 16)
    if args.profile and device.startswith("cuda"):
        from torch.profiler import ProfilerActivity, profile

        from bench.unet_variants import gpu_ms_by_kind

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            await asyncio.gather(*[one(1, 900 + k) for k in range(8)])
            wall_ms = (time.perf_counter() - t0) * 1000
        by_kind, _ = gpu_ms_by_kind(prof)
        rec(
            event="profile",
            mode=mode,
            scenario="8 concurrent",
            wall_ms=round(wall_ms, 1),
            gpu_busy_ms=round(sum(by_kind.values()), 1),
            by_kind_ms={k: round(v, 1) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        )
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
        (OUT / f"profile_{mode}_8concurrent.txt").write_text(table)
        cpu = prof.key_averages().table(sort_by="cpu_time_total", row_limit=15)
        (OUT / f"profile_{mode}_8concurrent_cpu.txt").write_text(cpu)
    engine.shutdown()
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    torch._dynamo.reset()


async def preview_study(engine: Any, one: Any, mode: str, args: argparse.Namespace) -> None:
    """What streaming costs inside the engine: the same requests without a stream, streamed
    with per-step progress only (previews off), and streamed with a preview every 5 steps.
    The three run in turn, round after round, so that drift in the card's clocks hits all
    three alike; the figure is the pipeline's own time (``inference_seconds``)."""
    variants = [("no stream", False, 5), ("stream, progress only", True, 0)]
    variants.append(("stream, previews every 5", True, 5))
    for concurrent in (1, 8):
        seconds: dict[str, list[float]] = {label: [] for label, _, _ in variants}
        walls: dict[str, list[float]] = {label: [] for label, _, _ in variants}
        previews: dict[str, int] = {}
        for rnd in range(args.rounds):
            for label, stream, every in variants:
                engine.settings.image_preview_every = every
                seed = 5000 + 100 * rnd + 10 * concurrent
                t0 = time.perf_counter()
                got = await asyncio.gather(*[one(1, seed + k, stream) for k in range(concurrent)])
                walls[label].append(time.perf_counter() - t0)
                seconds[label].append(statistics.median(r.inference_seconds for r, _ in got))
                previews[label] = sum(p for _, p in got)
        base = statistics.median(seconds["no stream"])
        for label, _, _ in variants:
            median = statistics.median(seconds[label])
            rec(
                event="preview_study",
                mode=mode,
                concurrent=concurrent,
                variant=label,
                rounds=args.rounds,
                inference_s_median=round(median, 4),
                inference_s_all=[round(x, 4) for x in seconds[label]],
                wall_s_median=round(statistics.median(walls[label]), 4),
                cost_percent=round(100 * (median / base - 1), 2),
                previews_last_round=previews[label],
            )
    engine.settings.image_preview_every = 5


def png_levels() -> None:
    import subprocess
    import sys

    out = OUT / "png_levels.json"
    subprocess.run(
        [sys.executable, "-m", "bench.png_levels", "--repeats", "2", "--out", str(out)],
        check=False,
        timeout=120,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="sd15")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--modes", default="eager,reduce-overhead")
    parser.add_argument("--buckets", default="1,8")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--scheduler", default="dpmpp_2m")
    parser.add_argument("--models", default="/tmp/models")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--png", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--budget-s", type=float, default=540)
    # ARTICLEFORGE_IMAGE_DEEP_CACHE_INTERVAL for the engine runs (0: off); the UNet then runs
    # eagerly in every mode, only the VAE decoder is compiled.
    parser.add_argument("--deep-cache", type=int, default=0)
    # Only the streaming cost study (see preview_study), `--rounds` rounds of each variant.
    parser.add_argument("--preview-study", action="store_true")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    import logging

    import diffusers

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    rec(
        event="versions",
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    )
    folder = Path(args.models) / args.shape
    rec(
        event="build",
        shape=args.shape,
        **build(
            args.shape,
            folder,
            args.device,
            "float16" if args.device.startswith("cuda") else "float32",
        ),
    )
    if not args.skip_baseline:
        eager_baseline(folder, args)
    if args.png:
        png_levels()
    for mode in args.modes.split(","):
        if time.monotonic() - STARTED > args.budget_s:
            rec(event="skipped", mode=mode, reason="over the time budget")
            continue
        try:
            asyncio.run(engine_run(folder, args.device, mode, args))
        except Exception as exc:  # one mode failing must not lose the others' figures
            rec(event="error", mode=mode, error=repr(exc)[:2000])
    rec(event="done")


if __name__ == "__main__":
    main()
