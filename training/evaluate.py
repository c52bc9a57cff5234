"""Held-out perplexity of the base model and base+adapter, in the form of the paper's Table 2.

Perplexity is scored on the article tokens only, given the chat-formatted prompt, with the
same code as the text service's ``/v1/perplexity`` (``services.text.perplexity``): per row the
mean negative log-likelihood (NLL) of the article's tokens; over a split exp(total NLL / total
article tokens). The seed paper's 1.49 appears to have been measured on its training data;
this one is measured on the validation rows that training never saw, and says so. Training-set
perplexity is computed only when asked for, and labelled as such.

    articleforge eval runs/tiny                       # base vs adapter, validation split
    articleforge eval runs/paper --baseline meta-llama/Llama-2-7b-hf --include-train
    python -m training.evaluate runs/tiny --data held_out.jsonl --quantization none

It writes ``eval.md`` (the table) and ``eval.json`` (every number, per row too) into the run
folder, or ``--out``.
"""

from __future__ import annotations

import gc
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from services.text.perplexity import encode_scored, mean_nll
from training.prepare import Example, example_context, load_examples, read_split

if TYPE_CHECKING:
    from services.text.loading import LoadedModel

logger = logging.getLogger(__name__)

SEED_PAPER_PERPLEXITY = 1.49  # the seed paper's Table 2, apparently on its training data


@dataclass
class RowScore:
    source: str
    topic: str
    tokens: int  # article tokens scored
    mean_nll: float


@dataclass
class Score:
    label: str
    model: str
    adapter: str | None
    quantization: str
    data: str  # which rows: "validation", "train", or a file name
    held_out: bool
    rows: int
    tokens: int
    mean_nll: float  # token-weighted over the rows
    perplexity: float  # exp(mean_nll)
    row_mean_perplexity: float  # mean of the per-row perplexities, for comparison
    per_row: list[RowScore] = field(default_factory=list)


@dataclass
class EvalReport:
    run: str
    data: str
    scores: list[Score]
    created: str


def score_rows(loaded: LoadedModel, examples: list[Example]) -> list[RowScore]:
    """Each row's mean NLL over its article tokens, given its prompt."""
    scores = []
    for example in examples:
        context = example_context(loaded.tokenizer, example)
        ids, lead = encode_scored(loaded.tokenizer, example.article, context)
        if len(ids) > loaded.context_window:
            raise ValueError(
                f"{example.source}: {len(ids)} tokens with its prompt; the model's context "
                f"window is {loaded.context_window}"
            )
        nll = mean_nll(loaded.model, ids, lead, loaded.device)
        scores.append(RowScore(example.source, example.topic, len(ids) - lead, nll))
    return scores


def summarize(
    rows: list[RowScore],
    *,
    label: str,
    model: str,
    adapter: str | None,
    quantization: str,
    data: str,
    held_out: bool,
) -> Score:
    tokens = sum(r.tokens for r in rows)
    total = sum(r.mean_nll * r.tokens for r in rows)
    nll = total / tokens
    return Score(
        label=label,
        model=model,
        adapter=adapter,
        quantization=quantization,
        data=data,
        held_out=held_out,
        rows=len(rows),
        tokens=tokens,
        mean_nll=nll,
        perplexity=math.exp(nll),
        row_mean_perplexity=sum(math.exp(r.mean_nll) for r in rows) / len(rows),
        per_row=rows,
    )


def _load(model: str, adapter: Path | None, quantization: str) -> Any:
    from services.text.config import TextSettings
    from services.text.loading import load_text_model

    settings = TextSettings(
        text_model=model,
        text_adapter=f"adapter={adapter}" if adapter else None,
        text_quantization=quantization,
        # Unmerged, so that one load scores both the base (adapter disabled) and the adapter.
        text_merge_adapter=False,
    )
    return load_text_model(settings)


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate_run(
    run: Path,
    *,
    model: str | None = None,
    data: Path | None = None,
    baselines: Sequence[str] = (),
    include_train: bool = False,
    quantization: str | None = None,
) -> EvalReport:
    """Scores the base model and base+adapter of ``run`` (and ``baselines``) on held-out rows.

    ``run`` is an adapter folder; its ``config.yaml`` (written by train.py) names the base model
    and quantization, and its ``validation.jsonl`` the held-out rows. ``model``, ``data`` and
    ``quantization`` override them (and are needed for an adapter made elsewhere).
    """
    config_path = run / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
    base = model or config.get("model")
    if not base:
        raise ValueError(f"{run} has no config.yaml naming the base model; pass the model")
    quant = quantization or config.get("quantization", "none")
    if data is not None:
        sets = [(data.name, False, load_examples(data))]
    else:
        if not (run / "validation.jsonl").exists():
            raise ValueError(f"{run} has no validation.jsonl; pass the data to score")
        sets = [("validation", True, read_split(run / "validation.jsonl"))]
    if include_train:
        sets.append(("train", False, read_split(run / "train.jsonl")))

    scores: list[Score] = []

    def add(
        loaded: LoadedModel,
        label: str,
        model: str,
        adapter: str | None,
        data_set: tuple[str, bool, list[Example]],
    ) -> None:
        name, held_out, examples = data_set
        scores.append(
            summarize(
                score_rows(loaded, examples),
                label=label,
                model=model,
                adapter=adapter,
                quantization=quant,
                data=name,
                held_out=held_out,
            )
        )
        logger.info("eval %s on %s: perplexity %.4f", label, name, scores[-1].perplexity)

    loaded = _load(base, run, quant)  # unmerged: one load scores the base and the adapter
    for data_set in sets:
        with loaded.model.disable_adapter():
            add(loaded, f"{base} (base)", base, None, data_set)
        add(loaded, f"{base} + {run.name}", base, str(run), data_set)
    del loaded
    _free()
    for other in baselines:
        loaded = _load(other, None, quant)
        for data_set in sets:
            add(loaded, other, other, None, data_set)
        del loaded
        _free()
    return EvalReport(
        run=str(run),
        data=sets[0][0],
        scores=scores,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _data_label(score: Score) -> str:
    if score.data == "train":
        return "train (seen in training, **not** held out)"
    if score.held_out:
        return "validation (held out)"
    return score.data


def markdown(report: EvalReport) -> str:
    lines = [
        f"# Perplexity of `{report.run}`",
        "",
        "The seed paper's Table 2, remeasured. Perplexity = exp(total negative log-likelihood /",
        "total article tokens), scored on the article tokens only, given the chat-formatted",
        "prompt (the same scoring as the text service's `/v1/perplexity`); lower is better.",
        f"The paper reported {SEED_PAPER_PERPLEXITY}, apparently on its training data. Numbers",
        "below marked held out come from rows the adapter never trained on.",
        "",
        "| model | adapter | base weights | data | rows | tokens | perplexity | mean of row "
        "perplexities |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for s in report.scores:
        adapter = f"`{s.adapter}`" if s.adapter else "none"
        weights = "nf4" if s.quantization == "nf4" else "16/32-bit"
        lines.append(
            f"| {s.label} | {adapter} | {weights} | {_data_label(s)} | {s.rows} | "
            f"{s.tokens:,} | {s.perplexity:.3f} | {s.row_mean_perplexity:.3f} |"
        )
    lines += ["", f"Measured {report.created}.", ""]
    return "\n".join(lines)


def write_report(report: EvalReport, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(asdict(report), indent=2), encoding="utf-8")
    (out / "eval.md").write_text(markdown(report), encoding="utf-8")


if __name__ == "__main__":
    import typer

    from training.cli import eval_command

    typer.run(eval_command)
