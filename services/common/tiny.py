"""The `tiny` models: small random-weight models built offline, for tests and CPU try-outs.

They run the same transformers/diffusers/peft code as real models, only small: a 2-layer Llama
with a BPE tokenizer trained here on text the project ships, and a small Stable Diffusion
pipeline. Builds are seeded, so one ``TINY_VERSION`` always yields the same weights. They are
saved with ``save_pretrained`` and loaded back with ``from_pretrained`` like any real model.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

TINY = "tiny"
# Bump when a builder changes, so old caches are not reused for new code.
TINY_VERSION = 1
TEXT_SEED = 1234
TEXT_VOCAB_SIZE = 1024

# Llama-2-chat's prompt format as a chat template: the optional system prompt sits inside the
# first user turn between <<SYS>> markers; each user turn is wrapped in [INST] ... [/INST].
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system_message = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system_message = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if loop.index0 == 0 and system_message %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content | trim + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)


def tiny_root(cache_dir: Path) -> Path:
    return cache_dir.expanduser() / TINY / f"v{TINY_VERSION}"


def corpus_text() -> str:
    return resources.files("services.common").joinpath("data/tiny_corpus.txt").read_text("utf-8")


def _build_atomically(target: Path, build: Callable[[Path], None]) -> Path:
    """Builds into a temp folder beside ``target`` and renames it into place.

    Several processes may ask for the same tiny model at once (tests start many); the rename
    makes exactly one build win, and nobody ever sees a half-written folder.
    """
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
            logger.info("tiny model built at %s", target)
        except OSError:
            if not target.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_tiny_text(folder: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TEXT_VOCAB_SIZE,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus_text().splitlines(), trainer=trainer)
    # Like Llama's tokenizer: encoding a plain prompt prepends <s>.
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bpe.token_to_id("<s>"))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        model_max_length=2048,
        padding_side="left",
    )
    tokenizer.chat_template = LLAMA2_CHAT_TEMPLATE

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(TEXT_SEED)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def build_tiny_text(cache_dir: Path) -> Path:
    """The tiny Llama folder, built on first use."""
    return _build_atomically(tiny_root(cache_dir) / "text", _write_tiny_text)


def build_tiny_image(cache_dir: Path) -> Path:
    """The tiny Stable Diffusion folder, built on first use."""
    from services.common.tiny_image import write_tiny_image

    return _build_atomically(tiny_root(cache_dir) / "image", write_tiny_image)


def resolve_model(name: str, kind: Literal["text", "image"], cache_dir: Path) -> str:
    """Maps a model setting to what ``from_pretrained`` takes: `tiny` becomes its folder. A path
    that holds no model is refused here, in one sentence (``ModelLoadError``)."""
    if name != TINY:
        from services.common.model_source import check_local

        check_local(name, kind)
        return name
    return str(build_tiny_text(cache_dir) if kind == "text" else build_tiny_image(cache_dir))
