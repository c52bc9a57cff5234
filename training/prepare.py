"""Turns prompt/article rows into chat-formatted, tokenized train and validation splits.

Rows are ``{topic, audience, tone, article}``, read from JSONL, JSON, CSV or a ``datasets``
folder (``Dataset.save_to_disk``); a column mapping renames other sources' columns. Every row is
checked and a bad one is named ("articles.jsonl line 17: 'tone' is empty"). Each row becomes an
instruction in the model's chat template (Llama-2's ``[INST] ... [/INST]``) followed by the
article and EOS; only the article and EOS carry loss. The split is seeded.

Check a data set and see its token lengths (nothing is trained)::

    python -m training.prepare training/data/articles.jsonl --model tiny --max-length 256
    python -m training.prepare my.csv --model NousResearch/Llama-2-7b-chat-hf \\
        --column topic=subject --column article=body --out runs/data

The token ids are built exactly the way ``/v1/perplexity`` scores a text with a context
(``services.text.perplexity.encode_scored``), so training, ``training/evaluate.py`` and the text
service all see the same tokens.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import statistics
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.text.perplexity import encode_scored

logger = logging.getLogger(__name__)

FIELDS = ("topic", "audience", "tone", "article")
# How many bad rows one error message lists before it says "and N more".
MAX_LISTED_ERRORS = 10


class DataError(ValueError):
    """A data set that cannot be trained on; the message names the rows and what is wrong."""


@dataclass(frozen=True)
class Example:
    topic: str
    audience: str
    tone: str
    article: str
    source: str  # where the row came from, for messages: "articles.jsonl line 17"


@dataclass
class Encoded:
    input_ids: list[int]
    completion_mask: list[int]  # 1 where the token is the article (or EOS) and carries loss
    prompt_tokens: int
    completion_tokens: int  # article + EOS, before truncation
    truncated: bool


@dataclass
class Prepared:
    train: list[Example]
    validation: list[Example]
    train_encoded: list[Encoded]
    validation_encoded: list[Encoded]
    stats: dict[str, Any] = field(default_factory=dict)


def instruction(topic: str, audience: str, tone: str) -> str:
    """The user turn the model is trained on, and what a client should send to get an article."""
    return f"Write an article about {topic} for {audience} in a {tone} tone."


def prompt_context(tokenizer: Any, text: str) -> str:
    """The chat-formatted prompt for ``text``, as the context string ``encode_scored`` takes.

    It is the template's own output (Llama-2's starts with ``<s>``); ``encode_scored`` adds no
    second BOS to a context that already has one, so the ids match the service's chat path.
    """
    rendered: str = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    return rendered


def example_context(tokenizer: Any, example: Example) -> str:
    return prompt_context(tokenizer, instruction(example.topic, example.audience, example.tone))


# --- reading ------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg})") from exc


def _read_json(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path.name}: not valid JSON ({exc})") from exc
    if not isinstance(data, list):
        raise DataError(f"{path.name}: expected a JSON list of rows, got {type(data).__name__}")
    for number, item in enumerate(data, start=1):
        yield f"{path.name} item {number}", item


def _read_csv(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            yield f"{path.name} line {reader.line_num}", row


def _read_dataset_folder(path: Path, split: str) -> Iterator[tuple[str, Any]]:
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(str(path))
    if isinstance(data, DatasetDict):
        if split not in data:
            raise DataError(
                f"{path}: the saved DatasetDict has splits {sorted(data)}, not {split!r}; "
                "name one with the dataset split option"
            )
        data = data[split]
    for number, row in enumerate(data, start=1):
        yield f"{path.name} row {number}", row


def read_rows(path: Path, split: str = "train") -> Iterator[tuple[str, Any]]:
    """``(where, raw row)`` pairs from a JSONL, JSON or CSV file or a ``datasets`` folder."""
    if not path.exists():
        hint = "" if path.is_absolute() else f" (relative to {Path.cwd()}; run from the repo root)"
        raise DataError(f"{path}: no such file or folder{hint}")
    if path.is_dir():
        return _read_dataset_folder(path, split)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".csv":
        return _read_csv(path)
    raise DataError(f"{path}: unknown format {suffix!r}; use .jsonl, .json, .csv or a folder")


def parse_columns(pairs: Iterable[str]) -> dict[str, str]:
    """``["topic=subject", ...]`` to ``{"topic": "subject"}``, refusing unknown fields."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        ours, sep, theirs = pair.partition("=")
        if not sep or not theirs.strip():
            raise DataError(f"column mapping {pair!r} is not FIELD=COLUMN")
        mapping[ours.strip()] = theirs.strip()
    check_columns(mapping)
    return mapping


