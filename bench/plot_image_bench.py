"""Images per second against concurrency, over HTTP, beside eager diffusers (PNG for docs).

Takes an image_bench report: one line per step count the service ran, and a dashed line for
each of its same-call eager diffusers batches at that step count and scheduler. Optionally an
earlier article_bench report, whose image sweep is drawn too, for the before-and-after.

    python -m bench.plot_image_bench bench/results/image_bench_sd15_h200.json \
        docs/img/image_bench_h200.png --before bench/results/article_bench_h200_f0a103a.json
    python -m bench.plot_image_bench bench/results/image_bench_sd-turbo_h200_d220cf7.json \
        docs/img/image_bench_sd-turbo_h200.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.image_models import native_side
from services.image.schedulers import SCHEDULERS

NAMES = {"sd15": "SD-1.5", "sdxl": "SDXL", "sd-turbo": "SD-Turbo"}
# Eager diffusers' batches, smallest first: dotted for one image, then dashed.
LINESTYLES = [":", "--", "-.", (0, (5, 1))]


def plural(steps: int) -> str:
    return f"{steps} step" if steps == 1 else f"{steps} steps"


def title(data: dict[str, Any]) -> str:
    args = data["args"]
    shape = data["shape"]
    base = shape.removesuffix("-small")
    name = NAMES.get(base, base) + (" (small)" if shape != base else "")
    side = native_side(shape)
    counts = [run["steps"] for run in data["runs"]]
    steps = plural(counts[0]) if len(counts) == 1 else "/".join(map(str, counts)) + " steps"
    guidance = float(args["guidance"])
    cfg = f"CFG {guidance:g}" if guidance > 1 else "no CFG"
    sampler = SCHEDULERS[args["scheduler"]].sampler
    return f"{name} shape, {side}x{side}, {sampler} {steps}, {cfg} ({data['card']})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("report", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--before", type=Path, default=None)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(args.report.read_text())
    several = len(data["runs"]) > 1
    fig, ax = plt.subplots(figsize=(9.6 if several else 6.4, 4.0), dpi=120)
    xs: set[int] = set()
    for run in data["runs"]:
        sweep = run["sweep"]
        xs.update(s["concurrency"] for s in sweep)
        line = ax.plot(
            [s["concurrency"] for s in sweep],
            [s["images_per_s"] for s in sweep],
            marker="o",
            label=f"image service, {plural(run['steps'])}" if several else "image service (now)",
        )
        color = line[0].get_color()
        eager = [
            b
            for b in data.get("eager_diffusers", [])
            if b["scheduler"] == data["args"]["scheduler"] and b["steps"] == run["steps"]
        ]
        for i, b in enumerate(eager):
            steps = f", {plural(b['steps'])}" if several else ""
            ax.axhline(
                1 / b["s_per_image"],
                linestyle=LINESTYLES[i % len(LINESTYLES)],
                color=color if several else ("grey" if b["batch"] == 1 else "black"),
                alpha=0.7,
                label=f"eager diffusers in process, batch {b['batch']}{steps} (same call)",
            )
    if args.before is not None:
        before = json.loads(args.before.read_text())["image_scenarios"]["sweep"]
        xs.update(s["concurrency"] for s in before)
        ax.plot(
            [s["concurrency"] for s in before],
            [s["images_per_s"] for s in before],
            marker="s",
            alpha=0.6,
            label="image service (previous stop, another call)",
        )
    ticks = sorted(xs)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(x) for x in ticks])
    ax.set_xlabel("concurrent HTTP requests (1 image each)")
    ax.set_ylabel("images / s")
    ax.set_title(title(data))
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    if several:  # one more line per step count: the legend goes beside the plot
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    else:
        ax.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
