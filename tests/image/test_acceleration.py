"""What the CUDA fast path adds, checked on the CPU with the tiny pipeline.

torch.compile itself is not run here (on the CPU it takes minutes per shape; the GPU benchmark
runs it); what runs is the engine's side of it: the settings, the bucket padding and its
"compiling" log, the warm-up sizes, the PNG level, and tiny-VAE previews.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from services.image.acceleration import Acceleration
from services.image.config import ImageSettings
from services.image.infotext import ImageParameters, encode_png, read_parameters
from tests.image.conftest import SMALL, serve_image, sse_events


def test_buckets_default_to_powers_of_two_up_to_the_largest_batch() -> None:
    assert ImageSettings().batch_buckets() == [1, 2, 4, 8]
    assert ImageSettings(image_max_batch_size=12).batch_buckets() == [1, 2, 4, 8, 12]
    assert ImageSettings(image_batch_buckets="8, 1,4").batch_buckets() == [1, 4, 8]
    assert ImageSettings(image_warmup_sizes="512x512, 768X512").warmup_sizes() == [
        (512, 512),
        (768, 512),
    ]


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"image_batch_buckets": "1,2"}, ["ARTICLEFORGE_IMAGE_BATCH_BUCKETS", "(8)"]),
        ({"image_batch_buckets": "1,x"}, ["ARTICLEFORGE_IMAGE_BATCH_BUCKETS", "integers"]),
        ({"image_batch_buckets": "0,8"}, ["at least 1"]),
        ({"image_warmup_sizes": "512"}, ["ARTICLEFORGE_IMAGE_WARMUP_SIZES", "WIDTHxHEIGHT"]),
        ({"image_warmup_sizes": "510x512"}, ["510x512", "multiple of 8"]),
        ({"image_png_compress_level": 10}, ["image_png_compress_level"]),
    ],
)
def test_bad_acceleration_settings_say_which_and_why(
    overrides: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(ValidationError) as error:
        ImageSettings(**overrides)
    for word in words:
        assert word in str(error.value)


def test_a_bucket_rounds_up_and_only_with_compile() -> None:
    compiled = Acceleration(compiled=True, buckets=[1, 4, 8])
    assert [compiled.bucket(n) for n in (1, 2, 3, 4, 5, 8)] == [1, 4, 4, 4, 8, 8]
    assert Acceleration(compiled=False, buckets=[1, 4, 8]).bucket(3) == 3
    assert compiled.note_shape((512, 512, 4, True)) is True
    assert compiled.note_shape((512, 512, 4, True)) is False
    assert Acceleration(compiled=False).note_shape((512, 512, 1, True)) is False


def test_png_level_trades_size_for_time_and_keeps_the_parameters() -> None:
    # A smooth gradient compresses (noise would not): level 0 stores, 9 squeezes hardest.
    ramp = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
    params = ImageParameters("a ramp", "", 2, "euler", 7.0, 3, 64, 64, "tiny")
    sizes = [len(encode_png(ramp, params, compress_level=level)) for level in (0, 1, 9)]
    assert sizes[0] > sizes[1] >= sizes[2]
    assert read_parameters(encode_png(ramp, params, compress_level=1)) == params


async def _draw(engine: Any, **body: Any) -> Any:
    from services.image.schemas import ImageParams

    params = ImageParams(prompt="a lighthouse", **{**SMALL, **body})
    handle = engine.submit(engine.prepare(params, f"test-{body.get('seed')}"))
    return await handle.wait()


def _png_pixels(png: bytes | None) -> np.ndarray:
    assert png is not None
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def test_bucket_padding_keeps_each_image_and_logs_a_shape_it_compiles(
    tiny_image_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With compile on, 3 images run padded to a batch of 4; the padded row is thrown away.

    The engine is told it is compiled (its Acceleration) without torch.compile, so that the
    padding and the bookkeeping run on the CPU in seconds."""
    from services.image.engine import ImageEngine
    from services.image.loading import load_image_pipeline

    settings = ImageSettings(image_default_steps=2, image_max_batch_size=4)
    loaded = load_image_pipeline(settings)

    async def run() -> tuple[Any, Any, Any]:
        engine = ImageEngine(settings, loaded)
        await asyncio.wrap_future(engine.start())
        try:
            plain = await _draw(engine, n=3, seed=21)
            loaded.acceleration = Acceleration(compiled=True, buckets=[1, 4])
            with caplog.at_level(logging.WARNING, logger="services.image.engine"):
                padded = await _draw(engine, n=3, seed=21)
                again = await _draw(engine, n=2, seed=40)
            return plain, padded, again
        finally:
            engine.shutdown()

    plain, padded, again = asyncio.run(run())
    assert [i.seed for i in padded.images] == [21, 22, 23]
    assert padded.batch_size == 3  # the reply counts the request's images, not the padding
    for a, b in zip(plain.images, padded.images, strict=True):
        # Another batch shape may reorder float sums in CPU kernels: one level at most.
        assert np.abs(_png_pixels(a.png) - _png_pixels(b.png)).max() <= 1
    compiling = [r.getMessage() for r in caplog.records if "compiling for" in r.getMessage()]
    # The first padded call compiles 32x32 at batch 4; the second (2 -> 4) reuses it.
    assert len(compiling) == 1, compiling
    assert "32x32, batch of 4" in compiling[0]
    assert len(again.images) == 2


