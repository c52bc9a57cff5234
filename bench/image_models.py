"""Random-weight diffusers pipelines of the served shapes, saved as model folders.

Denoising speed does not depend on the weight values, so a pipeline of the real shape with
random weights measures the service honestly. Each folder has the layout of the real model's
(``model_index.json``, ``unet/``, ``vae/``, text encoder(s), tokenizer(s), ``scheduler/``) and
loads through ``AutoPipelineForText2Image`` like the real one:

* ``sd15``: Stable Diffusion 1.5 (UNet 860M, CLIP ViT-L/14 text encoder, 512x512);
* ``sdxl``: SDXL base (UNet 2.6B, CLIP ViT-L + OpenCLIP bigG, 1024x1024, micro-conditioning);
* ``sd-turbo``: SD-Turbo, an SD 2.1 shape (OpenCLIP ViT-H text encoder, v-prediction-free
  distilled UNet, Euler with trailing timesteps, 512x512, run with 1-4 steps and no CFG).

The tokenizer is the project's tiny CLIP BPE (1,000 entries; its ids fit any CLIP vocabulary):
there is no real CLIP vocabulary offline. A ``-small`` variant of each keeps the structure at a
CPU-sized scale, for the smoke test.

    python -m bench.image_models sdxl /tmp/models/sdxl
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from services.common.tiny_image import SD_SCHEDULER_CONFIG

FOLDER_VERSION = 1

# The SD 1.x UNet; SD 2.x (SD-Turbo) changes its attention, as SHAPES shows.
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}

SHAPES: dict[str, dict[str, Any]] = {
    "sd15": {
        "unet": SD15_UNET,
        "vae": {"block_out_channels": (128, 256, 512, 512), "sample_size": 512},
        "text": [{"hidden_size": 768, "intermediate_size": 3072, "layers": 12, "heads": 12}],
        "pipeline": "StableDiffusionPipeline",
        "scheduler": "PNDMScheduler",
    },
    "sdxl": {
        "unet": {
            "sample_size": 128,
            "block_out_channels": (320, 640, 1280),
            "down_block_types": (
                "DownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
            ),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            "layers_per_block": 2,
            "transformer_layers_per_block": (1, 2, 10),
            "attention_head_dim": (5, 10, 20),
            "cross_attention_dim": 2048,
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816,
        },
        "vae": {
            "block_out_channels": (128, 256, 512, 512),
            "sample_size": 1024,
            "scaling_factor": 0.13025,
            # As madebyollin/sdxl-vae-fp16-fix (what the docs tell SDXL operators to use); the
            # original VAE's force_upcast would decode in float32.
            "force_upcast": False,
        },
        "text": [
            {"hidden_size": 768, "intermediate_size": 3072, "layers": 12, "heads": 12},
            {
                "hidden_size": 1280,
                "intermediate_size": 5120,
                "layers": 32,
                "heads": 20,
                "projection_dim": 1280,
                "hidden_act": "gelu",
            },
        ],
        "pipeline": "StableDiffusionXLPipeline",
        "scheduler": "EulerDiscreteScheduler",
    },
    "sd-turbo": {
        "unet": {
            **SD15_UNET,
            "cross_attention_dim": 1024,
            "attention_head_dim": (5, 10, 20, 20),
            "use_linear_projection": True,
        },
        "vae": {"block_out_channels": (128, 256, 512, 512), "sample_size": 768},
        "text": [
            {
                "hidden_size": 1024,
                "intermediate_size": 4096,
                "layers": 23,
                "heads": 16,
                "hidden_act": "gelu",
            }
        ],
        "pipeline": "StableDiffusionPipeline",
        "scheduler": "EulerDiscreteScheduler",
        "scheduler_extra": {"timestep_spacing": "trailing"},
    },
}


def _small(shape: dict[str, Any]) -> dict[str, Any]:
    """The same structure at a CPU scale: narrow channels, few layers."""
    unet = dict(shape["unet"])
    blocks = len(unet["block_out_channels"])
    unet.update(
        block_out_channels=tuple(32 * (k + 1) for k in range(blocks)),
        sample_size=16,
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=tuple(2 for _ in range(blocks))
        if isinstance(unet["attention_head_dim"], tuple)
        else 2,
        cross_attention_dim=32 * len(shape["text"]) if len(shape["text"]) > 1 else 32,
    )
    if "transformer_layers_per_block" in unet:
        unet["transformer_layers_per_block"] = tuple(1 for _ in range(blocks))
    if "projection_class_embeddings_input_dim" in unet:
        # text_embeds (the second encoder's projection) + 6 time ids x addition_time_embed_dim
        unet.update(addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8)
    vae = {
        **shape["vae"],
        "block_out_channels": (32, 32),
        "sample_size": 128,
        "norm_num_groups": 8,
    }
    text = [
        {**t, "hidden_size": 32, "intermediate_size": 37, "layers": 2, "heads": 4}
        | ({"projection_dim": 32} if "projection_dim" in t else {})
        for t in shape["text"]
    ]
    return {**shape, "unet": unet, "vae": vae, "text": text}


for _name in list(SHAPES):
    SHAPES[f"{_name}-small"] = _small(SHAPES[_name])


def native_side(shape_name: str) -> int:
    """The side in pixels of what the shape's pipeline draws by default: the UNet's latent side
    times the VAE's downscaling (2 per VAE block after the first), as diffusers derives it."""
    shape = SHAPES[shape_name]
    return shape["unet"]["sample_size"] * 2 ** (len(shape["vae"]["block_out_channels"]) - 1)


