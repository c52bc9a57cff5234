"""DeepCache-style feature reuse (ARTICLEFORGE_IMAGE_DEEP_CACHE_INTERVAL), on the CPU.

The UNets are real diffusers modules with random weights: the service's `tiny` one, and small
SD 1.5- and SDXL-shaped ones (cross-attention in the outer blocks; SDXL's added text/time
embeddings). Deep-block calls are counted with forward hooks on the real modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from services.image.config import ImageSettings
from services.image.deep_cache import DeepCache
from tests.image.conftest import SMALL, draw, pixels, serve_image


def _unet(shape: str, tiny_image_path: Path) -> tuple[Any, dict[str, Any]]:
    """A random-weight UNet of a served shape, and the extra inputs its pipeline passes."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    if shape == "tiny":
        unet = UNet2DConditionModel.from_pretrained(tiny_image_path / "unet")
        return unet.eval(), {"encoder_hidden_states": torch.randn(2, 7, 32)}
    if shape == "sd15":  # cross-attention in the outer blocks, a plain innermost level
        unet = UNet2DConditionModel(
            block_out_channels=(32, 32, 64),
            layers_per_block=2,
            sample_size=16,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        return unet.eval(), {"encoder_hidden_states": torch.randn(2, 7, 32)}
    # sdxl: plain outer level, cross-attention inside; pooled text + size/crop conditioning.
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=32 + 6 * 8,
        cross_attention_dim=64,
        norm_num_groups=1,
    )
    extra = {
        "encoder_hidden_states": torch.randn(2, 7, 64),
        "added_cond_kwargs": {"text_embeds": torch.randn(2, 32), "time_ids": torch.randn(2, 6)},
    }
    return unet.eval(), extra


def _count_calls(modules: list[torch.nn.Module]) -> tuple[list[int], list[Any]]:
    counts = [0] * len(modules)

    def counter(k: int) -> Any:
        def hook(*_: Any) -> None:
            counts[k] += 1

        return hook

    handles = [m.register_forward_hook(counter(k)) for k, m in enumerate(modules)]
    return counts, handles


def test_full_steps_follow_the_interval_the_first_step_and_the_last_tenth() -> None:
    cache = DeepCache(3)
    assert [i for i in range(25) if cache.full(i, 25)] == [0, 3, 6, 9, 12, 15, 18, 21, 22, 23, 24]
    assert [i for i in range(7) if cache.full(i, 7)] == [0, 3, 6]
    assert all(cache.full(i, 2) for i in range(2))  # the warm-up's 2 steps: no shallow step
    assert all(DeepCache(1).full(i, 10) for i in range(10))
    assert all(DeepCache(0).full(i, 10) for i in range(10))


def test_deep_blocks_run_only_on_full_steps_of_a_pipeline_call(tiny_image_path: Path) -> None:
    """7 steps at interval 3: full steps 0, 3, 6; the 4 shallow steps skip the mid block and
    the inner down block but still give a noise prediction of the latents' shape."""
    from services.image.loading import load_image_pipeline
    from services.image.schedulers import make_scheduler

    loaded = load_image_pipeline(ImageSettings())
    pipe, unet = loaded.pipe, loaded.pipe.unet
    deep = [unet.mid_block, *unet.down_blocks[1:], *unet.up_blocks[:-1]]
    counts, handles = _count_calls([*deep, unet.conv_in, unet.up_blocks[-1]])
    shapes: list[tuple[int, ...]] = []
    handles.append(unet.register_forward_hook(lambda _m, _a, out: shapes.append(out[0].shape)))
    pipe.scheduler = make_scheduler("dpmpp_2m", loaded.scheduler_config)
    try:
        with torch.inference_mode(), DeepCache(3).around(unet, 7):
            out = pipe(
                prompt=["a lighthouse"],
                negative_prompt=[""],
                width=32,
                height=32,
                num_inference_steps=7,
                guidance_scale=7.0,
                generator=[torch.Generator("cpu").manual_seed(1)],
                output_type="pt",
            )
    finally:
        for handle in handles:
            handle.remove()
    assert counts == [3] * len(deep) + [7, 7]
    # Classifier-free guidance: both halves in one call, a 16x16 latent of 4 channels.
    assert shapes == [torch.Size([2, 4, 16, 16])] * 7
    assert out.images.shape == (1, 3, 32, 32) and torch.isfinite(out.images).all()
    # The module is left as it was: no wrapper, no hook.
    assert "forward" not in vars(unet)
    assert not unet.up_blocks[-2]._forward_hooks


