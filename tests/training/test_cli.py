"""`articleforge train / eval / prepare` as the CLI registers them, and the YAML configs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tests.training.conftest import FIXTURE_DATA, ROOT, TINY_CONFIG, one_thread
from training.cli import eval_command, prepare_command, train_command

runner = CliRunner()


def cli() -> typer.Typer:
    """The commands wired the way services/cli.py wires them."""
    app = typer.Typer()
    app.command("train")(train_command)
    app.command("eval")(eval_command)
    app.command("prepare")(prepare_command)
    return app


@pytest.mark.parametrize("command", ["train", "eval", "prepare"])
def test_each_command_has_help(command: str) -> None:
    result = runner.invoke(cli(), [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_the_paper_config_is_the_default_and_says_the_papers_values() -> None:
    # training.train imports transformers, peft and trl: here, not at collection.
    from training.train import TrainConfig, load_config, parse_overrides

    paper = load_config(ROOT / "training" / "configs" / "paper.yaml")
    # Everything but our speed setting (compiled blocks, measured on a GPU) is the default.
    assert paper.compile_blocks is True
    assert dataclasses.replace(paper, compile_blocks=False) == TrainConfig()
    assert (paper.quantization, paper.lora_r, paper.lora_alpha, paper.lora_dropout) == (
        "nf4",
        64,
        16,
        0.1,
    )
    assert (paper.learning_rate, paper.per_device_train_batch_size, paper.max_length) == (
        2e-4,
        4,
        512,
    )
    tiny = load_config(TINY_CONFIG, parse_overrides(["learning_rate=5e-3", "quantization=nf4"]))
    assert tiny.model == "tiny" and tiny.learning_rate == 0.005 and tiny.quantization == "nf4"


def test_bad_settings_are_refused_by_name() -> None:
    from training.train import load_config

    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['lora_rank'\]"):
        load_config(None, {"lora_rank": 8})
    with pytest.raises(ValueError, match="quantization must be nf4 or none"):
        load_config(None, {"quantization": "int8"})
    result = runner.invoke(cli(), ["train", "--config", str(TINY_CONFIG), "--set", "epochs=2"])
    assert result.exit_code == 2 and "unknown setting(s) ['epochs']" in result.output


def test_prepare_reports_lengths_and_writes_the_split(tmp_path: Path, tiny_text_path: Path) -> None:
    result = runner.invoke(
        cli(), ["prepare", str(FIXTURE_DATA), "--max-length", "150", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "truncated" in result.output
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["train"]["rows"] + stats["validation"]["rows"] == 24
    assert len((tmp_path / "validation.jsonl").read_text().splitlines()) == 2


def test_eval_shows_training_set_perplexity_only_when_asked_and_labels_it(
    lora_run: Path, tmp_path: Path
) -> None:
    with one_thread():
        result = runner.invoke(
            cli(), ["eval", str(lora_run), "--include-train", "--out", str(tmp_path)]
        )
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "eval.json").read_text())["scores"]
    assert [(s["data"], s["held_out"]) for s in scores] == [
        ("validation", True),
        ("validation", True),
        ("train", False),
        ("train", False),
    ]
    table = (tmp_path / "eval.md").read_text()
    assert table.count("train (seen in training, **not** held out)") == 2
    # Same rows, same numbers as the run's own evaluation.
    original = json.loads((lora_run / "eval.json").read_text())["scores"]
    assert [s["perplexity"] for s in scores[:2]] == pytest.approx(
        [s["perplexity"] for s in original], rel=1e-6
    )
