"""The tiny models: seeded, cached, and loaded back through from_pretrained."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from services.common.tiny import LLAMA2_CHAT_TEMPLATE, build_tiny_text, resolve_model


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_same_version_builds_the_same_weights(tmp_path: Path, tiny_text_path: Path) -> None:
    again = build_tiny_text(tmp_path)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert digest(again / name) == digest(tiny_text_path / name)


def test_tiny_resolves_to_the_cached_folder(cache_dir: Path, tiny_text_path: Path) -> None:
    assert resolve_model("tiny", "text", cache_dir) == str(tiny_text_path)
    assert resolve_model("NousResearch/Llama-2-7b-chat-hf", "text", cache_dir) == (
        "NousResearch/Llama-2-7b-chat-hf"
    )
    mtime = (tiny_text_path / "model.safetensors").stat().st_mtime
    build_tiny_text(cache_dir)  # a second call reuses the cache
    assert (tiny_text_path / "model.safetensors").stat().st_mtime == mtime


def test_tiny_llama_loads_like_a_real_model(tiny_text_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_text_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_text_path)
    assert model.config.model_type == "llama"
    assert model.config.hidden_size == 64
    assert model.config.vocab_size == len(tokenizer)
    ids = tokenizer("Solar power").input_ids
    assert ids[0] == tokenizer.bos_token_id
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tokenize=False,
    )
    assert rendered == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"


def test_a_tokenizer_without_template_falls_back_to_llama2(
    tmp_path: Path, tiny_text_path: Path
) -> None:
    folder = tmp_path / "no-template"
    shutil.copytree(tiny_text_path, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))

    from transformers import AutoTokenizer

    from services.text.config import TextSettings
    from services.text.loading import load_base  # torch and transformers: not at collection

    assert AutoTokenizer.from_pretrained(folder).chat_template is None
    _, tokenizer, _ = load_base(TextSettings(text_model=str(folder), _env_file=None))  # type: ignore[call-arg]
    assert tokenizer.chat_template == LLAMA2_CHAT_TEMPLATE
    rendered = tokenizer.apply_chat_template(
        [
            {"role": "user", "content": "Write."},
            {"role": "assistant", "content": "Done."},
            {"role": "user", "content": "Again."},
        ],
        tokenize=False,
    )
    assert rendered == "<s>[INST] Write. [/INST] Done. </s><s>[INST] Again. [/INST]"
