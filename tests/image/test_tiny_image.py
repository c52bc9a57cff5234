"""The tiny Stable Diffusion pipeline: built offline, seeded, loaded like a real model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from services.common.tiny_image import CLIP_VOCAB_SIZE, write_tiny_image


def test_it_loads_through_the_same_path_as_real_models(tiny_image_path: Path) -> None:
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline, StableDiffusionPipeline

    pipe = AutoPipelineForText2Image.from_pretrained(tiny_image_path)
    assert isinstance(pipe, StableDiffusionPipeline)
    assert type(DiffusionPipeline.from_pretrained(tiny_image_path)) is StableDiffusionPipeline
    assert pipe.safety_checker is None
    tokenizer = pipe.tokenizer
    assert type(tokenizer).__name__ == "CLIPTokenizer"
    assert tokenizer.model_max_length == 77
    assert len(tokenizer) <= pipe.text_encoder.config.vocab_size == CLIP_VOCAB_SIZE
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    ids = tokenizer("A Lighthouse at Dusk", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    # CLIP's BPE: lowercased, with word-end markers.
    tokens = tokenizer.tokenize("Solar power")
    assert all(t == t.lower() for t in tokens) and tokens[-1].endswith("</w>")
    # It draws (noise, but an image of the asked size).
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        "solar panels",
        width=32,
        height=32,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    assert out.images.shape == (1, 32, 32, 3)


def test_the_build_is_seeded(tiny_image_path: Path, tmp_path: Path) -> None:
    write_tiny_image(tmp_path / "again")

    def digest(folder: Path) -> dict[str, str]:
        return {
            str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*.safetensors"))
        }

    assert digest(tmp_path / "again") == digest(tiny_image_path)
    assert len(digest(tiny_image_path)) == 4  # unet, vae, text encoder, safety checker
    vocab_a = (tmp_path / "again" / "tokenizer" / "tokenizer.json").read_text()
    assert vocab_a == (tiny_image_path / "tokenizer" / "tokenizer.json").read_text()
