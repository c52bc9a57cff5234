"""FP8 UNet (``ARTICLEFORGE_IMAGE_QUANTIZATION=fp8``) against the model's own dtype: the image
difference on the same seeds, and s/image through the image engine.

Parts (``--parts``, each in its own try/except, so that one failure still leaves the others'
figures):

* ``probe``: what the device says to an FP8 3x3 convolution (PyTorch has none), and whether its
  row-wise FP8 GEMM writes fp16 or only bf16;
* ``quality``: an eager engine (the service's loading path, compile off) draws ``--images``
  images, one request each with its own prompt and seed, in the model's dtype; then its UNet is
  converted to FP8 in place and the same requests are drawn again. Per image and overall: PSNR
  (dB) and the largest pixel error (0-255) of the fp8 images against the fp16 (fp32 on the CPU)
  ones;
* ``engine``: one child process per variant (``--variants``, default none,fp8) loads the
  service's engine with ``--compile`` (reduce-overhead, buckets ``--buckets``). The children
  compile at the same time (each compile is mostly one CPU core's work: two at once take about
  the time of one), then wait for each other and for the quality part, and measure one by one:
  1 request and 8 concurrent requests, ``--rounds`` bursts each (median s/image), then the
  quality part's requests once more, so that the compiled fp8 images are compared with the
  compiled fp16 ones too (and compiled fp16 with eager fp16: what compile alone changes);
* ``unet`` (not in the default): one compiled UNet step (inductor, no CUDA graphs) per variant
  (fp16; fp8; fp8 with the 1x1 convolutions left fp16) at ``--unet-batch``, and its GPU time
  by kind of kernel: whether converting the 1x1 convolutions pays, and where the step's time
  goes with fp8.

JSON lines go to $OUT/image_fp8.jsonl; ``--out`` also writes one summary JSON.

    # the device call (SD-1.5 shape, random weights; about 4 minutes on an H100):
    python -m bench.image_fp8 --shape sd15
    python -m bench.image_fp8 --shape sd15 --parts unet          # optional, about 3 minutes
    # on the CPU: the tiny model (the figures in bench/results/image_fp8_tiny_cpu.json)
    python -m bench.image_fp8 --shape tiny --device cpu --compile false \\
        --out bench/results/image_fp8_tiny_cpu.json
    python -m bench.image_fp8 --shape sd15-small --device cpu --compile false --images 2  # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

OUT = Path(os.environ.get("OUT", "/tmp"))
LOG = OUT / "image_fp8.jsonl"
STARTED = time.monotonic()

PROMPTS = [
    "a lighthouse on a cliff at dusk, watercolor",
    "a bowl of ramen on a wooden table, studio photo",
    "a city street in the rain at night, neon signs",
    "an astronaut riding a horse, oil painting",
    "a mountain lake at sunrise, mist over the water",
    "a robot reading a newspaper in a cafe",
    "a field of sunflowers under a storm, wide angle",
    "a portrait of an old fisherman, charcoal drawing",
]


def rec(**fields: Any) -> dict[str, Any]:
    fields["t"] = round(time.monotonic() - STARTED, 1)
    line = json.dumps(fields)
    print(line, flush=True)
    with LOG.open("a") as f:
        f.write(line + "\n")
    return fields


def error_record(part: str, exc: BaseException, **extra: Any) -> dict[str, Any]:
    tail = traceback.format_exception(exc)[-3:]
    return rec(
        event="error", part=part, error=repr(exc)[:1500], where="".join(tail)[-1500:], **extra
    )


# --- the image difference ----------------------------------------------------------------------


def difference(ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """PSNR (dB, peak 255) and the largest absolute pixel error, per image and overall, of
    uint8 NHWC images ``got`` against ``ref``."""
    d = ref.astype(np.float64) - got.astype(np.float64)
    mse = (d**2).reshape(len(d), -1).mean(axis=1)
    worst = np.abs(d).reshape(len(d), -1).max(axis=1)

    def db(m: float) -> float | None:  # None: identical (infinite PSNR; JSON has no inf)
        return None if m == 0 else round(10 * math.log10(255**2 / m), 2)

    per_image = [db(float(m)) for m in mse]
    finite = [p for p in per_image if p is not None]
    return {
        "images": len(d),
        "psnr_db": per_image,
        "max_error": [int(w) for w in worst],
        "psnr_db_overall": db(float(mse.mean())),
        "psnr_db_min": min(finite) if finite else None,
        "max_error_overall": int(worst.max()),
        "mean_abs_error": round(float(np.abs(d).mean()), 4),
        "share_of_pixels_off_by_more_than_8": round(float((np.abs(d) > 8).mean()), 6),
    }


# --- the engine --------------------------------------------------------------------------------


def model_of(args: argparse.Namespace) -> str:
    if args.shape == "tiny":
        return "tiny"
    from bench.image_models import build

    folder = Path(args.models) / args.shape
    dtype = "float16" if args.device.startswith("cuda") else "float32"
    built = build(args.shape, folder, args.device, dtype)
    if built.get("built"):
        rec(event="build", shape=args.shape, **built)
    return str(folder)


def settings_for(args: argparse.Namespace, model: str, quantization: str, compiled: bool) -> Any:
    from services.image.config import ImageSettings

    buckets = [int(b) for b in args.buckets.split(",")]
    return ImageSettings(
        image_model=model,
        image_device=args.device,
        image_compile=compiled,
        image_compile_mode=args.compile_mode,
        image_batch_buckets=args.buckets,
        image_max_batch_size=max(max(buckets), 8) if compiled else 8,
        image_default_steps=args.steps,
        image_default_guidance_scale=args.guidance,
        image_default_scheduler=args.scheduler,
        image_quantization=quantization,
    )


async def start_engine(settings: Any) -> tuple[Any, float, float]:
    from services.image.engine import ImageEngine
    from services.image.loading import load_image_pipeline

    t0 = time.perf_counter()
    cpu = not settings.image_device.startswith("cuda")
    loaded = await asyncio.to_thread(load_image_pipeline, settings, cpu)
    load_s = time.perf_counter() - t0
    engine = ImageEngine(settings, loaded)
    t0 = time.perf_counter()
    await asyncio.wrap_future(engine.start())
    return engine, load_s, time.perf_counter() - t0


async def request(engine: Any, prompt: str, seed: int) -> Any:
    from services.image.schemas import ImageParams

    job = engine.prepare(ImageParams(prompt=prompt, seed=seed), f"fp8-bench-{seed}")
    return await engine.submit(job).wait()


def decode(png: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


async def draw_set(engine: Any, images: int, seed: int) -> np.ndarray:
    """The quality set: one request at a time (so every image is drawn at batch 1, whatever
    the variant), prompt i with seed ``seed + i``."""
    out = []
    for i in range(images):
        result = await request(engine, PROMPTS[i % len(PROMPTS)], seed + i)
        out.append(decode(result.images[0].png))
    return np.stack(out)


async def scenarios(engine: Any, variant: str, rounds: int) -> list[dict[str, Any]]:
    records = []
    for label, count in (("1 request", 1), ("8 concurrent", 8)):
        walls, inference = [], []
        sizes: set[int] = set()
        for r in range(rounds):
            seeds = [7000 + 100 * r + 10 * count + k for k in range(count)]
            t0 = time.perf_counter()
            results = await asyncio.gather(
                *[request(engine, PROMPTS[k % len(PROMPTS)], s) for k, s in enumerate(seeds)]
            )
            walls.append(time.perf_counter() - t0)
            inference.append(statistics.median(x.inference_seconds for x in results))
            sizes.update(x.batch_size for x in results)
        median = statistics.median(walls)
        records.append(
            rec(
                event="engine",
                variant=variant,
                scenario=label,
                images=count,
                rounds=rounds,
                s_median=round(median, 4),
                s_all=[round(w, 4) for w in walls],
                s_per_image=round(median / count, 4),
                inference_s_median=round(statistics.median(inference), 4),
                batch_sizes=sorted(sizes),
            )
        )
    return records


def wait_for(paths: list[list[Path]], deadline: float) -> bool:
    """Until each group has one existing path, or the deadline; True if all came."""
    while time.monotonic() < deadline:
        if all(any(p.exists() for p in group) for group in paths):
            return True
        time.sleep(0.5)
    return False


async def child(args: argparse.Namespace) -> None:
    """One engine variant, in its own process: warm up, wait for its turn, measure."""
    variant, work = args.child, Path(args.work)
    deadline = STARTED + args.budget_s
    try:
        model = model_of(args)
        settings = settings_for(args, model, variant, args.compile == "true")
        engine, load_s, warmup_s = await start_engine(settings)
    except Exception as exc:
        error_record("engine", exc, variant=variant)
        (work / f"failed-{variant}").touch()
        return
    status = engine.loaded.acceleration.status()
    rec(
        event="engine_ready",
        variant=variant,
        load_s=round(load_s, 1),
        warmup_s=round(warmup_s, 1),
        acceleration=status,
    )
    (work / f"ready-{variant}").touch()
    variants = args.variants.split(",")
    before = variants[: variants.index(variant)]
    groups = [[work / f"ready-{v}", work / f"failed-{v}"] for v in variants]
    groups += [[work / f"done-{v}.json", work / f"failed-{v}"] for v in before]
    groups.append([work / "quality-done"])
    if not wait_for(groups, deadline - 20):
        rec(event="note", variant=variant, note="measured before every sibling was ready")
    result: dict[str, Any] = {
        "variant": variant,
        "acceleration": status,
        "load_s": round(load_s, 1),
        "warmup_s": round(warmup_s, 1),
    }
    try:
        result["scenarios"] = await scenarios(engine, variant, args.rounds)
        if args.images:
            pixels = await draw_set(engine, args.images, args.seed)
            np.save(work / f"pixels-{variant}.npy", pixels)
    except Exception as exc:
        result["error"] = error_record("engine", exc, variant=variant)["error"]
    finally:
        engine.shutdown()
        (work / f"done-{variant}.json").write_text(json.dumps(result))


def start_children(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    children = {}
    for variant in args.variants.split(","):
        log = (work / f"child-{variant}.log").open("w")
        command = [sys.executable, "-m", "bench.image_fp8", "--child", variant, "--work", str(work)]
        command += [
            f"--{k.replace('_', '-')}={v}"
            for k, v in sorted(vars(args).items())
            if k not in ("child", "work", "out", "parts", "t0")
        ]
        command.append(f"--t0={time.time() - (time.monotonic() - STARTED)}")  # one clock for all
        children[variant] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    return children


def join_children(children: dict[str, Any], work: Path, deadline: float) -> dict[str, Any]:
    """Waits for the children; one that died without a word is marked failed, so that its
    siblings stop waiting for it; at the deadline the rest are killed (our own, by handle)."""
    while time.monotonic() < deadline and any(p.poll() is None for p in children.values()):
        for variant, proc in children.items():
            said = (work / f"done-{variant}.json").exists() or (work / f"failed-{variant}").exists()
            if proc.poll() is not None and not said:
                (work / f"failed-{variant}").touch()
                rec(event="error", part="engine", variant=variant, error=f"exit {proc.returncode}")
        time.sleep(1)
    results: dict[str, Any] = {}
    for variant, proc in children.items():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            rec(event="error", part="engine", variant=variant, error="over the time budget")
        done = work / f"done-{variant}.json"
        missing = {"error": f"no result; see image_fp8_{variant}.log"}
        results[variant] = json.loads(done.read_text()) if done.exists() else missing
        log = work / f"child-{variant}.log"
        if log.exists():  # the warm-up's lines (compile times) are worth keeping
            lines = [
                ln
                for ln in log.read_text().splitlines()
                if (" services." in ln and " image(s) " not in ln) or "Error" in ln
            ]
            (OUT / f"image_fp8_{variant}.log").write_text("\n".join(lines[-200:]) + "\n")
    return results


# --- the parts ---------------------------------------------------------------------------------


def probe(args: argparse.Namespace) -> dict[str, Any]:
    import torch.nn.functional as F

    from services.common.fp8 import FP8
    from services.image.fp8 import gemm_dtype_for

    device = torch.device(args.device)
    x = torch.randn(1, 32, 16, 16, device=device).to(FP8)
    w = torch.randn(32, 32, 3, 3, device=device).to(FP8)
    try:
        F.conv2d(x, w, padding=1)
        conv = "ran"
    except Exception as exc:  # the expected answer: no FP8 convolution in torch
        conv = f"{type(exc).__name__}: {str(exc)[:300]}"
    model_dtype = torch.float16 if device.type == "cuda" else torch.float32
    gemm = gemm_dtype_for(device, model_dtype)
    return rec(
        event="probe",
        fp8_conv2d=conv,
        rowwise_gemm_writes=str(gemm)[6:],
        model_dtype=str(model_dtype)[6:],
    )


async def quality(args: argparse.Namespace, model: str, work: Path) -> dict[str, Any]:
    from services.image.fp8 import convert_unet

    engine, load_s, _ = await start_engine(settings_for(args, model, "none", compiled=False))
    try:
        t0 = time.perf_counter()
        ref = await draw_set(engine, args.images, args.seed)
        ref_s = time.perf_counter() - t0
        conversion = convert_unet(engine.loaded.pipe.unet)  # in place, as the loader would
        t0 = time.perf_counter()
        got = await draw_set(engine, args.images, args.seed)
        fp8_s = time.perf_counter() - t0
    finally:
        engine.shutdown()
    np.save(work / "pixels-eager-none.npy", ref)
    np.save(work / "pixels-eager-fp8.npy", got)
    return rec(
        event="quality",
        compared="eager fp8 against eager " + str(engine.loaded.dtype)[6:],
        shape=args.shape,
        size=list(ref.shape[1:3]),
        steps=args.steps,
        guidance=args.guidance,
        scheduler=args.scheduler,
        seeds=[args.seed + i for i in range(args.images)],
        fp8_layers=conversion.layers,
        gemm_out=conversion.gemm_dtype,
        load_s=round(load_s, 1),
        draw_s={"reference": round(ref_s, 2), "fp8": round(fp8_s, 2)},
        **difference(ref, got),
    )


def compiled_differences(work: Path, variants: list[str], compiled: bool) -> list[dict[str, Any]]:
    """The engines' images (compiled) against each other and against the eager ones."""
    files = {"eager none": work / "pixels-eager-none.npy"}
    files.update({f"engine {v}": work / f"pixels-{v}.npy" for v in variants})
    engine = "compiled engine" if compiled else "eager engine"
    pairs = [("engine none", "eager none", f"what the {engine} alone changes")]
    for v in variants:
        if v != "none":
            pairs.append(
                (f"engine {v}", "engine none", f"the service ({engine}): {v} against none")
            )
            pairs.append((f"engine {v}", "eager none", f"{engine} {v} against eager none"))
    out = []
    for got, ref, meaning in pairs:
        if files.get(got, Path("-")).exists() and files.get(ref, Path("-")).exists():
            out.append(
                rec(
                    event="quality",
                    compared=f"{got} against {ref}",
                    meaning=meaning,
                    **difference(np.load(files[ref]), np.load(files[got])),
                )
            )
    return out


