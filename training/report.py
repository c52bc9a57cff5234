"""What a training run leaves for people: the loss curve (the paper's Figure 7) and a model card.

``training/train.py`` calls these at the end of a run. To redraw a curve from a run folder::

    python -c "from pathlib import Path; from training import report; \\
        report.plot_loss_curve(report.read_metrics(Path('runs/tiny/metrics.jsonl')), \\
        Path('runs/tiny/loss_curve.png'))"
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.evaluate import EvalReport


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def train_losses(metrics: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(m["step"], float(m["loss"])) for m in metrics if m.get("kind") == "train"]


def eval_losses(metrics: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(m["step"], float(m["eval_loss"])) for m in metrics if m.get("kind") == "eval"]


def plot_loss_curve(metrics: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Training loss every step and validation loss at each evaluation, against step."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    train = train_losses(metrics)
    evals = eval_losses(metrics)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train, strict=True), label="training loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="validation loss (held out)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per article token)")
    ax.set_title(title or "Training loss (cf. the seed paper's Figure 7)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _tail_mean(points: list[tuple[int, float]], n: int = 5) -> float | None:
    return statistics.fmean(v for _, v in points[-n:]) if points else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def write_model_card(
    out: Path,
    resolved: dict[str, Any],
    metrics: list[dict[str, Any]],
    evaluation: EvalReport | None,
    trainable: int,
) -> None:
    """README.md in the adapter folder: what it is, how it was made, how well, how to serve it."""
    info = resolved["resolved"]
    train = train_losses(metrics)
    evals = eval_losses(metrics)
    quant = (
        "nf4 (4-bit NormalFloat, bf16 compute, no double quantization)"
        if resolved["quantization"] == "nf4"
        else f"none ({info['precision']})"
    )
    perplexity = "not measured (evaluate: false)"
    if evaluation is not None:
        held = {s.label: s for s in evaluation.scores if s.held_out}
        parts = [f"{label}: **{s.perplexity:.3f}**" for label, s in held.items()]
        perplexity = "; ".join(parts) + f" ({evaluation.data}, article tokens only)"
    model = resolved["model"]
    # The adapter is served under a name; it may not be the base model's own (`runs/tiny`).
    name = out.name if out.name != model else "adapter"
    serve = [f"ARTICLEFORGE_TEXT_MODEL={model}", f"ARTICLEFORGE_TEXT_ADAPTER={name}={out}"]
    if resolved["quantization"] == "nf4":
        serve.append("ARTICLEFORGE_TEXT_QUANTIZATION=nf4")
    first = train[0][1] if train else None
    lines = [
        f"# {out.name}: a LoRA adapter for {model}",
        "",
        "Trained by articleforge (`training/train.py`) to write articles from an instruction of",
        'the form "Write an article about {topic} for {audience} in a {tone} tone.", in the',
        "model's chat template.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{model}` |",
        f"| base weights during training | {quant} |",
        f"| adapter | LoRA r={resolved['lora_r']}, alpha={resolved['lora_alpha']}, "
        f"dropout {resolved['lora_dropout']}, on `{resolved['target_modules']}`; "
        f"{trainable:,} trainable parameters |",
        f"| data | `{resolved['data']}`: {info['train_rows']} rows trained on, "
        f"{info['validation_rows']} held out (seed {resolved['seed']}) |",
        f"| training | {len(train)} steps ({info['steps_per_epoch']} per epoch), batch "
        f"{resolved['per_device_train_batch_size']} x up to {resolved['max_length']} tokens, "
        f"lr {resolved['learning_rate']} ({resolved['lr_scheduler_type']}), {info['optim']}, "
        f"{info['device']} |",
        f"| training loss | {_fmt(first)} at the first step, {_fmt(_tail_mean(train))} "
        "(mean of the last 5 steps) |",
        f"| validation loss | {_fmt(evals[0][1] if evals else None)} before training, "
        f"{_fmt(evals[-1][1] if evals else None)} after |",
        f"| held-out perplexity | {perplexity} |",
        f"| started | {info['started']} |",
        "",
        "Loss is the mean negative log-likelihood (nats) of the article tokens and the closing",
        "EOS; the prompt carries none. Perplexity is exp(total NLL / total article tokens) over",
        "the held-out rows, the way `/v1/perplexity` scores a text given its prompt. See",
        "`eval.md` for the table and `loss_curve.png` for the curve.",
        "",
        "## Serve it",
        "",
        "```bash",
        " ".join(serve) + " articleforge serve text",
        "```",
        "",
        "## Files",
        "",
        "- `adapter_model.safetensors`, `adapter_config.json`: the adapter (peft)",
        "- tokenizer files: the base model's tokenizer, with its chat template",
        "- `config.yaml`: every setting of this run, resolved, with library versions",
        "- `train.jsonl`, `validation.jsonl`, `data_stats.json`: the split and its token lengths",
        "- `metrics.jsonl`: training loss every step, validation loss at each evaluation",
        "- `loss_curve.png`, `eval.md`, `eval.json`",
        "",
    ]
    if first is not None and not math.isfinite(first):
        lines.insert(2, "**Warning: the training loss was not finite.**\n")
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