def test_the_batcher_cuts_or_pads_by_the_measured_step_times(tiny_image_path: Path) -> None:
    """5 waiting images with buckets 1/2/4/8: 4 + 1 when the batch of 8 is slow, else 8 padded.

    The engine is told it is compiled (as above), and what the step times of each bucket are;
    the batcher's choice shows in each reply's batch size."""
    from services.image.engine import ImageEngine
    from services.image.loading import load_image_pipeline

    settings = ImageSettings(
        image_default_steps=2, image_batch_wait_ms=1000, image_batch_quiet_ms=0
    )
    loaded = load_image_pipeline(settings)

    def told(eight_costs: float) -> Acceleration:
        accel = Acceleration(compiled=True, buckets=[1, 2, 4, 8])
        # Seconds per 2-step call of each bucket at 32x32 with guidance: 4 images per 0.4 s...
        for size, seconds in ((1, 0.15), (2, 0.25), (4, 0.4), (8, eight_costs)):
            accel.observe((32, 32, size, True), 2, seconds)
        return accel

    async def run() -> list[list[int]]:
        engine = ImageEngine(settings, loaded)
        await asyncio.wrap_future(engine.start())
        sizes = []
        try:
            for eight_costs in (2.0, 0.5):
                loaded.acceleration = told(eight_costs)
                replies = await asyncio.gather(*(_draw(engine, seed=60 + k) for k in range(5)))
                sizes.append(sorted(reply.batch_size for reply in replies))
            return sizes
        finally:
            engine.shutdown()
            loaded.acceleration = Acceleration()

    cut, padded = asyncio.run(run())
    # ...against 5 real images per 2.0 s padded to 8: cutting to 4 draws 10 images/s, not 2.5.
    assert cut == [1, 4, 4, 4, 4]
    # ...against 5 per 0.5 s (10/s, like 4 per 0.4 s): a tie goes to the larger batch.
    assert padded == [5, 5, 5, 5, 5]


