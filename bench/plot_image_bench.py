"""Images per second against concurrency, from article_bench's image scenarios (PNG for docs).

    python -m bench.plot_image_bench bench/results/article_bench_h200.json \
        bench/results/image_engine_h200_call1.jsonl docs/img/image_bench_h200.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(report: Path, eager: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(report.read_text())
    sweep = data["image_scenarios"]["sweep"]
    xs = [s["concurrency"] for s in sweep]
    ys = [s["images_per_s"] for s in sweep]
    baselines = [
        json.loads(line)
        for line in eager.read_text().splitlines()
        if '"eager_diffusers"' in line and '"dpmpp_2m"' in line
    ]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.plot(xs, ys, marker="o", label="image service over HTTP (compiled, CUDA graphs)")
    for b in baselines:
        ax.axhline(
            1 / b["s_per_image"],
            linestyle="--",
            color="grey" if b["batch"] == 1 else "black",
            label=f"eager diffusers in process, batch {b['batch']}",
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("concurrent requests (1 image each)")
    ax.set_ylabel("images / s")
    ax.set_title(f"SD-1.5 shape, 512x512, DPM++ 2M 25 steps, CFG 7.5 ({data['card']})")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
