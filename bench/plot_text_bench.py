"""Plots bench/text_bench.py results: aggregate tokens/s and p50 TTFT against concurrency.

One line per result file (and per server: bf16 sweep, nf4 + LoRA levels), log-2 x axis;
HF `generate` at batch 1 from the same call is drawn as a marker at concurrency 1. With
``--table`` it also prints each file's Markdown table, as text_bench.py does at the end.

    python bench/plot_text_bench.py bench/results/text_bench_h200.json \\
        --out docs/img/text_bench_h200.png
    python bench/plot_text_bench.py before.json after.json --labels before,after --out cmp.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SERIES = (("sweep", "bf16"), ("nf4_concurrent", "nf4 + LoRA r=64"))


def load(path: Path) -> dict[str, Any]:
    results = json.loads(path.read_text())
    if "scenarios" not in results:
        raise SystemExit(f"{path} is not a bench/text_bench.py result (no 'scenarios')")
    return dict(results)


def plot(runs: list[tuple[str, dict[str, Any]]], out: Path, title: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tok, ax_ttft) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    cards = sorted({results["card"] for _, results in runs})
    models = sorted({results["settings"]["model"] for _, results in runs})
    ticks: set[int] = set()
    for label, results in runs:
        scenarios = results["scenarios"]
        for key, name in SERIES:
            levels = [lv for lv in scenarios.get(key, []) if lv.get("aggregate_tok_s") is not None]
            if not levels:
                continue
            x = [lv["concurrency"] for lv in levels]
            ticks.update(x)
            series = f"{label}: {name}" if label else name
            (line,) = ax_tok.plot(x, [lv["aggregate_tok_s"] for lv in levels], "o-", label=series)
            ttft = [(lv["concurrency"], lv["ttft_p50_s"]) for lv in levels if lv["ttft_p50_s"]]
            if ttft:
                ax_ttft.plot(
                    [c for c, _ in ttft],
                    [t * 1000 for _, t in ttft],
                    "o-",
                    color=line.get_color(),
                    label=series,
                )
        for key, name, marker in (
            ("baseline_bf16", "HF generate bf16, batch 1", "x"),
            ("baseline_nf4_lora", "HF generate nf4 + LoRA, batch 1", "+"),
        ):
            tok_s = scenarios.get(key, {}).get("tok_s")
            if tok_s:
                series = f"{label}: {name}" if label else name
                ax_tok.plot([1], [tok_s], marker, markersize=10, mew=2, label=series)
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:,.0f}")
    for ax in (ax_tok, ax_ttft):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(sorted(ticks or {1})))
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("concurrent clients")
        ax.grid(True, which="both", alpha=0.3)
    ax_tok.set_ylabel("aggregate tokens/s (from usage)")
    ax_tok.set_title("throughput")
    ax_ttft.set_ylabel("p50 time to first token, ms (server timings)")
    ax_ttft.set_title("time to first token")
    ax_tok.legend(fontsize=8)
    ax_ttft.legend(fontsize=8)
    shapes = ", ".join("Llama-2-7B shape" if m == "llama2-7b" else f"{m} model" for m in models)
    fig.suptitle(title or f"articleforge serve text, {shapes}, {', '.join(cards)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path, nargs="+", help="text_bench.py JSON files")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--labels", default=None, help="comma-separated, one per file")
    parser.add_argument("--title", default=None)
    parser.add_argument("--table", action="store_true", help="also print each Markdown table")
    args = parser.parse_args(argv)
    labels = args.labels.split(",") if args.labels else None
    if labels and len(labels) != len(args.results):
        parser.error(f"--labels names {len(labels)} runs for {len(args.results)} files")
    if labels is None:
        labels = [p.stem if len(args.results) > 1 else "" for p in args.results]
    runs = [(label, load(path)) for label, path in zip(labels, args.results, strict=True)]
    plot(runs, args.out, args.title)
    print(f"wrote {args.out}")
    if args.table:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from text_bench import print_table

        for label, results in runs:
            if label:
                print(f"\n{label}")
            print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