def test_call_times_part_the_fixed_cost_from_the_cost_per_step() -> None:
    """A bucket timed at 2 and 25 steps is judged on a line through both at any other count;
    calls of another step count never bend the figure for the one a request asks for.

    The H200 showed why (SD-Turbo, buckets 1/4): after 1-step calls, whose time is mostly the
    fixed part, were counted as a time per step, the batch of 4 looked four times slower than
    it is at 4 steps, and 4-step requests ran one by one."""
    accel = Acceleration(compiled=True, buckets=[1, 4])
    one, four = (512, 512, 1, False), (512, 512, 4, False)
    # Warm-up figures: 0.02 s fixed + 0.009 s per step alone; 0.04 s + 0.012 s per step for 4.
    for key, fixed, per_step in ((one, 0.02, 0.009), (four, 0.04, 0.012)):
        for steps in (25, 2):
            accel.observe(key, steps, fixed + per_step * steps, warmup=True)
    assert accel.call_time(four, 4) == pytest.approx(0.04 + 0.048)
    assert accel.call_time(one, 25) == pytest.approx(0.245)
    # Real 1-step calls of the batch of 4 (0.074 s, as measured) join the line's points...
    for _ in range(5):
        accel.observe(four, 1, 0.074)
    assert accel.call_time(four, 1) == pytest.approx(0.074)
    # ...bending the line a little (4 steps: about 0.1 s, not the 0.3 s that a time per step
    # of 0.074 s would give), so 4 waiting 4-step requests still run as one batch: 4 images
    # per ~0.1 s against 1 per ~0.056 s.
    estimate = accel.call_time(four, 4)
    assert estimate is not None and 0.085 < estimate < 0.105
    batch = accel.images_per_second(512, 512, 4, False, 4)
    alone = accel.images_per_second(512, 512, 1, False, 4)
    assert batch > 2 * alone
    # A shape measured at one step count only scales in proportion to the steps.
    single = Acceleration(compiled=True, buckets=[1])
    single.observe(one, 10, 0.1)
    assert single.call_time(one, 20) == pytest.approx(0.2)
    assert single.call_time((64, 64, 1, False), 20) is None  # never measured


def test_the_batch_window_closes_when_requests_stop_arriving(tiny_image_path: Path) -> None:
    """A lone request waits the quiet time, not the whole window; a burst still meets."""
    import time

    from services.image.engine import ImageEngine
    from services.image.loading import load_image_pipeline

    settings = ImageSettings(
        image_default_steps=2, image_batch_wait_ms=4000, image_batch_quiet_ms=300
    )
    loaded = load_image_pipeline(settings)

    async def run() -> tuple[Any, list[Any]]:
        engine = ImageEngine(settings, loaded)
        await asyncio.wrap_future(engine.start())
        try:
            lone = await _draw(engine, seed=70)

            async def later(k: int) -> Any:
                await asyncio.sleep(0.05 * k)  # arrivals 50 ms apart, inside the quiet time
                return await _draw(engine, seed=80 + k)

            started = time.monotonic()
            spread = await asyncio.gather(*(later(k) for k in range(3)))
            assert time.monotonic() - started < 3.5  # the 4 s window did not run out
            return lone, spread
        finally:
            engine.shutdown()

    lone, spread = asyncio.run(run())
    assert 0.25 < lone.queue_seconds < 2.0  # waited for the quiet time (300 ms), not 4 s
    assert [reply.batch_size for reply in spread] == [3, 3, 3]


