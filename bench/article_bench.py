"""Whole articles per hour on one GPU host: the product, measured through its public API.

Starts the whole stack as real processes on one GPU:
* Redis (Debian's redis-server; on the GPU machine it travels as a .deb, see
  ../shared/device/README.md);
* the text service on a Llama-2-7B-shaped model and the image service on an SD-1.5-shaped
  pipeline (random weights, bench/text_bench.py and bench/image_models.py), sharing the GPU;
* the gateway and N RQ workers.

Then, through `POST /v1/articles` with an outside client: one article alone (its stage times),
then M articles submitted at once (800 words in 5 sections, 3 images each), each followed to
`succeeded`. Reports p50/p95 latency, articles per hour, GPU utilization (nvidia-smi, sampled),
the time per stage from each article's `provenance.timings`, and the prompt tokens the text
service computed against those it was sent (its prefix cache's counters, read from /metrics
before and after each phase; null where the service has no such counter). Optionally the
image service's own HTTP scenarios (bench/image_bench.py) run first, against the same warm
service.

The baseline, in the same call once the stack is down, is the seed paper's sequential flow:
HF `generate` on the nf4 base + LoRA r=64 of about 1,100 tokens, then 3 images with PNDM at 50
steps, one after another.

    python -m bench.article_bench --out bench/results/article_bench_h200.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.image_models import build as build_image_folder
from bench.text_bench import (
    ROOT,
    build_adapter,
    build_model_folder,
    card_name,
    folder_is_current,
    free_port,
    git_commit,
    load_nf4_lora,
    percentile,
    versions,
)

API_KEY = "bench-key-0123456789"
TOPICS = [
    "solar panels for apartment balconies",
    "the history of the bicycle",
    "urban beekeeping",
    "how heat pumps work",
    "sourdough bread at home",
    "the science of sleep",
    "electric ferries in Norway",
    "repairing old furniture",
    "tide pools and their creatures",
    "learning a second language as an adult",
    "rainwater harvesting",
    "the physics of skateboarding",
    "community gardens",
    "how vaccines are tested",
    "night photography",
    "composting in small spaces",
]


# The text service's prompt counters (summed over their labels). The two prefix-cache ones come
# with the shared-prefix KV cache; a service without it has none, and the report says null.
PROMPT_COUNTERS = {
    "submitted": "articleforge_text_prompt_tokens_total",
    "prefix_cache_hit_tokens": "articleforge_text_prefix_cache_hit_tokens_total",
    "prefix_cache_hit_requests": "articleforge_text_prefix_cache_hits_total",
}
# The goal: prompt tokens computed at least 40 % fewer than submitted.
COMPUTED_SHARE_GOAL = 0.6


class Stack:
    """Processes started together and stopped together; readiness polled for all at once."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[Any] = []

    def start(self, name: str, command: list[str], env: dict[str, str], cwd: Path = ROOT) -> None:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (closed in stop)
        self._files.append(log)
        self.procs[name] = subprocess.Popen(
            command, cwd=cwd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
        )

    def stop_some(self, names: list[str]) -> None:
        """SIGTERM, then SIGKILL after 30 s: the gateway and workers between two phases."""
        for name in names:
            self.procs[name].terminate()
        for name in names:
            proc = self.procs.pop(name)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def wait_ready(self, urls: dict[str, str], timeout: float) -> dict[str, float]:
        import httpx

        t0 = time.perf_counter()
        ready: dict[str, float] = {}
        while len(ready) < len(urls):
            for name, url in urls.items():
                if name in ready:
                    continue
                proc = self.procs[name]
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url, timeout=2).status_code == 200:
                        ready[name] = round(time.perf_counter() - t0, 1)
                        print(f"{name} ready after {ready[name]} s", flush=True)
            if time.perf_counter() - t0 > timeout:
                missing = sorted(set(urls) - set(ready))
                raise TimeoutError(f"not ready after {timeout:.0f} s: {missing}")
            time.sleep(0.5)
        return ready

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for f in self._files:
            f.close()


