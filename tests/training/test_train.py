"""A short fine-tune of the tiny model (LoRA, and nf4 + LoRA) and everything it leaves behind."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.text.conftest import make_settings, ready_client
from tests.training.conftest import STEPS
from training import report


def test_the_training_loss_falls(trained: Path) -> None:
    metrics = report.read_metrics(trained / "metrics.jsonl")
    train = [loss for _, loss in report.train_losses(metrics)]
    evals = [loss for _, loss in report.eval_losses(metrics)]
    assert len(train) == STEPS  # a loss every step
    first, last = statistics.fmean(train[:5]), statistics.fmean(train[-5:])
    assert last < first - 0.05, (first, last)
    assert evals[0] > evals[-1] + 0.05, evals  # validation loss before training vs after


def test_the_adapter_beats_the_base_model_on_held_out_rows(trained: Path) -> None:
    scores = json.loads((trained / "eval.json").read_text())["scores"]
    assert [(s["adapter"] is None, s["data"], s["held_out"]) for s in scores] == [
        (True, "validation", True),
        (False, "validation", True),
    ]  # no training-set perplexity unless asked for
    base, tuned = scores
    assert tuned["perplexity"] < 0.95 * base["perplexity"], (base, tuned)
    validation = (trained / "validation.jsonl").read_text().splitlines()
    assert base["rows"] == tuned["rows"] == len(validation)


def test_every_output_file_exists_and_parses(trained: Path) -> None:
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    config = yaml.safe_load((trained / "config.yaml").read_text())
    adapter = json.loads((trained / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (64, 16, 0.1)
    assert {name.rsplit(".", 1)[-1] for name in adapter["target_modules"]} == {
        f"{n}_proj" for n in ("q", "k", "v", "o", "gate", "up", "down")
    }
    weights = load_file(str(trained / "adapter_model.safetensors"))
    assert len(weights) == 2 * 7 * 2  # lora_A and lora_B, 7 modules, 2 layers
    tokenizer = AutoTokenizer.from_pretrained(trained)
    assert "[INST]" in tokenizer.chat_template
    assert config["max_steps"] == STEPS and config["resolved"]["total_steps"] == STEPS
    assert config["resolved"]["optim"] == "adamw_torch"  # the CPU; CUDA gets paged AdamW
    nf4 = config["quantization"] == "nf4"
    assert config["resolved"]["precision"] == ("bf16" if nf4 else "fp32")
    stats = json.loads((trained / "data_stats.json").read_text())
    assert stats["validation"]["rows"] == config["resolved"]["validation_rows"]
    for split in ("train", "validation"):
        row = json.loads((trained / f"{split}.jsonl").read_text().splitlines()[0])
        assert row["prompt"].startswith("<s>[INST] Write an article about") and row["article"]
    with Image.open(trained / "loss_curve.png") as image:
        assert image.format == "PNG" and image.size[0] > 400
    card = (trained / "README.md").read_text()
    assert f"ARTICLEFORGE_TEXT_ADAPTER={trained.name}={trained}" in card
    assert ("ARTICLEFORGE_TEXT_QUANTIZATION=nf4" in card) == nf4
    assert "held-out perplexity" in card and "r=64, alpha=16, dropout 0.1" in card
    table = (trained / "eval.md").read_text()
    assert "validation (held out)" in table and "train (" not in table
    assert not (trained / "trainer").exists()


def test_the_text_service_scores_the_same_perplexity_as_evaluate(
    trained: Path, cache_dir: Path
) -> None:
    config = yaml.safe_load((trained / "config.yaml").read_text())
    rows = [json.loads(line) for line in (trained / "validation.jsonl").read_text().splitlines()]
    base, tuned = json.loads((trained / "eval.json").read_text())["scores"]
    body = {"texts": [r["article"] for r in rows], "contexts": [r["prompt"] for r in rows]}
    quantization = config["quantization"]
    # The default service: a single adapter is merged into a full-precision base, kept
    # unmerged on nf4; evaluate.py scores it unmerged. Both agree to well under 1e-4 nats.
    for adapter, score in ((str(trained), tuned), (None, base)):
        settings = make_settings(cache_dir, text_adapter=adapter, text_quantization=quantization)
        with ready_client(settings) as client:
            reply = client.post("/v1/perplexity", json=body)
        assert reply.status_code == 200, reply.text
        served = reply.json()["results"]
        for row, want in zip(served, score["per_row"], strict=True):
            assert row["tokens"] == want["tokens"]
            assert row["mean_nll"] == pytest.approx(want["mean_nll"], abs=1e-4)


def test_cpu_nf4_gradients_survive_an_eval_pass(tiny_text_path: Path) -> None:
    """bitsandbytes repacks 4-bit weights for CPU inference at the first eval-mode forward, into
    a layout without a backward; training must keep the differentiable one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from services.text.loading import nf4_config
    from training.train import keep_cpu_nf4_differentiable

    ids = torch.randint(3, 1000, (2, 32), generator=torch.Generator().manual_seed(0))

    def lora_grad(eval_first: bool) -> torch.Tensor:
        model = AutoModelForCausalLM.from_pretrained(
            tiny_text_path, quantization_config=nf4_config(), dtype=torch.bfloat16
        )
        assert keep_cpu_nf4_differentiable(model) == 14
        torch.manual_seed(0)
        config = LoraConfig(
            r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False
        )
        peft_model: Any = get_peft_model(model, config)
        if eval_first:
            peft_model.eval()
            with torch.no_grad():
                peft_model(input_ids=ids)
            peft_model.train()
        peft_model(input_ids=ids, labels=ids).loss.backward()
        q_proj = peft_model.base_model.model.model.layers[0].self_attn.q_proj
        return q_proj.lora_A["default"].weight.grad.float()

    torch.testing.assert_close(lora_grad(eval_first=True), lora_grad(eval_first=False))


def test_compiled_blocks_train_too(tmp_path: Path, tiny_text_path: Path, sample_data: Path) -> None:
    """`compile_blocks: true` (what bench/qlora_train.py measures on a GPU) runs the same loop."""
    from tests.training.conftest import TINY_CONFIG, one_thread
    from training.train import load_config, main

    config = load_config(
        TINY_CONFIG,
        {
            "data": str(sample_data),
            "compile_blocks": True,
            "max_steps": 3,
            "evaluate": False,
            "output_dir": str(tmp_path / "compiled"),
        },
    )
    with one_thread():
        out = main(config)
    losses = [loss for _, loss in report.train_losses(report.read_metrics(out / "metrics.jsonl"))]
    assert len(losses) == 3 and all(6 < loss < 8 for loss in losses)
    assert (out / "adapter_model.safetensors").exists() and not (out / "eval.json").exists()
