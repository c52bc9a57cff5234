"""The tiny Stable Diffusion pipeline: the shapes of diffusers' own test components, seeded.

Called by ``services.common.tiny.build_tiny_image``, which builds into a temp folder and renames
it into place. The layout is that of a real SD 1.5 folder (``model_index.json``, ``unet/``,
``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) and loads back with
``DiffusionPipeline.from_pretrained`` or ``AutoPipelineForText2Image.from_pretrained`` offline.

Beside the pipeline (not registered in ``model_index.json``, so the pipeline loads without it)
sit ``safety_checker/`` and ``feature_extractor/``: a tiny ``StableDiffusionSafetyChecker`` built
to flag every image, so that the service's NSFW path can run offline when the safety-checker
setting is on.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from services.common.tiny import corpus_text

IMAGE_SEED = 0
# The CLIP text encoder's vocabulary (diffusers' dummy components use 1000); the tokenizer is
# built to fit inside it.
CLIP_VOCAB_SIZE = 1000
CLIP_MAX_LENGTH = 77
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
WORD_END = "</w>"
# CLIP's split: the special tokens, English contractions, letter runs, single digits, and runs
# of other non-space characters (the same pattern as transformers' CLIPTokenizer).
CLIP_SPLIT = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"""
    r"""|[^\s\p{L}\p{N}]+"""
)
# SD 1.5's scheduler settings (its scheduler_config.json), so that every scheduler the service
# builds through `from_config` sees the same noise schedule as it would on a real model.
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}


def _clip_bpe() -> tuple[dict[str, int], list[str]]:
    """Trains a byte-level BPE on the project's corpus, the way CLIP's is built.

    CLIP lowercases, splits words with ``CLIP_SPLIT``, maps bytes to printable characters, and
    marks the last symbol of each word with ``</w>``. Its vocab.json holds the 256 byte symbols,
    the same 256 with ``</w>``, then one token per merge, then ``<|startoftext|>`` and
    ``<|endoftext|>``; merges.txt lists the merges in order. We keep that layout and cut the
    merge list so the whole vocabulary fits the text encoder's ``CLIP_VOCAB_SIZE``.

    The trainer's own ``end_of_word_suffix`` numbers the ``x</w>`` symbols in hash-map order,
    which breaks ties between equally frequent merges differently on every run. So each
    ``x</w>`` is trained as one private-use character, given in the initial alphabet (which the
    trainer numbers in character order), and mapped back afterwards: the same merges, always.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    splitter = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    word_end = {c: chr(0xF0000 + ord(c)) for c in alphabet}  # "c</w>" as one character
    symbol = {v: k + WORD_END for k, v in word_end.items()}
    words = [
        word[:-1] + word_end[word[-1]]
        for line in corpus_text().splitlines()
        for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(line))
    ]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=CLIP_VOCAB_SIZE,
        initial_alphabet=alphabet + list(word_end.values()),
        show_progress=False,
    )
    bpe.train_from_iterator(words, trainer=trainer)
    trained = json.loads(bpe.to_str())["model"]["merges"]
    pairs = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained]

    vocab: dict[str, int] = {}
    for piece in alphabet + [c + WORD_END for c in alphabet]:
        vocab[piece] = len(vocab)
    room = CLIP_VOCAB_SIZE - len(vocab) - 2  # two special tokens at the end
    merges: list[str] = []
    for pair in pairs[:room]:
        # Merges come in training order, so both pieces are already in the vocab.
        left, right = ("".join(symbol.get(c, c) for c in piece) for piece in pair)
        vocab.setdefault(left + right, len(vocab))
        merges.append(f"{left} {right}")
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return vocab, merges


def _clip_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = _clip_bpe()
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
        return CLIPTokenizer.from_pretrained(
            tmp, model_max_length=CLIP_MAX_LENGTH, pad_token=EOS, bos_token=BOS, eos_token=EOS
        )


def _tiny_safety_checker() -> tuple[Any, Any]:
    """A tiny CLIP-vision safety checker whose thresholds flag every image.

    The checker flags an image when ``cos(image, concept) - threshold > 0`` for some concept;
    a cosine is never below -1, so thresholds of -2 flag everything, whatever the weights.
    """
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "vocab_size": CLIP_VOCAB_SIZE,
            "bos_token_id": CLIP_VOCAB_SIZE - 2,
            "eos_token_id": CLIP_VOCAB_SIZE - 1,
            "pad_token_id": CLIP_VOCAB_SIZE - 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 32,
            "patch_size": 4,
        },
        projection_dim=32,
    )
    torch.manual_seed(IMAGE_SEED)
    checker = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-2.0)
    extractor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return checker, extractor


def write_tiny_image(folder: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _clip_tokenizer()
    if len(tokenizer) > CLIP_VOCAB_SIZE:
        raise RuntimeError(f"tiny CLIP tokenizer has {len(tokenizer)} tokens > {CLIP_VOCAB_SIZE}")

    torch.manual_seed(IMAGE_SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=2,
    )
    torch.manual_seed(IMAGE_SEED)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=64,
    )
    torch.manual_seed(IMAGE_SEED)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=CLIP_VOCAB_SIZE,
            max_position_embeddings=CLIP_MAX_LENGTH,
        )
    )
    pipe: Any = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=PNDMScheduler.from_config(SD_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)

    checker, extractor = _tiny_safety_checker()
    checker.save_pretrained(folder / "safety_checker")
    extractor.save_pretrained(folder / "feature_extractor")
