"""Loads the causal LM, its tokenizer and PEFT adapters, as the settings describe."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from services.common.devices import resolve_device, resolve_dtype
from services.common.model_source import ModelLoadError
from services.common.tiny import LLAMA2_CHAT_TEMPLATE, resolve_model
from services.text import fp8
from services.text.attention import kv_fp8_refusal
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

    @property
    def adapter_order(self) -> list[str]:
        """Unmerged adapters by index: 0 is the base model, k the k-th adapter."""
        names = dict.fromkeys(a for a in self.served.values() if a != BASE_ADAPTER)
        return [BASE_ADAPTER, *names]

    @property
    def eos_ids(self) -> set[int]:
        """Every token that ends generation: the generation config's and the tokenizer's."""
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids


def nf4_config() -> Any:
    """The seed paper's quantization: 4-bit NormalFloat, bf16 compute, no double quant."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=False,
    )


def check_fp8(settings: TextSettings) -> None:
    """Refuses ``ARTICLEFORGE_TEXT_QUANTIZATION=fp8`` where FP8 matmuls cannot run, and
    ``ARTICLEFORGE_TEXT_KV_CACHE_DTYPE=fp8`` where an E4M3 cache cannot be read, before
    anything is loaded (``articleforge serve text`` calls it before it binds its port)."""
    problem = None
    if settings.text_quantization == "fp8":
        problem = fp8.unsupported_reason(resolve_device(settings.text_device))
        if problem is None and settings.text_runner == "hf":
            problem = (
                "ARTICLEFORGE_TEXT_QUANTIZATION=fp8 runs in the engine's native runner only; "
                "use ARTICLEFORGE_TEXT_RUNNER=auto or native"
            )
    if problem is None and settings.text_kv_cache_dtype == "fp8":
        if settings.text_runner == "hf":
            problem = (
                "ARTICLEFORGE_TEXT_KV_CACHE_DTYPE=fp8 runs in the engine's native runner only "
                "(the HF runner keeps its own cache); use ARTICLEFORGE_TEXT_RUNNER=auto or native"
            )
        else:
            device = resolve_device(settings.text_device)
            if device.type == "cuda":
                capability = torch.cuda.get_device_capability(device)
                problem = kv_fp8_refusal(capability, torch.cuda.get_device_name(device))
    if problem is not None:
        raise ModelLoadError(problem)


def load_base(settings: TextSettings, allow_cpu_fp8: bool = False) -> tuple[Any, Any, torch.device]:
    """The HF model and tokenizer. ``allow_cpu_fp8``: skip the fp8 device check (tests and
    accuracy checks run torch's reference FP8 matmul on the CPU; the service never does)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not allow_cpu_fp8:
        check_fp8(settings)
    path = resolve_model(settings.text_model, "text", settings.resolved_cache_dir())
    device = resolve_device(settings.text_device)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(settings.text_dtype, device, torch.bfloat16)}
    if settings.text_quantization == "nf4":
        kwargs["quantization_config"] = nf4_config()
        kwargs["dtype"] = torch.bfloat16
        kwargs["device_map"] = {"": str(device)}
    config = AutoConfig.from_pretrained(path)
    method = fp8.checkpoint_method(config)
    if method is not None:
        if settings.text_quantization != "fp8":
            raise ModelLoadError(
                f"text model {settings.text_model!r} is an FP8 checkpoint ({method}); serve it "
                "with ARTICLEFORGE_TEXT_QUANTIZATION=fp8"
            )
        # Load the E4M3 values as plain weights (exact in bf16); the scales are read below.
        del config.quantization_config
        kwargs["config"] = config
    logger.info("text model %s: loading from %s on %s", settings.text_model, path, device)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if settings.text_quantization != "nf4":
        model.to(device)  # type: ignore[arg-type]
    if method is not None:
        folder = Path(path)
        if not folder.is_dir():  # a Hub id: from_pretrained has just put its files in the cache
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(path, allow_patterns=["*.safetensors", "*.json"]))
        count = fp8.attach_checkpoint_scales(model, fp8.read_weight_scales(folder))
        setattr(model, "fp8_checkpoint", method)  # noqa: B010 (read back by load_text_model)
        logger.info("text model %s: FP8 checkpoint (%s), %d scaled layers", path, method, count)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = LLAMA2_CHAT_TEMPLATE
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, device


def load_text_model(settings: TextSettings, allow_cpu_fp8: bool = False) -> LoadedModel:
    model, tokenizer, device = load_base(settings, allow_cpu_fp8)
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
            and settings.text_quantization != "nf4"
            and getattr(model, "fp8_checkpoint", None) is None  # scaled E4M3 values: no merge
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
