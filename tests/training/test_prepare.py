"""Reading, validating, formatting and splitting prompt/article rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from tests.training.conftest import FIXTURE_DATA
from training.prepare import (
    DataError,
    Example,
    encode_example,
    example_context,
    instruction,
    load_examples,
    load_tokenizer,
    parse_columns,
    prepare,
    split_examples,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_text_path: Path) -> Any:
    return load_tokenizer("tiny")


def rows() -> list[dict[str, str]]:
    return [json.loads(line) for line in FIXTURE_DATA.read_text().splitlines()]


def test_instruction_names_topic_audience_and_tone() -> None:
    assert (
        instruction("bees", "children", "playful")
        == "Write an article about bees for children in a playful tone."
    )


def test_jsonl_csv_and_datasets_folder_read_the_same_rows(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    renamed = [{("subject" if k == "topic" else k): v for k, v in r.items()} for r in rows()]
    with (tmp_path / "rows.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(renamed[0]))
        writer.writeheader()
        writer.writerows(renamed)
    Dataset.from_list(renamed).save_to_disk(str(tmp_path / "flat"))
    DatasetDict({"train": Dataset.from_list(renamed)}).save_to_disk(str(tmp_path / "dict"))
    columns = parse_columns(["topic=subject"])

    def fields(examples: list[Example]) -> list[tuple[str, ...]]:
        return [(e.topic, e.audience, e.tone, e.article) for e in examples]

    want = fields(load_examples(FIXTURE_DATA))
    assert len(want) == 24
    for source in ("rows.csv", "flat", "dict"):
        assert fields(load_examples(tmp_path / source, columns)) == want, source
    with pytest.raises(DataError, match=r"splits \['train'\], not 'test'"):
        load_examples(tmp_path / "dict", columns, split="test")


def test_a_bad_row_is_named_with_what_is_wrong(tmp_path: Path) -> None:
    good = rows()[0]
    lines = [good, {**good, "tone": "  "}, good, {"topic": "x", "audience": 3}]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n{oops\n")
    with pytest.raises(DataError, match="bad.jsonl line 5: not valid JSON"):
        load_examples(path)
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    with pytest.raises(DataError) as caught:
        load_examples(path)
    message = str(caught.value)
    assert "2 bad row(s)" in message
    assert "bad.jsonl line 2: tone is empty" in message
    assert "bad.jsonl line 4: audience must be text, got int; tone is missing" in message
    with pytest.raises(DataError, match="the fields are"):
        parse_columns(["title=headline"])


def test_split_is_seeded_disjoint_and_holds_out_at_least_one_row() -> None:
    examples = load_examples(FIXTURE_DATA)
    train, val = split_examples(examples, 0.1, seed=42)
    assert (len(train), len(val)) == (22, 2)
    assert split_examples(examples, 0.1, seed=42) == (train, val)
    assert split_examples(examples, 0.1, seed=7)[1] != val
    assert not {e.source for e in train} & {e.source for e in val}
    assert len(split_examples(examples[:3], 0.01, seed=0)[1]) == 1
    with pytest.raises(DataError, match="at least 2 rows"):
        split_examples(examples[:1], 0.1, seed=0)


def test_ids_are_the_served_prompt_then_the_article_then_eos(tokenizer: Any) -> None:
    example = load_examples(FIXTURE_DATA)[0]
    encoded = encode_example(tokenizer, example, max_length=512)
    # The prompt ids are exactly what the service feeds the model for a chat request
    # (template rendered, then encoded without adding special tokens): one BOS, no more.
    served = tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction(example.topic, example.audience, example.tone)}],
        tokenize=False,
        add_generation_prompt=True,
    )
    prompt_ids = tokenizer(served, add_special_tokens=False).input_ids
    article_ids = tokenizer(example.article, add_special_tokens=False).input_ids
    assert encoded.input_ids == prompt_ids + article_ids + [tokenizer.eos_token_id]
    assert encoded.input_ids.count(tokenizer.bos_token_id) == 1
    assert encoded.completion_mask == [0] * len(prompt_ids) + [1] * (len(article_ids) + 1)
    assert example_context(tokenizer, example) == served
    assert not encoded.truncated


def test_rows_longer_than_max_length_are_cut_and_counted(tokenizer: Any) -> None:
    prepared = prepare(FIXTURE_DATA, tokenizer, max_length=120, validation_fraction=0.25)
    assert all(len(e.input_ids) <= 120 for e in prepared.train_encoded)
    stats = prepared.stats["train"]
    assert stats["rows"] == 18 and stats["truncated_rows"] == 18
    assert stats["tokens_cut"] == sum(
        e.prompt_tokens + e.completion_tokens - 120 for e in prepared.train_encoded
    )
    assert stats["total_tokens"]["min"] > 120
    with pytest.raises(DataError, match="the prompt alone is"):
        encode_example(tokenizer, load_examples(FIXTURE_DATA)[0], max_length=16)