def check_columns(mapping: Mapping[str, str]) -> None:
    unknown = sorted(set(mapping) - set(FIELDS))
    if unknown:
        raise DataError(f"column mapping names {unknown}; the fields are {list(FIELDS)}")


def validate_row(where: str, raw: Any, columns: Mapping[str, str]) -> tuple[Example | None, str]:
    """The row as an ``Example``, or ``None`` and what is wrong with it."""
    if not isinstance(raw, Mapping):
        return None, f"{where}: expected an object with {list(FIELDS)}, got {type(raw).__name__}"
    values: dict[str, str] = {}
    problems = []
    for name in FIELDS:
        column = columns.get(name, name)
        value = raw.get(column)
        label = name if column == name else f"{name} (column {column!r})"
        if value is None:
            problems.append(f"{label!s} is missing")
        elif not isinstance(value, str):
            problems.append(f"{label!s} must be text, got {type(value).__name__}")
        elif not value.strip():
            problems.append(f"{label!s} is empty")
        else:
            values[name] = value.strip()
    if problems:
        return None, f"{where}: " + "; ".join(problems)
    return Example(source=where, **values), ""


def load_examples(
    path: Path, columns: Mapping[str, str] | None = None, split: str = "train"
) -> list[Example]:
    """Every row of ``path``, validated; one ``DataError`` lists the bad rows."""
    columns = dict(columns or {})
    check_columns(columns)
    examples: list[Example] = []
    errors: list[str] = []
    for where, raw in read_rows(path, split):
        example, problem = validate_row(where, raw, columns)
        if example is None:
            errors.append(problem)
        else:
            examples.append(example)
    if errors:
        listed = "\n  ".join(errors[:MAX_LISTED_ERRORS])
        more = len(errors) - MAX_LISTED_ERRORS
        tail = f"\n  and {more} more" if more > 0 else ""
        raise DataError(f"{path}: {len(errors)} bad row(s):\n  {listed}{tail}")
    if not examples:
        raise DataError(f"{path}: no rows")
    seen: dict[str, str] = {}
    for example in examples:
        first = seen.setdefault(example.article, example.source)
        if first != example.source:
            # A duplicate can land on both sides of the split and flatter held-out perplexity.
            logger.warning("data %s: same article as %s", example.source, first)
    return examples


def split_examples(
    examples: list[Example], validation_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """A seeded train/validation split; validation gets at least one row, train keeps one."""
    if not 0 < validation_fraction < 1:
        raise DataError(f"validation_fraction must be between 0 and 1, got {validation_fraction}")
    if len(examples) < 2:
        raise DataError(f"need at least 2 rows to hold one out, got {len(examples)}")
    n_val = min(len(examples) - 1, max(1, round(len(examples) * validation_fraction)))
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_val])
    train = [e for i, e in enumerate(examples) if i not in held]
    validation = [e for i, e in enumerate(examples) if i in held]
    return train, validation


# --- tokenizing ---------------------------------------------------------------------------------


