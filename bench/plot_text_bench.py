"""Plots bench/text_bench.py results: aggregate tokens/s and p50 TTFT against concurrency.

One line per result file (and per server: bf16 sweep, fp8 and nf4 + LoRA levels), log-2 x
axis; HF `generate` at batch 1 from the same call is drawn as a marker at concurrency 1. Where
a file has them, a second row of bars compares servers of the same call: fp8 against bf16 (1
stream and each common level), and p50 TTFT of prefix-cache hits against misses and of a burst
right after /readyz against the same burst warm. With ``--table`` it also prints each file's
Markdown table, as text_bench.py does at the end.

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

SERIES = (("sweep", "bf16"), ("fp8_concurrent", "fp8"), ("nf4_concurrent", "nf4 + LoRA r=64"))


def load(path: Path) -> dict[str, Any]:
    results = json.loads(path.read_text())
    if "scenarios" not in results:
        raise SystemExit(f"{path} is not a bench/text_bench.py result (no 'scenarios')")
    return dict(results)


def plot(runs: list[tuple[str, dict[str, Any]]], out: Path, title: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compared = [(label, results) for label, results in runs if comparisons(results)]
    if compared:
        fig, axes = plt.subplots(2, 2, figsize=(11, 8.4), constrained_layout=True)
        (ax_tok, ax_ttft), (ax_fp8, ax_first) = axes
        bars(ax_fp8, compared, "fp8")
        ax_fp8.set_ylabel("tokens/s (from usage)")
        ax_fp8.set_title("fp8 against bf16, same call")
        bars(ax_first, compared, "ttft")
        ax_first.set_ylabel("p50 time to first token, ms (server timings)")
        ax_first.set_title("prefix cache and first requests")
    else:
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
        ys = [y for line in ax.get_lines() for y in line.get_ydata() if y > 0]
        if ys and max(ys) > 10 * min(ys):  # a narrow range on a log axis shows no labels
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


def comparisons(results: dict[str, Any]) -> dict[str, list[tuple[str, float | None]]]:
    """Bar groups of one file: ``fp8`` (tok/s of bf16 and fp8 side by side) and ``ttft``
    (p50 TTFT, ms, of prefix hits and misses, burst first and warm); empty where absent."""
    scenarios = results["scenarios"]
    groups: dict[str, list[tuple[str, float | None]]] = {}
    single, fp8 = scenarios.get("single") or {}, scenarios.get("fp8_single") or {}
    if fp8:
        groups["fp8"] = [
            ("bf16\n1 stream", single.get("tok_s_median")),
            ("fp8\n1 stream", fp8.get("tok_s_median")),
        ]
        dense = {lv["concurrency"]: lv for lv in scenarios.get("sweep", [])}
        for level in scenarios.get("fp8_concurrent", []):
            c = level["concurrency"]
            groups["fp8"].append((f"bf16\n{c} in all", dense.get(c, {}).get("aggregate_tok_s")))
            groups["fp8"].append((f"fp8\n{c} in all", level.get("aggregate_tok_s")))
    ttft: list[tuple[str, float | None]] = []

    def p50_ms(summary: dict[str, Any] | None) -> float | None:
        value = (summary or {}).get("ttft_p50_s")
        return None if value is None else value * 1000

    prefix = scenarios.get("prefix")
    if prefix:
        ttft += [
            ("prefix\nhit", p50_ms(prefix.get("hit"))),
            ("prefix\nmiss", p50_ms(prefix.get("miss"))),
        ]
    shared = scenarios.get("prefix_shared")
    if shared:
        c = shared["concurrency"]
        ttft += [
            (f"{c} shared\nhit", p50_ms(shared.get("hit"))),
            (f"{c} shared\nmiss", p50_ms(shared.get("miss"))),
        ]
    for key, name in (("burst", "burst"), ("fp8_burst", "fp8 burst")):
        burst = scenarios.get(key)
        if burst:
            ttft += [
                (f"{name}\nfirst", p50_ms(burst.get("first"))),
                (f"{name}\nwarm", p50_ms(burst.get("warm"))),
            ]
    if ttft:
        groups["ttft"] = ttft
    return {k: v for k, v in groups.items() if any(x is not None for _, x in v)}


def bars(ax: Any, runs: list[tuple[str, dict[str, Any]]], group: str) -> None:
    """One bar per (file, figure) of ``group``, the files side by side at each figure."""
    names: list[str] = []
    per_run = []
    for label, results in runs:
        values = dict(comparisons(results).get(group, []))
        per_run.append((label, values))
        names += [n for n in values if n not in names]
    if not names:
        ax.set_visible(False)
        return
    width = 0.8 / len(per_run)
    for i, (label, values) in enumerate(per_run):
        x = [j + (i - (len(per_run) - 1) / 2) * width for j in range(len(names))]
        heights = [values.get(n) or 0.0 for n in names]
        drawn = ax.bar(x, heights, width, label=label or None)
        ax.bar_label(drawn, labels=[f"{h:,.0f}" if h else "" for h in heights], fontsize=7)
    ax.set_xticks(range(len(names)), names, fontsize=8 if len(names) <= 6 else 7)
    ax.grid(True, axis="y", alpha=0.3)
    if any(label for label, _ in per_run):
        ax.legend(fontsize=8)


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