class GpuSampler:
    """nvidia-smi's utilization.gpu every 250 ms, while a block runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.split()[0]))
            self._stop.wait(0.25)

    @contextlib.contextmanager
    def sampling(self) -> Iterator[GpuSampler]:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"available": False}
        return {
            "mean_percent": round(statistics.mean(self.samples), 1),
            "p50_percent": statistics.median(self.samples),
            "samples": len(self.samples),
        }


def article_body(topic: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "topic": topic,
        "target_words": args.words,
        "sections": args.sections,
        "images": {"count": args.images, "steps": args.steps},
    }


async def run_articles(gateway: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Submits every body at once and follows each to a terminal status."""
    import httpx

    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=gateway, headers=headers, timeout=60) as client:

        async def one(body: dict[str, Any]) -> dict[str, Any]:
            t0 = time.perf_counter()
            reply = await client.post("/v1/articles", json=body)
            if reply.status_code != 202:
                return {"ok": False, "status": reply.status_code, "error": reply.text[:500]}
            article_id = reply.json()["id"]
            while True:
                await asyncio.sleep(0.25)
                status = (await client.get(f"/v1/articles/{article_id}")).json()
                if status["status"] in ("succeeded", "failed", "cancelled"):
                    break
            record: dict[str, Any] = {
                "id": article_id,
                "status": status["status"],
                "ok": status["status"] == "succeeded",
                "latency_s": round(time.perf_counter() - t0, 2),
            }
            article = status.get("article") or {}
            provenance = article.get("provenance") or {}
            record["timings"] = provenance.get("timings", {})
            record["fallbacks"] = len(provenance.get("fallbacks", []))
            record["words"] = sum(
                len(s.get("markdown", "").split()) for s in article.get("sections", [])
            )
            record["images"] = sum(1 for s in article.get("sections", []) if s.get("image")) + (
                1 if article.get("featured_image") else 0
            )
            if status.get("error"):
                record["error"] = status["error"]
            return record

        return list(await asyncio.gather(*(one(b) for b in bodies)))