@pytest.mark.parametrize("shape", ["tiny", "sd15", "sdxl"])
def test_a_shallow_step_at_the_full_steps_inputs_reproduces_the_full_unet(
    shape: str, tiny_image_path: Path
) -> None:
    """With the same latents and timestep, the cached deep features are exact, so the shallow
    path (embeddings, conv_in, first down block, last up block, conv_out) must give what the
    whole UNet gives, to float error; with other inputs it gives something else."""
    unet, extra = _unet(shape, tiny_image_path)
    torch.manual_seed(1)
    sample, t = torch.randn(2, 4, 16, 16), torch.tensor(601)
    other = torch.randn(2, 4, 16, 16)
    counts, handles = _count_calls([unet.mid_block, unet.up_blocks[-1]])
    try:
        with torch.inference_mode():
            expected = unet(sample, t, **extra).sample
            other_expected = unet(other, torch.tensor(501), **extra).sample
            counts[:] = [0, 0]
            with DeepCache(3).around(unet, 10):
                full = unet(sample, t, **extra).sample  # step 0: full
                shallow = unet(sample, t, **extra, return_dict=False)[0]  # step 1: shallow
                stale = unet(other, torch.tensor(501), **extra).sample  # step 2: shallow
    finally:
        for handle in handles:
            handle.remove()
    assert counts == [1, 3]  # the deep branch ran once, the last up block every step
    torch.testing.assert_close(full, expected, rtol=0, atol=0)  # a full step is diffusers'
    torch.testing.assert_close(shallow, expected, rtol=1e-4, atol=1e-5)
    assert shallow.shape == expected.shape
    # On other inputs the deep features are stale: close to the full output, but not it.
    assert not torch.allclose(stale, other_expected, atol=1e-4)


