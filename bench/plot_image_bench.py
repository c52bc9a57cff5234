"""Images per second against concurrency, over HTTP, beside eager diffusers (PNG for docs).

Takes an image_bench report (its sweep and its same-call eager baseline) and, optionally, an
earlier article_bench report whose image sweep is drawn too, for the before-and-after.

    python -m bench.plot_image_bench bench/results/image_bench_sd15_h200.json \
        docs/img/image_bench_h200.png --before bench/results/article_bench_h200_f0a103a.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


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
    sweep = data["runs"][0]["sweep"]
    xs = [s["concurrency"] for s in sweep]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.plot(xs, [s["images_per_s"] for s in sweep], marker="o", label="image service (now)")
    if args.before is not None:
        before = json.loads(args.before.read_text())["image_scenarios"]["sweep"]
        ax.plot(
            [s["concurrency"] for s in before],
            [s["images_per_s"] for s in before],
            marker="s",
            alpha=0.6,
            label="image service (previous stop, another call)",
        )
    for b in data.get("eager_diffusers", []):
        if b["scheduler"] != "dpmpp_2m":
            continue
        ax.axhline(
            1 / b["s_per_image"],
            linestyle="--",
            color="grey" if b["batch"] == 1 else "black",
            label=f"eager diffusers in process, batch {b['batch']} (same call)",
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("concurrent HTTP requests (1 image each)")
    ax.set_ylabel("images / s")
    ax.set_title(f"SD-1.5 shape, 512x512, DPM++ 2M 25 steps, CFG 7.5 ({data['card']})")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
