"""Loads the causal LM, its tokenizer and PEFT adapters, as the settings describe."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from services.common.devices import resolve_device, resolve_dtype
from services.common.tiny import LLAMA2_CHAT_TEMPLATE, resolve_model
from services.text.config import TextSettings

logger = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in mixed-adapter batches


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    device: torch.device
    base_name: str
    # served name -> adapter name inside peft (BASE_ADAPTER for the base model)
    served: dict[str, str] = field(default_factory=dict)
    merged: bool = False
    default_name: str = ""
    context_window: int = 4096

    @property
    def unmerged_adapters(self) -> bool:
        return any(name != BASE_ADAPTER for name in self.served.values())


def nf4_config() -> Any:
    """The seed paper's quantization: 4-bit NormalFloat, bf16 compute, no double quant."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=False,
    )


def load_base(settings: TextSettings) -> tuple[Any, Any, torch.device]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(settings.text_model, "text", settings.resolved_cache_dir())
    device = resolve_device(settings.text_device)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(settings.text_dtype, device, torch.bfloat16)}
    if settings.text_quantization == "nf4":
        kwargs["quantization_config"] = nf4_config()
        kwargs["dtype"] = torch.bfloat16
        kwargs["device_map"] = {"": str(device)}
    logger.info("text model %s: loading from %s on %s", settings.text_model, path, device)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if settings.text_quantization != "nf4":
        model.to(device)  # type: ignore[arg-type]
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = LLAMA2_CHAT_TEMPLATE
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, device


def load_text_model(settings: TextSettings) -> LoadedModel:
    model, tokenizer, device = load_base(settings)
    adapters = settings.adapters()
    base_name = settings.base_model_name
    served: dict[str, str] = {base_name: BASE_ADAPTER}
    merged = False
    if adapters:
        from peft import PeftModel

        names = list(adapters)
        model = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(adapters[name], adapter_name=name)
        for name in names:
            served[name] = name
        merge = (
            settings.text_merge_adapter
            and settings.text_quantization == "none"
            and len(adapters) == 1
        )
        if merge:
            model = model.merge_and_unload()
            merged = True
            del served[base_name]  # the base weights now include the adapter
            served[names[0]] = BASE_ADAPTER
        logger.info(
            "text model %s: adapters %s %s",
            base_name,
            ", ".join(names),
            "merged" if merged else "kept unmerged",
        )
    model.eval()
    context = int(getattr(model.config, "max_position_embeddings", 0) or 4096)
    default_name = next(iter(adapters), base_name)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        base_name=base_name,
        served=served,
        merged=merged,
        default_name=default_name,
        context_window=context,
    )