def encode_example(tokenizer: Any, example: Example, max_length: int) -> Encoded:
    """Prompt ids then article ids then EOS, cut at ``max_length``; loss on article and EOS."""
    ids, lead = encode_scored(tokenizer, example.article, example_context(tokenizer, example))
    ids = ids + [tokenizer.eos_token_id]
    if lead >= max_length:
        raise DataError(
            f"{example.source}: the prompt alone is {lead} tokens; max_length is {max_length}"
        )
    completion = len(ids) - lead
    mask = [0] * lead + [1] * completion
    truncated = len(ids) > max_length
    return Encoded(
        input_ids=ids[:max_length],
        completion_mask=mask[:max_length],
        prompt_tokens=lead,
        completion_tokens=completion,
        truncated=truncated,
    )


def _describe(values: list[int]) -> dict[str, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return {
        "min": ordered[0],
        "mean": round(statistics.fmean(ordered), 1),
        "median": statistics.median(ordered),
        "p90": p90,
        "max": ordered[-1],
    }


def length_stats(encoded: list[Encoded], max_length: int) -> dict[str, Any]:
    """Token lengths before truncation, and what truncation cost."""
    full = [e.prompt_tokens + e.completion_tokens for e in encoded]
    return {
        "rows": len(encoded),
        "max_length": max_length,
        "total_tokens": _describe(full),
        "prompt_tokens": _describe([e.prompt_tokens for e in encoded]),
        "completion_tokens": _describe([e.completion_tokens for e in encoded]),
        "truncated_rows": sum(e.truncated for e in encoded),
        "tokens_cut": sum(max(0, n - max_length) for n in full),
        "tokens_trained": sum(len(e.input_ids) for e in encoded),
    }


def prepare(
    path: Path,
    tokenizer: Any,
    *,
    max_length: int,
    validation_fraction: float = 0.1,
    seed: int = 42,
    columns: Mapping[str, str] | None = None,
    split: str = "train",
) -> Prepared:
    """Read, validate, split and tokenize; logs the token-length report."""
    examples = load_examples(path, columns, split)
    train, validation = split_examples(examples, validation_fraction, seed)
    train_encoded = [encode_example(tokenizer, e, max_length) for e in train]
    validation_encoded = [encode_example(tokenizer, e, max_length) for e in validation]
    stats: dict[str, Any] = {
        "source": str(path),
        "seed": seed,
        "validation_fraction": validation_fraction,
        "train": length_stats(train_encoded, max_length),
        "validation": length_stats(validation_encoded, max_length),
    }
    for name in ("train", "validation"):
        part = stats[name]
        logger.info(
            "data %s: %s rows, tokens per row min %s / median %s / p90 %s / max %s; "
            "%s rows truncated at %s tokens (%s tokens cut)",
            name,
            part["rows"],
            part["total_tokens"]["min"],
            part["total_tokens"]["median"],
            part["total_tokens"]["p90"],
            part["total_tokens"]["max"],
            part["truncated_rows"],
            max_length,
            part["tokens_cut"],
        )
    return Prepared(train, validation, train_encoded, validation_encoded, stats)


def write_split(path: Path, examples: list[Example], tokenizer: Any) -> None:
    """The rows as JSONL with their instruction and the exact prompt (context) string."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for example in examples:
            row = asdict(example)
            row["instruction"] = instruction(example.topic, example.audience, example.tone)
            row["prompt"] = example_context(tokenizer, example)
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_split(path: Path) -> list[Example]:
    """Rows written by ``write_split`` (or any JSONL of the four fields)."""
    examples = []
    for where, raw in read_rows(path):
        example, problem = validate_row(where, raw, {})
        if example is None:
            raise DataError(problem)
        examples.append(Example(**{**asdict(example), "source": raw.get("source") or where}))
    return examples


def load_tokenizer(model: str) -> Any:
    """The tokenizer of a model setting (HF id, folder or ``tiny``), loaded as the service does."""
    from transformers import AutoTokenizer

    from services.common.config import CommonSettings
    from services.common.tiny import LLAMA2_CHAT_TEMPLATE, resolve_model

    path = resolve_model(model, "text", CommonSettings().resolved_cache_dir())
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = LLAMA2_CHAT_TEMPLATE
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


if __name__ == "__main__":
    import typer

    from training.cli import prepare_command

    typer.run(prepare_command)
