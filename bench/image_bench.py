"""The image service through HTTP, beside eager diffusers in the same call.

Starts `articleforge serve image` on a random-weight pipeline of a served shape (bench/
image_models.py), waits for /readyz (load + compile warm-up, timed), then fires bursts of
concurrent POST /v1/images requests from an outside client and times them end to end, PNG and
JSON included. After the service stops, eager diffusers runs the same work in process: the
baseline. Writes one JSON report.

    python -m bench.image_bench --shape sd15 --out bench/results/image_bench_h200.json
    python -m bench.image_bench --shape sd-turbo --steps 1,4 --guidance 0 --scheduler euler
    python -m bench.image_bench --shape sd15-small --device cpu --concurrency 1,2  # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

from bench.image_models import build
from bench.text_bench import Server, card_name, git_commit, versions

PROMPT = "a lighthouse on a cliff at dawn, oil painting, warm light, detailed"


async def post_image(client: Any, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """One request; with `stream`, counts the SSE step events and previews."""
    t0 = time.perf_counter()
    record: dict[str, Any] = {"ok": False}
    if body.get("stream"):
        steps = previews = 0
        async with client.stream("POST", f"{url}/v1/images", json=body) as reply:
            record["status"] = reply.status_code
            event = ""
            async for line in reply.aiter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "progress":
                    steps += 1
                    previews += '"preview' in line
                elif line.startswith("data:") and event == "result":
                    record["ok"] = reply.status_code == 200
                    timings = json.loads(line[5:])["timings"]
                    record["inference_s"] = timings["inference_seconds"]
                    record["batch_size"] = timings["batch_size"]
        record.update(steps=steps, previews=previews)
    else:
        reply = await client.post(f"{url}/v1/images", json=body)
        record["status"] = reply.status_code
        if reply.status_code == 200:
            data = reply.json()
            record.update(
                ok=True,
                images=len(data["images"]),
                png_bytes=sum(len(i.get("b64_png") or "") * 3 // 4 for i in data["images"]),
                batch_size=data["timings"]["batch_size"],
                inference_s=data["timings"]["inference_seconds"],
                total_s=data["timings"]["total_seconds"],
            )
        else:
            record["error"] = reply.text[:300]
    record["latency_s"] = time.perf_counter() - t0
    return record


async def burst(url: str, concurrency: int, n: int, body: dict[str, Any], rounds: int) -> dict:
    """``rounds`` bursts of ``concurrency`` simultaneous requests of n images each."""
    import httpx

    walls, latencies, records = [], [], []
    seed = 1000 * concurrency
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=256)) as client:
        for _ in range(rounds):
            bodies = []
            for _ in range(concurrency):
                bodies.append({**body, "n": n, "seed": seed})
                seed += n
            t0 = time.perf_counter()
            got = await asyncio.gather(*(post_image(client, url, b) for b in bodies))
            walls.append(time.perf_counter() - t0)
            latencies += [r["latency_s"] for r in got]
            records += got
    images = concurrency * n
    wall = statistics.median(walls)
    failed = [r for r in records if not r["ok"]]
    return {
        "concurrency": concurrency,
        "n": n,
        "images_per_burst": images,
        "rounds": rounds,
        "wall_s_median": round(wall, 3),
        "wall_s_all": [round(w, 3) for w in walls],
        "s_per_image": round(wall / images, 4),
        "images_per_s": round(images / wall, 2),
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_max_s": round(max(latencies), 3),
        "batch_sizes": sorted({r.get("batch_size") for r in records if r.get("batch_size")}),
        # requests per batch size they were drawn in: how the batcher cut the bursts
        "requests_by_batch_size": {
            str(size): sum(r.get("batch_size") == size for r in records)
            for size in sorted({r.get("batch_size") for r in records if r.get("batch_size")})
        },
        "inference_s_median": round(
            statistics.median([r["inference_s"] for r in records if r.get("inference_s")] or [0]),
            3,
        ),
        "png_kib_mean": round(
            statistics.mean([r.get("png_bytes", 0) / max(1, r.get("images", 1)) for r in records])
            / 1024,
            1,
        ),
        "previews": sum(r.get("previews", 0) for r in records),
        "failed": len(failed),
        "errors": [r.get("error") for r in failed][:3],
    }


WARMUP_DONE = re.compile(
    r"warm-up done in ([\d.]+)s; compiled graphs: (\d+) loaded from the compile cache, "
    r"(\d+) compiled anew"
)


def warmup_summary(log: str) -> dict[str, Any] | None:
    """The image service's own count of its warm-up, from its log: seconds, graphs loaded from
    the compile cache and graphs compiled. None when it compiled nothing (compile off)."""
    found = WARMUP_DONE.findall(log)
    if not found:
        return None
    seconds, loaded, compiled = found[-1]
    return {"s": float(seconds), "graphs_loaded": int(loaded), "graphs_compiled": int(compiled)}


def service_env(folder: Path, args: argparse.Namespace, steps: int) -> dict[str, str]:
    env = {
        "ARTICLEFORGE_IMAGE_MODEL": str(folder),
        "ARTICLEFORGE_IMAGE_DEVICE": args.device,
        "ARTICLEFORGE_IMAGE_DEFAULT_STEPS": str(steps),
        "ARTICLEFORGE_IMAGE_DEFAULT_GUIDANCE_SCALE": str(args.guidance),
        "ARTICLEFORGE_IMAGE_DEFAULT_SCHEDULER": args.scheduler,
        "ARTICLEFORGE_IMAGE_MAX_BATCH_SIZE": str(args.max_batch),
        "ARTICLEFORGE_IMAGE_MAX_QUEUE": "256",
        "ARTICLEFORGE_LOG_LEVEL": "INFO",
    }
    if args.wait_ms is not None:
        env["ARTICLEFORGE_IMAGE_BATCH_WAIT_MS"] = str(args.wait_ms)
    if args.quiet_ms is not None:
        env["ARTICLEFORGE_IMAGE_BATCH_QUIET_MS"] = str(args.quiet_ms)
    if args.buckets:
        env["ARTICLEFORGE_IMAGE_BATCH_BUCKETS"] = args.buckets
    if args.compile is not None:
        env["ARTICLEFORGE_IMAGE_COMPILE"] = args.compile
    return env


async def scenarios(url: str, args: argparse.Namespace, steps: int) -> dict[str, Any]:
    body = {
        "prompt": PROMPT,
        "negative_prompt": "blurry, low quality",
        "steps": steps,
        "guidance_scale": args.guidance,
        "scheduler": args.scheduler,
    }
    out: dict[str, Any] = {"sweep": []}
    for c in [int(x) for x in args.concurrency.split(",")]:
        out["sweep"].append(await burst(url, c, 1, body, args.rounds))
        print(json.dumps(out["sweep"][-1]), flush=True)
    if args.n8:
        out["n=8"] = await burst(url, 1, 8, body, args.rounds)
        print(json.dumps(out["n=8"]), flush=True)
    if args.stream:
        out["stream"] = await stream_cost(url, body, rounds=10)
        print(json.dumps(out["stream"]), flush=True)
    return out


async def stream_cost(url: str, body: dict[str, Any], rounds: int) -> dict[str, Any]:
    """One request with and without `stream: true`, in turn, ``rounds`` times each: the end to
    end latency and the pipeline's own time (``timings.inference_seconds``) of both."""
    runs: dict[str, list[dict[str, Any]]] = {"stream": [], "no stream": []}
    for rnd in range(rounds):
        for label, stream in (("stream", True), ("no stream", False)):
            got = await burst(url, 1, 1, {**body, "stream": stream, "seed": 77 + rnd}, 1)
            runs[label].append(got)
    out: dict[str, Any] = {"rounds": rounds}
    for label, got in runs.items():
        out[label] = {
            "latency_s_median": round(statistics.median(g["wall_s_median"] for g in got), 4),
            "inference_s_median": round(statistics.median(g["inference_s_median"] for g in got), 4),
            "previews": sum(g["previews"] for g in got),
            "failed": sum(g["failed"] for g in got),
        }
    for key in ("latency_s_median", "inference_s_median"):
        base = out["no stream"][key]
        out[f"cost_percent_{key.removesuffix('_median')}"] = (
            round(100 * (out["stream"][key] / base - 1), 2) if base else None
        )
    return out