def unet_steps(args: argparse.Namespace, model: str) -> list[dict[str, Any]]:
    """Compiled UNet steps (no CUDA graphs, so every kernel shows in the profile)."""
    import torch._inductor.config as inductor
    from diffusers import UNet2DConditionModel

    from bench.unet_variants import gpu_ms_by_kind, inputs, timed
    from services.image.fp8 import convert_unet

    inductor.conv_1x1_as_mm = True  # as the service sets it
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    records = []
    for variant in ("fp16", "fp8", "fp8-linear"):
        if time.monotonic() - STARTED > args.budget_s - 60:
            records.append(rec(event="skipped", part="unet", variant=variant, reason="budget"))
            continue
        try:
            unet: Any = UNet2DConditionModel.from_pretrained(
                Path(model) / "unet", torch_dtype=dtype
            )
            unet.to(args.device).eval()
            unet.fuse_qkv_projections()
            unet.to(memory_format=torch.channels_last)
            layers = None
            if variant != "fp16":
                layers = convert_unet(unet, convolutions=variant == "fp8").layers
            compiled = torch.compile(unet, fullgraph=True, dynamic=False)
            kw = inputs(unet, args.unet_batch, args.device, dtype)

            def step(model: Any = compiled, kw: dict[str, Any] = kw) -> Any:
                with torch.inference_mode():
                    return model(**kw).sample

            t0 = time.perf_counter()
            step()
            compile_s = time.perf_counter() - t0
            ms = timed(step, args.device, 10) * 1000
            by_kind: dict[str, float] = {}
            if args.device.startswith("cuda"):
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    step()
                    torch.cuda.synchronize()
                by_kind, _ = gpu_ms_by_kind(prof)
                table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30)
                (OUT / f"image_fp8_unet_profile_{variant}.txt").write_text(table)
            records.append(
                rec(
                    event="unet_step",
                    variant=variant,
                    batch=args.unet_batch,
                    ms=round(ms, 2),
                    compile_s=round(compile_s, 1),
                    fp8_layers=layers,
                    gpu_ms_by_kind={
                        k: round(v, 2) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])
                    },
                )
            )
            del unet, compiled
            torch._dynamo.reset()
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
        except Exception as exc:
            records.append(error_record("unet", exc, variant=variant))
    return records


