"""QLoRA fine-tuning of the text model on prompt/article rows, with TRL's ``SFTTrainer``.

The seed paper's recipe is the default (``training/configs/paper.yaml``): Llama-2-7b-chat in
4-bit nf4 (no double quantization, bf16 compute), LoRA r=64 / alpha=16 / dropout 0.1 on every
linear layer, Adam at 2e-4, batch 4 x 512 tokens, a few epochs over ~150 rows. Loss is on the
article (the completion) only.

    # on a CUDA GPU, the paper's run
    articleforge train --config training/configs/paper.yaml
    # on a CPU, the tiny random-weight model, in seconds (add --set quantization=nf4 for QLoRA)
    articleforge train --config training/configs/tiny.yaml
    # any field can be overridden
    articleforge train --config training/configs/tiny.yaml --set max_steps=30 --output-dir runs/x
    python -m training.train --config training/configs/tiny.yaml    # the same, without the CLI

The output folder gets: the adapter (``adapter_model.safetensors``, ``adapter_config.json``) and
tokenizer; ``config.yaml`` (the resolved config); ``train.jsonl`` / ``validation.jsonl`` (the
split) and ``data_stats.json``; ``metrics.jsonl`` (loss every step, eval loss at the start and
after every epoch); ``loss_curve.png`` (the paper's Figure 7); ``eval.md`` / ``eval.json``
(held-out perplexity, base vs adapter); and ``README.md``, a model card. Serve it with
``ARTICLEFORGE_TEXT_ADAPTER=<folder> articleforge serve text``.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import shutil
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    # --- model ------------------------------------------------------------------------------
    # HF id, local folder or `tiny`. The paper's base is Llama-2-7b-chat (this id is an ungated
    # copy of meta-llama/Llama-2-7b-chat-hf).
    model: str = "NousResearch/Llama-2-7b-chat-hf"
    # `nf4`: 4-bit NormalFloat, bf16 compute, no double quantization (the paper). `none`: the
    # base stays 16-bit (bf16 on CUDA) or fp32 (CPU), plain LoRA.
    quantization: str = "nf4"

    # --- data -------------------------------------------------------------------------------
    # JSONL, JSON, CSV or a `datasets` folder of {topic, audience, tone, article} rows.
    data: str = "training/data/articles.jsonl"
    # Source column for each field when the names differ, e.g. {article: body}.
    columns: dict[str, str] = field(default_factory=dict)
    # Split to read when `data` is a saved DatasetDict.
    dataset_split: str = "train"
    # Held out for eval loss and perplexity: 172 rows -> 17 validation, 155 train.
    validation_fraction: float = 0.1
    # Tokens per row (prompt + article + EOS), cut beyond. The paper trained at 512; prepare
    # reports how many rows that cuts. One step sees at most 4 x 512 = 2,048 tokens.
    max_length: int = 512

    # --- LoRA (the paper's values) ----------------------------------------------------------
    lora_r: int = 64
    # Scale alpha / r = 16 / 64 = 0.25 on the low-rank update.
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    # Every linear layer but lm_head: q, k, v, o, gate, up, down = 7 per block; on Llama-2-7B
    # that is 224 modules and 160M trainable parameters at r=64 (2.4% of 6.7B).
    target_modules: str | list[str] = "all-linear"

    # --- optimisation -----------------------------------------------------------------------
    # The paper's Adam learning rate.
    learning_rate: float = 2e-4
    # Not stated by the paper; constant is QLoRA's reference choice.
    lr_scheduler_type: str = "constant"
    # Warm-up as a fraction of all steps (0 = none).
    warmup_ratio: float = 0.0
    # `auto`: paged_adamw_32bit on CUDA (optimizer state pages to host memory on spikes),
    # adamw_torch on the CPU. With weight_decay 0 AdamW is the paper's Adam.
    optim: str = "auto"
    weight_decay: float = 0.0
    # Not stated by the paper; 0.3 is QLoRA's reference value.
    max_grad_norm: float = 0.3
    # Rows per step: the paper's 4 (x 512 tokens).
    per_device_train_batch_size: int = 4
    # Steps of 4 rows summed per optimizer update; 1 = update every step.
    gradient_accumulation_steps: int = 1
    # "Several epochs": 155 rows / 4 per step = 39 steps per epoch -> 117 steps for 3 epochs.
    num_train_epochs: float = 3.0
    # If > 0, stop after this many optimizer steps, whatever num_train_epochs says.
    max_steps: int = -1
    # Recompute activations in the backward pass: a 7B model at 4 x 512 fits in ~8 GB.
    gradient_checkpointing: bool = True
    # torch.compile each decoder block (one compile, reused by every block): fuses the norms,
    # RoPE, SiLU and LoRA's dropout/scale/add around the 4-bit matmuls. Costs a warm-up of a
    # minute or so; bench/qlora_train.py measures what it buys.
    compile_blocks: bool = False
    # Seeds the split, LoRA's initial weights, dropout and data order.
    seed: int = 42
    # `auto`: bf16 on CUDA or with nf4, fp32 otherwise (the tiny model on a CPU).
    precision: str = "auto"

    # --- output -----------------------------------------------------------------------------
    output_dir: str = "runs/paper"
    # After training, measure held-out perplexity (base vs adapter) with training/evaluate.py.
    evaluate: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.quantization not in ("nf4", "none"):
            problems.append(f"quantization must be nf4 or none, got {self.quantization!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            problems.append(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if not 0 < self.validation_fraction < 1:
            problems.append(f"validation_fraction must be in (0, 1): {self.validation_fraction}")
        if self.max_length < 16:
            problems.append(f"max_length must be >= 16, got {self.max_length}")
        if self.lora_r < 1 or self.per_device_train_batch_size < 1:
            problems.append("lora_r and per_device_train_batch_size must be >= 1")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            problems.append("set num_train_epochs > 0 or max_steps > 0")
        if problems:
            raise ValueError("; ".join(problems))


def load_config(path: Path | None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then ``overrides``; unknown keys are refused by name."""
    values: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
        values.update(loaded)
    values.update(overrides or {})
    types = typing.get_type_hints(TrainConfig)
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; the settings are {sorted(types)}")
    for key, value in values.items():
        # YAML reads 5e-3 (no dot) as a string and 2 as an int; numbers take the field's type.
        if types[key] in (float, int) and isinstance(value, str | int | float):
            try:
                values[key] = types[key](value)
            except ValueError as exc:
                raise ValueError(f"{key} must be a number, got {value!r}") from exc
    return TrainConfig(**values)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["max_steps=30", "quantization=nf4"]`` to a dict; values are read as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set {pair!r} is not KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