def eager_diffusers(
    folder: Path, args: argparse.Namespace, steps: list[int]
) -> list[dict[str, Any]]:
    """The baseline: AutoPipelineForText2Image as a user's script runs it (PIL output), at
    each step count, for 1 image and a batch of 8 (``--baseline-batches``)."""
    import diffusers
    import torch

    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    pipe: Any = diffusers.AutoPipelineForText2Image.from_pretrained(str(folder), dtype=dtype)
    pipe.to(args.device)
    pipe.set_progress_bar_config(disable=True)
    config = pipe.scheduler.config
    from services.image.schedulers import make_scheduler

    results = []
    batches = [int(b) for b in getattr(args, "baseline_batches", "1,8").split(",")]
    runs = [(args.scheduler, s, b) for s in steps for b in batches]
    if args.pndm:
        runs.append(("pndm", 50, 1))
    for scheduler, n_steps, batch in runs:
        pipe.scheduler = make_scheduler(scheduler, config)
        kw = {
            "prompt": [PROMPT] * batch,
            "num_inference_steps": n_steps,
            "guidance_scale": args.guidance,
            "output_type": "pil",
        }
        if args.guidance > 1:
            kw["negative_prompt"] = ["blurry, low quality"] * batch
        pipe(**{**kw, "num_inference_steps": 2})
        times = []
        for _ in range(2):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            pipe(**kw)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        results.append(
            {
                "scheduler": scheduler,
                "steps": n_steps,
                "batch": batch,
                "s": round(min(times), 3),
                "s_per_image": round(min(times) / batch, 4),
            }
        )
        print(json.dumps(results[-1]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="sd15")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default="/tmp/models")
    parser.add_argument("--steps", default="25", help="comma-separated: one service run each")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--scheduler", default="dpmpp_2m")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--wait-ms", type=float, default=None, help="unset: the default")
    parser.add_argument("--quiet-ms", type=float, default=None, help="unset: the default")
    parser.add_argument("--buckets", default=None)
    parser.add_argument("--compile", default=None, help="true/false; unset: the default")
    parser.add_argument("--n8", action="store_true")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--pndm", action="store_true")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="then start the service again on the same compile cache and time its start-up",
    )
    parser.add_argument("--baseline-batches", default="1,8", help="eager diffusers' batch sizes")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--logs", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    if args.n8 and args.max_batch < 8:
        parser.error(f"--n8 needs --max-batch 8 or more (the service refuses n > {args.max_batch})")
    args.logs.mkdir(parents=True, exist_ok=True)

    folder = Path(args.models) / args.shape
    dtype = "float16" if args.device.startswith("cuda") else "float32"
    report: dict[str, Any] = {
        "bench": "image_bench",
        "shape": args.shape,
        "card": card_name(args.device),
        "date": time.strftime("%Y-%m-%d"),
        "versions": versions(),
        "git": git_commit(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "build": build(args.shape, folder, args.device, dtype),
        "runs": [],
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")

    step_counts = [int(s) for s in args.steps.split(",")]

    def image_server(suffix: str = "") -> Server:
        # One service for every step count: the compiled shapes do not depend on it, and the
        # batcher's step times are per step. Its default (what the warm-up times) is the last.
        return Server(
            f"image-{args.shape}{suffix}",
            service_env(folder, args, step_counts[-1]),
            args.logs / f"image_{args.shape}{suffix}.log",
            ready_timeout=900,
            service="image",
        )

    server = image_server()
    try:
        with server.running():
            report["ready_s"] = round(server.ready_s or 0, 1)
            print(f"image service ready in {report['ready_s']} s", flush=True)
            save()
            for steps in step_counts:
                run: dict[str, Any] = {"steps": steps}
                report["runs"].append(run)
                run.update(asyncio.run(scenarios(server.url, args, steps)))
                save()
            report["metrics"] = server.metrics()[:60]
    except Exception as exc:  # keep what was measured
        report["error"] = repr(exc)[:3000]
    report["warmup"] = warmup_summary(server.log_tail(chars=1 << 24))
    save()
    if args.restart:
        # The same settings, so the same compile cache (ARTICLEFORGE_IMAGE_COMPILE_CACHE_DIR,
        # or its default under ARTICLEFORGE_CACHE_DIR): a restart that should load every graph.
        again = image_server("_restart")
        try:
            with again.running():
                restart: dict[str, Any] = {"ready_s": round(again.ready_s or 0, 1)}
                print(f"image service ready again in {restart['ready_s']} s", flush=True)
                one = argparse.Namespace(
                    **{**vars(args), "concurrency": "1", "n8": False, "stream": False}
                )
                restart["one_request"] = asyncio.run(scenarios(again.url, one, step_counts[-1]))
        except Exception as exc:
            restart = {"error": repr(exc)[:3000]}
        restart["warmup"] = warmup_summary(again.log_tail(chars=1 << 24))
        report["restart"] = restart
        save()
    if not args.no_baseline:
        try:
            report["eager_diffusers"] = eager_diffusers(folder, args, step_counts)
        except Exception as exc:
            report["eager_diffusers_error"] = repr(exc)[:2000]
    save()


if __name__ == "__main__":
    main()