def test_with_deep_cache_compile_leaves_the_unet_eager_and_off_compiles_it(
    tiny_image_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ARTICLEFORGE_IMAGE_COMPILE=true: the UNet is compiled unless DeepCache is on; the VAE
    decoder is compiled either way. torch.compile is lazy, so nothing compiles here."""
    import logging

    from diffusers import AutoPipelineForText2Image
    from torch._dynamo.eval_frame import OptimizedModule

    from services.image.acceleration import accelerate

    cpu = torch.device("cpu")
    kinds = {}
    with caplog.at_level(logging.INFO, logger="services.image.acceleration"):
        for interval in (0, 3):
            pipe = AutoPipelineForText2Image.from_pretrained(tiny_image_path)
            settings = ImageSettings(image_compile=True, image_deep_cache_interval=interval)
            assert accelerate(pipe, settings, cpu).compiled
            kinds[interval] = (type(pipe.unet), type(pipe.vae.decoder))
    assert kinds[0] == (OptimizedModule, OptimizedModule)
    assert kinds[3][0] is not OptimizedModule and kinds[3][1] is OptimizedModule
    said = [r.getMessage() for r in caplog.records]
    assert any("UNet is not compiled" in m and "DEEP_CACHE_INTERVAL=3" in m for m in said), said


def test_a_compiled_unet_takes_its_steps_eagerly(
    tiny_image_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Handed a compiled UNet, full steps run the original module (whose block the hook
    watches) and shallow steps its blocks; the compiled graph is never entered, and its own
    forward comes back afterwards."""
    import logging

    unet, extra = _unet("tiny", tiny_image_path)
    compiled: Any = torch.compile(unet)
    own = compiled.forward
    sample, t = torch.randn(2, 4, 16, 16), torch.tensor(601)
    with torch.inference_mode():
        expected = unet(sample, t, **extra).sample
        with caplog.at_level(logging.WARNING, logger="services.image.deep_cache"):
            with DeepCache(2).around(compiled, 10):
                full = compiled(sample, t, **extra).sample
                shallow = compiled(sample, t, **extra).sample
    torch.testing.assert_close(full, expected, rtol=0, atol=0)
    torch.testing.assert_close(shallow, expected, rtol=1e-4, atol=1e-5)
    assert compiled.forward is own
    assert "forward" not in vars(unet) and not unet.up_blocks[-2]._forward_hooks
    assert any("compiled" in r.getMessage() for r in caplog.records)


def test_the_service_draws_other_images_with_deep_cache_and_the_default_is_unchanged(
    tiny_image_path: Path, image_client: Any
) -> None:
    """Through HTTP, 6 steps at seed 7: on, the image differs from the default server's; the
    default draws exactly what diffusers draws for that seed, with no wrapper left behind."""
    from diffusers import AutoPipelineForText2Image

    from services.image.engine import to_uint8
    from services.image.schedulers import make_scheduler

    body = {**SMALL, "steps": 6, "seed": 7}
    with serve_image(image_deep_cache_interval=3) as client:
        cached = pixels(draw(client, **body)["images"][0]["b64_png"])
        again = pixels(draw(client, **body)["images"][0]["b64_png"])
    plain = pixels(draw(image_client, **body)["images"][0]["b64_png"])
    assert cached.shape == plain.shape == (32, 32, 3)
    assert np.array_equal(cached, again)  # still deterministic for a seed
    assert not np.array_equal(cached, plain)

    pipe = AutoPipelineForText2Image.from_pretrained(tiny_image_path)
    pipe.scheduler = make_scheduler("dpmpp_2m", pipe.scheduler.config)
    with torch.inference_mode():
        out = pipe(
            prompt=["a lighthouse"],
            negative_prompt=[""],
            width=32,
            height=32,
            num_inference_steps=6,
            guidance_scale=ImageSettings().image_default_guidance_scale,
            generator=[torch.Generator("cpu").manual_seed(7)],
            output_type="pt",
        )
    assert np.array_equal(plain, to_uint8(out.images)[0])


def test_deep_cache_and_step_cache_at_once_is_a_settings_error() -> None:
    with pytest.raises(ValidationError) as error:
        ImageSettings(image_step_cache_interval=2, image_deep_cache_interval=3)
    message = str(error.value)
    assert "ARTICLEFORGE_IMAGE_STEP_CACHE_INTERVAL" in message
    assert "ARTICLEFORGE_IMAGE_DEEP_CACHE_INTERVAL" in message
    # Either one alone is fine, and 1 counts as off.
    ImageSettings(image_deep_cache_interval=3)
    ImageSettings(image_step_cache_interval=1, image_deep_cache_interval=3)
    with pytest.raises(ValidationError):
        ImageSettings(image_deep_cache_interval=11)


def test_a_transformer_pipeline_is_left_alone_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A denoiser that is no UNet2DConditionModel runs unchanged; the warning comes once."""
    import logging

    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    expected = layer(x)
    with caplog.at_level(logging.WARNING, logger="services.image.deep_cache"):
        for _ in range(2):
            with DeepCache(3).around(layer, 10):
                assert "forward" not in vars(layer)
                assert torch.equal(layer(x), expected)
    warnings = [r.getMessage() for r in caplog.records if "DEEP_CACHE" in r.getMessage()]
    assert len(warnings) == 1 and "not a UNet2DConditionModel" in warnings[0]