def test_warmup_runs_every_size_the_settings_name(
    tiny_image_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from services.image.engine import ImageEngine
    from services.image.loading import load_image_pipeline

    settings = ImageSettings(image_default_steps=2, image_warmup_sizes="32x32,48x32")
    engine = ImageEngine(settings, load_image_pipeline(settings))

    async def start() -> None:
        await asyncio.wrap_future(engine.start())

    with caplog.at_level(logging.INFO, logger="services.image.engine"):
        asyncio.run(start())
    engine.shutdown()
    warmups = [r.getMessage() for r in caplog.records if "warm-up" in r.getMessage()]
    assert any("warm-up 32x32, batch of 1" in m for m in warmups), warmups
    assert any("warm-up 48x32, batch of 1" in m for m in warmups), warmups


def test_a_compiled_warmup_times_each_bucket_at_two_step_counts(tiny_image_path: Path) -> None:
    """The engine is told it is compiled (as above): each bucket is timed at the default step
    count and at 2 steps, as provisional figures that real calls replace."""
    from services.image.engine import ImageEngine
    from services.image.loading import load_image_pipeline

    settings = ImageSettings(
        image_default_steps=3, image_batch_buckets="1,2", image_max_batch_size=2
    )
    loaded = load_image_pipeline(settings)
    loaded.acceleration = Acceleration(compiled=True, buckets=[1, 2])
    engine = ImageEngine(settings, loaded)

    async def start() -> None:
        await asyncio.wrap_future(engine.start())

    asyncio.run(start())
    engine.shutdown()
    accel = loaded.acceleration
    width, height = loaded.default_width, loaded.default_height
    for size in (1, 2):
        key = (width, height, size, settings.image_default_guidance_scale > 1)
        assert sorted(accel.call_seconds[key]) == [2, 3]
        assert {(key, 2), (key, 3)} <= accel.provisional
        assert all(seconds > 0 for seconds in accel.call_seconds[key].values())


def test_tiny_vae_previews_are_full_size(tiny_image_path: Path, tmp_path: Path) -> None:
    """ARTICLEFORGE_IMAGE_PREVIEW_VAE: previews decoded by a (here random, tiny) TAESD."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    taesd: Any = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    )
    taesd.save_pretrained(tmp_path / "taesd")
    with serve_image(image_preview_every=1, image_preview_vae=str(tmp_path / "taesd")) as client:
        body = {"prompt": "a lighthouse", **SMALL, "steps": 2, "seed": 3, "stream": True}
        with client.stream("POST", "/v1/images", json=body) as response:
            assert response.status_code == 200
            events = list(sse_events(response.iter_lines()))
    progress = [json.loads(data) for kind, data in events if kind == "progress"]
    assert len(progress) == 2 and all("preview_b64" in p for p in progress)
    preview = Image.open(io.BytesIO(base64.b64decode(progress[-1]["preview_b64"])))
    # TAESD upsamples the 16x16 latent 8x; the linear map would give 16x16.
    assert preview.size == (128, 128)
    assert events[-1][0] == "result"


def test_step_cache_skips_denoiser_calls_in_the_middle_of_the_schedule(
    tiny_image_path: Path,
) -> None:
    """ARTICLEFORGE_IMAGE_STEP_CACHE_INTERVAL=2 at 10 steps: steps 2..7 call the UNet every
    other step (6 middle steps, 3 calls), so 7 calls instead of 10; the image changes a little,
    and the module is left as it was."""
    from services.image.acceleration import StepCache
    from services.image.engine import ImageEngine
    from services.image.loading import load_image_pipeline

    assert [StepCache(2).runs(i, 10) for i in range(10)] == [
        True, True, True, False, True, False, True, False, True, True
    ]  # fmt: skip
    assert all(StepCache(1).runs(i, 10) for i in range(10))

    plain_settings = ImageSettings(image_default_steps=2)
    cached_settings = ImageSettings(image_default_steps=2, image_step_cache_interval=2)
    loaded = load_image_pipeline(plain_settings)
    unet = loaded.pipe.unet
    calls = []
    hook = unet.conv_in.register_forward_hook(lambda *_: calls.append(1))

    async def draw_with(settings: ImageSettings) -> Any:
        engine = ImageEngine(settings, loaded)
        await asyncio.wrap_future(engine.start())
        try:
            calls.clear()
            result = await _draw(engine, steps=10, seed=5)
            return result, len(calls)
        finally:
            engine.shutdown()

    try:
        plain, plain_calls = asyncio.run(draw_with(plain_settings))
        cached, cached_calls = asyncio.run(draw_with(cached_settings))
    finally:
        hook.remove()
    assert (plain_calls, cached_calls) == (10, 7)
    assert "forward" not in vars(unet)  # the wrapper is gone after the call
    a, b = _png_pixels(plain.images[0].png), _png_pixels(cached.images[0].png)
    assert a.shape == b.shape and not np.array_equal(a, b)