def _text_encoder(spec: dict[str, Any], tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        max_position_embeddings=77,
        hidden_act=spec.get("hidden_act", "quick_gelu"),
        projection_dim=spec.get("projection_dim", 768),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cls = CLIPTextModelWithProjection if "projection_dim" in spec else CLIPTextModel
    return cls(config)


def build(shape_name: str, folder: Path, device: str = "cpu", dtype: str = "float16") -> dict:
    """Builds the random-weight pipeline on ``device`` and saves it to ``folder``."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from services.common.tiny_image import _clip_tokenizer

    shape = SHAPES[shape_name]
    marker = folder / "bench_model.json"
    wanted = {"shape": shape_name, "version": FOLDER_VERSION, "dtype": dtype}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return {"built": False}
    started = time.perf_counter()
    tokenizer = _clip_tokenizer()
    torch.manual_seed(0)
    with torch.device(device):
        unet: Any = UNet2DConditionModel(in_channels=4, out_channels=4, **shape["unet"])
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            layers_per_block=2,
            down_block_types=("DownEncoderBlock2D",) * len(shape["vae"]["block_out_channels"]),
            up_block_types=("UpDecoderBlock2D",) * len(shape["vae"]["block_out_channels"]),
            **shape["vae"],
        )
        encoders = [_text_encoder(spec, tokenizer) for spec in shape["text"]]
    scheduler_cls = getattr(diffusers, shape["scheduler"])
    extra = shape.get("scheduler_extra", {})
    scheduler = scheduler_cls.from_config({**SD_SCHEDULER_CONFIG, **extra})
    pipeline_cls = getattr(diffusers, shape["pipeline"])
    parts: dict[str, Any] = {"unet": unet, "vae": vae, "scheduler": scheduler}
    if len(encoders) == 2:
        parts.update(
            text_encoder=encoders[0],
            text_encoder_2=encoders[1],
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
        )
    else:
        parts.update(
            text_encoder=encoders[0],
            tokenizer=tokenizer,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe = pipeline_cls(**parts)
    pipe.to(getattr(torch, dtype))
    built = time.perf_counter() - started
    tmp = folder.with_name(folder.name + ".partial")
    pipe.save_pretrained(tmp)
    (tmp / "bench_model.json").write_text(json.dumps(wanted))
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)
    return {
        "built": True,
        "build_s": round(built, 1),
        "save_s": round(time.perf_counter() - started - built, 1),
        "unet_params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1),
    }


if __name__ == "__main__":
    device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
    dtype = sys.argv[4] if len(sys.argv) > 4 else ("float16" if device != "cpu" else "float32")
    print(json.dumps(build(sys.argv[1], Path(sys.argv[2]), device, dtype)))