def summarize(records: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    ok = [r for r in records if r["ok"]]
    latencies = [r["latency_s"] for r in ok]
    stages: dict[str, list[float]] = {}
    for r in ok:
        for stage, seconds in r["timings"].items():
            key = "images" if stage.removeprefix("image_").isdigit() else stage
            stages.setdefault(key, []).append(seconds)
    return {
        "articles": len(records),
        "succeeded": len(ok),
        "wall_s": round(wall, 1),
        "articles_per_hour": round(3600 * len(ok) / wall, 1) if wall else None,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "latency_max_s": max(latencies) if latencies else None,
        "stage_s_median": {k: round(statistics.median(v), 2) for k, v in sorted(stages.items())},
        "failures": [r for r in records if not r["ok"]][:3],
    }


def text_counters(text_url: str) -> dict[str, float | None]:
    """PROMPT_COUNTERS as the text service's /metrics shows them now; None for each one it does
    not show (or all, when /metrics does not answer)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, float | None] = dict.fromkeys(PROMPT_COUNTERS)
    try:
        reply = httpx.get(f"{text_url}/metrics", timeout=10)
        reply.raise_for_status()
    except httpx.HTTPError as exc:
        print(f"text /metrics unreadable: {exc!r}", flush=True)
        return found
    names = {name: key for key, name in PROMPT_COUNTERS.items()}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            key = names.get(sample.name)
            if key is not None:
                found[key] = (found[key] or 0.0) + float(sample.value)
    return found


def prompt_tokens(
    before: dict[str, float | None], after: dict[str, float | None]
) -> dict[str, Any]:
    """What the phase between two reads of the counters cost in prompt tokens: submitted, taken
    from the prefix cache, requests with a hit, and the share computed (1 - hit / submitted)."""
    delta: dict[str, Any] = {}
    for key in PROMPT_COUNTERS:
        a, b = before.get(key), after.get(key)
        delta[key] = None if a is None or b is None else int(round(b - a))
    submitted, hit = delta["submitted"], delta["prefix_cache_hit_tokens"]
    known = submitted is not None and hit is not None
    delta["computed"] = submitted - hit if known else None
    share = round(1 - hit / submitted, 3) if known and submitted else None
    delta["computed_share"] = share
    delta["goal_computed_share_max"] = COMPUTED_SHARE_GOAL
    delta["goal_met"] = None if share is None else share <= COMPUTED_SHARE_GOAL
    return delta


def prompt_table(phases: dict[str, dict[str, Any]]) -> str:
    """The prompt-token figures of each phase as a Markdown table (— where unknown)."""

    def cell(value: Any, percent: bool = False) -> str:
        if value is None:
            return "—"
        return f"{100 * value:.1f} %" if percent else f"{value:,}"

    lines = [
        "| phase | prompt tokens submitted | from the prefix cache | requests with a hit "
        "| computed | share computed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, t in phases.items():
        lines.append(
            f"| {name} | {cell(t['submitted'])} | {cell(t['prefix_cache_hit_tokens'])} "
            f"| {cell(t['prefix_cache_hit_requests'])} | {cell(t['computed'])} "
            f"| {cell(t['computed_share'], percent=True)} |"
        )
    return "\n".join(lines)


def seed_flow_baseline(
    text_folder: Path, adapter: Path, image_folder: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The seed paper's article: nf4 + LoRA `generate` of ~1,100 tokens, then 3 PNDM images."""
    import diffusers
    import torch

    from bench.text_bench import hf_generate

    t0 = time.perf_counter()
    model = load_nf4_lora(text_folder, adapter, args.device)
    load_s = time.perf_counter() - t0
    made = hf_generate(model, list(range(3, 3 + 128)), args.baseline_tokens, 1, args.device)
    text_s = made["runs"][0]["s"]
    del model
    torch.cuda.empty_cache()
    pipe: Any = diffusers.AutoPipelineForText2Image.from_pretrained(
        str(image_folder), dtype=torch.float16
    ).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.PNDMScheduler.from_config(pipe.scheduler.config)
    pipe("warm up", num_inference_steps=2)
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    for k in range(args.images):
        pipe(f"illustration {k}", num_inference_steps=50, guidance_scale=7.5)
    torch.cuda.synchronize()
    images_s = time.perf_counter() - t1
    article_s = text_s + images_s
    return {
        "text": {"load_s": round(load_s, 1), **made},
        "images": {"count": args.images, "scheduler": "pndm", "steps": 50, "s": round(images_s, 2)},
        "article_s": round(article_s, 1),
        "articles_per_hour": round(3600 / article_s, 1),
    }


@dataclass
class Phase:
    """One gateway and its workers, and the article counts sent through them in turn.

    ``source`` is the tree the gateway and workers run from: the checkout, or a copy of an
    earlier commit's ``services/`` (``--before-src``), so that one call measures before and
    after against the same text and image services on the same card. ``pool`` is the size of
    the one worker pool (this code), else ``workers`` separate single workers (a tree from
    before the pools)."""

    label: str
    source: Path
    counts: list[int]
    pool: int | None = None
    workers: int = 1


def _counts(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n.strip()]


def phases(args: argparse.Namespace) -> list[Phase]:
    curve = _counts(args.curve) if args.curve else [1, args.articles]
    out = [Phase(f"pool {args.workers}", ROOT, curve, pool=args.workers)]
    if args.before_src is not None:
        before = _counts(args.before_curve) if args.before_curve else curve
        out.append(
            Phase(
                f"before: {args.before_workers} workers",
                args.before_src.resolve(),
                before,
                workers=args.before_workers,
            )
        )
    if args.extra_pool:
        out.append(
            Phase(f"pool {args.extra_pool}", ROOT, _counts(args.extra_curve), pool=args.extra_pool)
        )
    return out


def run_phase(
    stack: Stack,
    phase: Phase,
    common: dict[str, str],
    urls: dict[str, str],
    cli: list[str],
    args: argparse.Namespace,
    deadline: float,
) -> dict[str, Any]:
    """Starts the phase's gateway and workers, sends each count of articles at once (one after
    another), and stops them again."""
    env = {**common, "PYTHONPATH": f"{phase.source}:{os.environ.get('PYTHONPATH', '')}"}
    port = urls["gateway"].rsplit(":", 1)[1]
    names = ["gateway"]
    stack.start("gateway", [*cli, "serve", "gateway", "--port", port], env, cwd=phase.source)
    if phase.pool is not None:
        stack.start(
            "pool",
            [*cli, "worker", "--name", "bench", "--pool-size", str(phase.pool)],
            env,
            cwd=phase.source,
        )
        names.append("pool")
    else:
        for k in range(phase.workers):
            name = f"worker{k}"
            stack.start(name, [*cli, "worker", "--name", f"bench-w{k}"], env, cwd=phase.source)
            names.append(name)
    result: dict[str, Any] = {"source": str(phase.source), "pool": phase.pool}
    try:
        stack.wait_ready({"gateway": f"{urls['gateway']}/readyz"}, 120)
        for n in phase.counts:
            if time.perf_counter() > deadline:
                result[str(n)] = {"skipped": "time budget spent"}
                continue
            bodies = [article_body(TOPICS[k % len(TOPICS)], args) for k in range(n)]
            counters = text_counters(urls["text"])
            sampler = GpuSampler()
            with sampler.sampling():
                t0 = time.perf_counter()
                records = asyncio.run(run_articles(urls["gateway"], bodies))
                wall = time.perf_counter() - t0
            summary = {**summarize(records, wall), "gpu": sampler.summary()}
            summary["prompt_tokens"] = prompt_tokens(counters, text_counters(urls["text"]))
            summary["record" if n == 1 else "records"] = records[0] if n == 1 else records
            result[str(n)] = summary
            shown = {k: v for k, v in summary.items() if k not in ("records", "record")}
            print(phase.label, n, json.dumps(shown), flush=True)
    except Exception as exc:
        result["error"] = repr(exc)[:2000]
        result["logs"] = {n: stack.tail(n, 1500) for n in names}
    finally:
        stack.stop_some(names)
    return result


class SkipStack(Exception):
    """``--skip-stack``: straight to the baseline."""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--text-shape", default="llama2-7b")
    parser.add_argument("--image-shape", default="sd15")
    parser.add_argument("--models", type=Path, default=Path("/tmp/models"))
    parser.add_argument("--articles", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4, help="the worker pool's size")
    parser.add_argument("--curve", default="", help="article counts, e.g. 1,16,32,64")
    parser.add_argument(
        "--before-src",
        type=Path,
        default=None,
        help="a copy of an earlier commit's tree (its services/) to measure before this one",
    )
    parser.add_argument("--before-workers", type=int, default=4)
    parser.add_argument("--before-curve", default="")
    parser.add_argument(
        "--skip-stack", action="store_true", help="no stack, no articles: --baseline alone"
    )
    parser.add_argument("--extra-pool", type=int, default=0, help="a further pool size")
    parser.add_argument("--extra-curve", default="64")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=1e9,
        help="seconds from the start after which no further phase begins",
    )
    parser.add_argument("--words", type=int, default=800)
    parser.add_argument("--sections", type=int, default=5)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--text-memory", default="0.45", help="TEXT_GPU_MEMORY_UTILIZATION")
    parser.add_argument("--image-env", action="append", default=[], help="KEY=VALUE")
    parser.add_argument("--image-scenarios", action="store_true")
    parser.add_argument("--image-concurrency", default="1,2,4,8,16,32")
    parser.add_argument("--baseline", action="store_true")
    parser.add_argument(
        "--prepare-baseline",
        action="store_true",
        help="build the seed flow's adapter but do not run the flow (a later --baseline call "
        "on the same machine then starts at once)",
    )
    parser.add_argument("--baseline-tokens", type=int, default=1100)
    parser.add_argument("--ready-timeout", type=float, default=900)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--logs", type=Path, default=Path("/tmp/article_bench_logs"))
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "bench": "article_bench",
        "card": card_name(args.device),
        "date": time.strftime("%Y-%m-%d"),
        "versions": versions(),
        "git": git_commit(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")

    text_folder = args.models / args.text_shape
    adapter = args.models / f"{args.text_shape}-adapter"
    image_folder = args.models / args.image_shape
    dtype = "float16" if args.device.startswith("cuda") else "float32"
    wants_adapter = args.baseline or args.prepare_baseline
    needs_adapter = wants_adapter and not (adapter / "adapter_config.json").exists()
    if not folder_is_current(text_folder, args.text_shape) or needs_adapter:
        # The adapter is made on the model in memory: a current folder without one (built by
        # a run without --baseline) is built again, which takes seconds on the GPU.
        lm, info = build_model_folder(text_folder, args.text_shape, args.device)
        if wants_adapter:
            info["adapter"] = build_adapter(lm, adapter)
        del lm
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        report["text_model"] = info
    report["image_model"] = build_image_folder(args.image_shape, image_folder, args.device, dtype)
    report["build_s"] = round(time.perf_counter() - t_start, 1)
    save()

    ports = {name: free_port() for name in ("redis", "text", "image", "gateway")}
    urls = {n: f"http://127.0.0.1:{p}" for n, p in ports.items() if n != "redis"}
    data_dir = args.logs / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    common = {
        "ARTICLEFORGE_LOG_LEVEL": "INFO",
        "ARTICLEFORGE_REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
        "ARTICLEFORGE_TEXT_URL": urls["text"],
        "ARTICLEFORGE_IMAGE_URL": urls["image"],
        "ARTICLEFORGE_API_KEYS": API_KEY,
        "ARTICLEFORGE_DATA_DIR": str(data_dir),
        "ARTICLEFORGE_PUBLIC_URL": urls["gateway"],
        "ARTICLEFORGE_RATE_LIMIT_PER_MINUTE": "0",
    }
    text_env = {
        **common,
        "ARTICLEFORGE_TEXT_MODEL": str(text_folder),
        "ARTICLEFORGE_TEXT_DEVICE": args.device,
        "ARTICLEFORGE_TEXT_GPU_MEMORY_UTILIZATION": args.text_memory,
    }
    image_env = {
        **common,
        "ARTICLEFORGE_IMAGE_MODEL": str(image_folder),
        "ARTICLEFORGE_IMAGE_DEVICE": args.device,
        "ARTICLEFORGE_IMAGE_DEFAULT_STEPS": str(args.steps),
        "ARTICLEFORGE_IMAGE_MAX_QUEUE": "256",
    }
    image_env.update(kv.split("=", 1) for kv in args.image_env)
    report["image_env"] = {k: v for k, v in image_env.items() if "IMAGE_" in k}
    cli = [sys.executable, "-m", "services.cli"]
    stack = Stack(args.logs)
    try:
        if args.skip_stack:
            raise SkipStack
        stack.start(
            "redis",
            ["redis-server", "--port", str(ports["redis"]), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no"],
            {},
        )
        stack.start("text", [*cli, "serve", "text", "--port", str(ports["text"])], text_env)
        stack.start("image", [*cli, "serve", "image", "--port", str(ports["image"])], image_env)
        report["ready_s"] = stack.wait_ready(
            {n: f"{u}/readyz" for n, u in urls.items() if n != "gateway"}, args.ready_timeout
        )
        save()
        report["phases"] = {}
        deadline = t_start + args.time_budget  # no phase or article count starts after it
        for phase in phases(args):
            if time.perf_counter() > deadline:
                report["phases"][phase.label] = {"skipped": "time budget spent"}
                save()
                continue
            report["phases"][phase.label] = run_phase(
                stack, phase, common, urls, cli, args, deadline
            )
            done = report["phases"][phase.label]
            tokens = {
                ("one alone" if n == "1" else f"{n} at once"): done[n]["prompt_tokens"]
                for n in done
                if n.isdigit() and "prompt_tokens" in done[n]
            }
            if tokens:
                print(phase.label, flush=True)
                print(prompt_table(tokens), flush=True)
            save()
        first = next(iter(report["phases"].values()))
        if "1" in first:  # the names the earlier reports (and their readers) use
            report["one_article"] = first["1"]
        largest = max((int(n) for n in first if n.isdigit() and n != "1"), default=None)
        if largest is not None:
            report["concurrent"] = first[str(largest)]
        save()
        if args.image_scenarios:
            from bench.image_bench import scenarios

            image_args = argparse.Namespace(
                guidance=7.5,
                scheduler="dpmpp_2m",
                concurrency=args.image_concurrency,
                rounds=3,
                n8=True,
                stream=True,
            )
            try:
                report["image_scenarios"] = asyncio.run(
                    scenarios(urls["image"], image_args, args.steps)
                )
            except Exception as exc:
                report["image_scenarios_error"] = repr(exc)[:2000]
            save()
    except SkipStack:
        pass
    except Exception as exc:
        report["error"] = repr(exc)[:3000]
        report["logs"] = {n: stack.tail(n, 1500) for n in ("text", "image", "gateway", "worker0")}
        save()
    finally:
        stack.stop()
    if args.baseline:
        try:
            report["seed_flow"] = seed_flow_baseline(text_folder, adapter, image_folder, args)
            print(json.dumps(report["seed_flow"]), flush=True)
        except Exception as exc:
            report["seed_flow_error"] = repr(exc)[:2000]
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    save()


if __name__ == "__main__":
    main()