def main_parent(args: argparse.Namespace) -> dict[str, Any]:
    import diffusers

    parts = set(args.parts.split(","))
    deadline = STARTED + args.budget_s
    summary: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "out"}}
    summary["versions"] = rec(
        event="versions",
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        commit=_commit(),
    )
    work = Path(tempfile.mkdtemp(prefix="image_fp8_"))
    if "probe" in parts:
        try:
            summary["probe"] = probe(args)
        except Exception as exc:
            summary["probe"] = error_record("probe", exc)
    try:
        model = model_of(args)  # built once here, before the children load it
    except Exception as exc:
        summary["error"] = error_record("build", exc)
        return summary
    children = start_children(args, work) if "engine" in parts else {}
    if "quality" in parts:
        try:
            summary["quality"] = asyncio.run(quality(args, model, work))
        except Exception as exc:
            summary["quality"] = error_record("quality", exc)
    (work / "quality-done").touch()  # the children may use the device now
    if children:
        summary["engine"] = join_children(children, work, deadline)
        summary["compiled_quality"] = compiled_differences(
            work, args.variants.split(","), args.compile == "true"
        )
    if "unet" in parts:
        summary["unet"] = unet_steps(args, model)
    rec(event="done")
    return summary


def _commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="sd15", help="a bench/image_models shape, or tiny")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--parts", default="probe,quality,engine", help="and/or unet")
    parser.add_argument("--variants", default="none,fp8", help="engine variants, none first")
    parser.add_argument("--compile", default="true", choices=["true", "false"])
    parser.add_argument("--compile-mode", default="reduce-overhead")
    parser.add_argument("--buckets", default="1,8")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--scheduler", default="dpmpp_2m")
    parser.add_argument("--images", type=int, default=8, help="the quality set's size")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--unet-batch", type=int, default=16)
    parser.add_argument("--models", default="/tmp/models")
    parser.add_argument("--budget-s", type=float, default=540)
    parser.add_argument("--out", default=None, help="also write a summary JSON here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global STARTED
    if args.t0 is not None:  # a child: its figures' times count from the parent's start
        STARTED = time.monotonic() - (time.time() - args.t0)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    OUT.mkdir(parents=True, exist_ok=True)
    if args.child:
        asyncio.run(child(args))
        return
    summary = main_parent(args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
