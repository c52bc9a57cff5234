"""Command-line entry points of training/: ``articleforge train``, ``eval`` and ``prepare``.

Plain functions with typer annotations, so that ``services/cli.py`` registers them with
``app.command("train")(train_command)`` and each module also runs alone through
``typer.run`` (``python -m training.train --config ...``). Heavy imports wait inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


def _setup_logging() -> None:
    from services.common.config import CommonSettings
    from services.common.logging import setup_logging

    setup_logging(CommonSettings().log_level)


def _print_plain(text: str) -> None:
    """Markdown tables as they are: no rich markup, no wrapping inside a row."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def train_command(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            exists=True,
            dir_okay=False,
            help="YAML file of settings (training/configs/paper.yaml or tiny.yaml).",
        ),
    ] = None,
    output_dir: Annotated[
        str | None, typer.Option(help="Where the adapter and reports go (overrides the config).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override one setting, KEY=VALUE; repeat as needed."),
    ] = None,
) -> None:
    """Fine-tune a LoRA/QLoRA adapter on prompt/article rows (TRL SFTTrainer)."""
    from training.prepare import DataError
    from training.train import load_config, main, parse_overrides

    _setup_logging()
    overrides = parse_overrides(set_ or [])
    if output_dir:
        overrides["output_dir"] = output_dir
    try:
        resolved = load_config(config, overrides)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    try:
        out = main(resolved)
    except DataError as exc:  # a bad data set: say which rows, not a traceback
        console.print(f"[red]{exc}[/red]", markup=True, highlight=False)
        raise typer.Exit(2) from exc
    console.print(f"adapter and reports in [bold]{out}[/bold]")
    card = out / "eval.md"
    if card.exists():
        _print_plain(card.read_text(encoding="utf-8"))


def eval_command(
    run: Annotated[
        Path, typer.Argument(exists=True, file_okay=False, help="Adapter folder (a train run).")
    ],
    baseline: Annotated[
        list[str] | None,
        typer.Option(help="Another model to score alongside (HF id, folder or tiny); repeat."),
    ] = None,
    include_train: Annotated[
        bool,
        typer.Option(help="Also score the training rows (labelled: not a held-out measure)."),
    ] = False,
    data: Annotated[
        Path | None,
        typer.Option(help="Score these rows instead of the run's validation split."),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Base model, if the run folder has no config.yaml.")
    ] = None,
    quantization: Annotated[
        str | None, typer.Option(help="nf4 or none (default: as the adapter was trained).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Where eval.md and eval.json go (default: the run).")
    ] = None,
) -> None:
    """Perplexity on held-out rows: base model vs base+adapter (the paper's Table 2)."""
    from training.evaluate import evaluate_run, markdown, write_report

    _setup_logging()
    if quantization not in (None, "nf4", "none"):
        console.print(f"[red]--quantization must be nf4 or none, got {quantization!r}[/red]")
        raise typer.Exit(2)
    report = evaluate_run(
        run,
        model=model,
        data=data,
        baselines=baseline or [],
        include_train=include_train,
        quantization=quantization,
    )
    write_report(report, out or run)
    _print_plain(markdown(report))


def prepare_command(
    data: Annotated[Path, typer.Argument(help="JSONL, JSON, CSV or a datasets folder.")],
    model: Annotated[str, typer.Option(help="Whose tokenizer and chat template.")] = "tiny",
    max_length: Annotated[int, typer.Option(help="Tokens per row before cutting.")] = 512,
    validation_fraction: Annotated[float, typer.Option(help="Share held out.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 42,
    column: Annotated[
        list[str] | None,
        typer.Option(help="FIELD=COLUMN when the source names a field differently; repeat."),
    ] = None,
    split: Annotated[str, typer.Option(help="Split of a saved DatasetDict.")] = "train",
    out: Annotated[
        Path | None, typer.Option(help="Write train.jsonl, validation.jsonl, stats.json here.")
    ] = None,
) -> None:
    """Check a data set, split it and report token lengths; nothing is trained."""
    import json

    from training.prepare import DataError, load_tokenizer, parse_columns, prepare, write_split

    _setup_logging()
    try:
        tokenizer = load_tokenizer(model)
        prepared = prepare(
            data,
            tokenizer,
            max_length=max_length,
            validation_fraction=validation_fraction,
            seed=seed,
            columns=parse_columns(column or []),
            split=split,
        )
    except DataError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    table = Table(title=f"{data}: tokens per row ({model} tokenizer)")
    for name in ("split", "rows", "min", "median", "mean", "p90", "max", "truncated", "cut"):
        table.add_column(name, justify="left" if name == "split" else "right")
    for name in ("train", "validation"):
        part = prepared.stats[name]
        lengths = part["total_tokens"]
        table.add_row(
            name,
            str(part["rows"]),
            *(str(lengths[k]) for k in ("min", "median", "mean", "p90", "max")),
            f"{part['truncated_rows']} at {max_length}",
            str(part["tokens_cut"]),
        )
    Console().print(table)
    if out is not None:
        write_split(out / "train.jsonl", prepared.train, tokenizer)
        write_split(out / "validation.jsonl", prepared.validation, tokenizer)
        (out / "stats.json").write_text(json.dumps(prepared.stats, indent=2), encoding="utf-8")
        console.print(f"split written to [bold]{out}[/bold]")