class MetricsLog(TrainerCallback):
    """Appends every log the trainer makes (train loss, eval loss, summary) to metrics.jsonl."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_eval_step = -1
        path.write_text("", encoding="utf-8")

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **_: Any
    ) -> None:
        if not logs:
            return
        kind = "eval" if "eval_loss" in logs else "train" if "loss" in logs else "summary"
        if kind == "eval":
            self.last_eval_step = state.global_step
        record = {"kind": kind, "step": state.global_step, **logs}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def resolve_precision(config: TrainConfig, device_type: str) -> str:
    if config.precision != "auto":
        return config.precision
    return "bf16" if device_type == "cuda" or config.quantization == "nf4" else "fp32"


def resolve_optim(config: TrainConfig, device_type: str) -> str:
    if config.optim != "auto":
        return config.optim
    return "paged_adamw_32bit" if device_type == "cuda" else "adamw_torch"


def keep_cpu_nf4_differentiable(model: Any) -> int:
    """Stops bitsandbytes from repacking 4-bit weights for CPU inference during training.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a ``Linear4bit``'s weights at its first
    eval-mode forward (the eval before training, or after an epoch) into a layout whose matmul
    has no backward. Training then goes on with gradients that silently skip every base layer.
    Returns how many layers were switched off that path.
    """
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def main(config: TrainConfig) -> Path:
    """Train one adapter as ``config`` says; returns the output folder."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from services.common.devices import resolve_device
    from services.text.config import TextSettings
    from services.text.loading import load_base
    from training import report
    from training.prepare import load_tokenizer, prepare, write_split

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)

    settings = TextSettings(text_model=config.model, text_quantization=config.quantization)
    device = resolve_device(settings.text_device)
    precision = resolve_precision(config, device.type)
    optim = resolve_optim(config, device.type)
    if precision == "fp32" and config.quantization == "nf4":
        raise ValueError("nf4 computes in bf16; use precision bf16 or auto with quantization nf4")

    # The data first: a bad row should fail in a second, not after loading 13 GB of weights.
    data = prepare(
        Path(config.data),
        load_tokenizer(config.model),
        max_length=config.max_length,
        validation_fraction=config.validation_fraction,
        seed=config.seed,
        columns=config.columns,
        split=config.dataset_split,
    )
    model, tokenizer, device = load_base(settings)
    if device.type == "cpu" and config.quantization == "nf4":
        keep_cpu_nf4_differentiable(model)
    if config.compile_blocks:
        for block in model.model.layers:
            block.compile()  # compiled lazily at the first step, after peft adds LoRA inside
    write_split(out / "train.jsonl", data.train, tokenizer)
    write_split(out / "validation.jsonl", data.validation, tokenizer)
    (out / "data_stats.json").write_text(json.dumps(data.stats, indent=2), encoding="utf-8")

    rows_per_update = config.per_device_train_batch_size * config.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(data.train) / rows_per_update)
    total_steps = (
        config.max_steps
        if config.max_steps > 0
        else math.ceil(config.num_train_epochs * steps_per_epoch)
    )
    resolved = {
        **asdict(config),
        "resolved": {
            "model_path": str(getattr(model, "name_or_path", config.model)),
            "device": str(device),
            "precision": precision,
            "optim": optim,
            "train_rows": len(data.train),
            "validation_rows": len(data.validation),
            "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps,
            "max_tokens_per_step": rows_per_update * config.max_length,
            "versions": _versions(),
            "started": started.isoformat(timespec="seconds"),
        },
    }
    (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    logger.info(
        "train %s: %s on %s (%s, %s), %s train rows, %s steps of %s rows",
        out,
        config.model,
        device,
        config.quantization,
        precision,
        len(data.train),
        total_steps,
        rows_per_update,
    )

    def to_dataset(encoded: list[Any]) -> Dataset:
        return Dataset.from_list(
            [{"input_ids": e.input_ids, "completion_mask": e.completion_mask} for e in encoded]
        )

    # transformers 5.2x renamed gradient_checkpointing to activation_checkpointing; 5.17 has
    # only the old name.
    ckpt = (
        "activation_checkpointing"
        if "activation_checkpointing" in {f.name for f in dataclasses.fields(SFTConfig)}
        else "gradient_checkpointing"
    )
    checkpointing: dict[str, Any] = {
        ckpt: config.gradient_checkpointing,
        f"{ckpt}_kwargs": {"use_reentrant": False},
    }
    args = SFTConfig(
        output_dir=str(out / "trainer"),  # nothing is saved there (save_strategy "no")
        max_length=config.max_length,
        completion_only_loss=True,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_ratio,
        optim=optim,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        **checkpointing,
        bf16=precision == "bf16",
        fp16=False,
        use_cpu=device.type == "cpu",
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=1,
        eval_strategy="epoch",
        eval_on_start=True,
        save_strategy="no",
        report_to="none",
        disable_tqdm=False,
        dataloader_pin_memory=device.type == "cuda",
    )
    peft_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    metrics_log = MetricsLog(out / "metrics.jsonl")
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(data.train_encoded),
        eval_dataset=to_dataset(data.validation_encoded),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[metrics_log],
    )
    peft_model: Any = trainer.model
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    logger.info("train %s: %s trainable LoRA parameters", out, f"{trainable:,}")
    trainer.train()
    if metrics_log.last_eval_step != trainer.state.global_step:
        trainer.evaluate()  # close the curve with an eval point at the last step

    peft_model.save_pretrained(out)  # the adapter alone, as safetensors
    tokenizer.save_pretrained(out)
    shutil.rmtree(out / "trainer", ignore_errors=True)
    del trainer, model, peft_model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    metrics = report.read_metrics(metrics_log.path)
    title = f"{out.name} ({config.model}): loss per step, cf. the seed paper's Figure 7"
    report.plot_loss_curve(metrics, out / "loss_curve.png", title=title)
    evaluation = None
    if config.evaluate:
        from training.evaluate import evaluate_run, write_report

        evaluation = evaluate_run(out)
        write_report(evaluation, out)
    report.write_model_card(out, resolved, metrics, evaluation, trainable)
    logger.info("train %s: done in %.0f s", out, (datetime.now(UTC) - started).total_seconds())
    return out


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers
    import trl

    found = {
        "torch": str(torch.__version__),
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "trl": trl.__version__,
    }
    try:
        import bitsandbytes

        found["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name(0)
    return found


if __name__ == "__main__":
    import typer

    from training.cli import train_command

    typer.run(train_command)
