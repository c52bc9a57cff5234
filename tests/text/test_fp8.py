"""FP8 linear layers (``ARTICLEFORGE_TEXT_QUANTIZATION=fp8``) on the CPU.

* The arithmetic: weights per output channel and activations per token map their largest
  magnitude to 448, round-trip within E4M3's precision, and ``torch._scaled_mm`` (torch's CPU
  reference) gives the product of the dequantized operands.
* The service refuses fp8 where no FP8 tensor cores are, in one sentence, before loading.
* The lean Llama with FP8 layers tracks the float model on the tiny model; FP8 checkpoints in
  the llm-compressor and vLLM layouts load to exactly the quantized-on-load weights; merged and
  unmerged LoRA adapters work beside the FP8 base.

The service never runs fp8 on a CPU, so these tests build the engine's parts with
``allow_cpu_fp8``; speed and the 7B-shape accuracy are measured on a GPU
(``bench/fp8_accuracy.py``, ``bench/text_bench.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from services.common.model_source import ModelLoadError
from services.text import fp8
from services.text.fp8 import FP8, FP8_MAX, Fp8Weight
from services.text.llama import LeanLlama, StepInputs
from services.text.loading import load_text_model
from tests.text.conftest import make_settings, refused_readyz

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
IDS = [1, 17, 305, 44, 912, 7, 88, 600, 23, 5, 400, 61]


def test_weights_are_scaled_per_output_channel_and_round_trip_within_e4m3() -> None:
    torch.manual_seed(0)
    w = torch.randn(48, 64) * torch.logspace(-3, 1, 48)[:, None]  # rows 10,000x apart
    q, scale = fp8.quantize_weight(w)
    assert q.dtype == FP8 and scale.shape == (48,)
    assert torch.allclose(scale, w.abs().amax(dim=1) / FP8_MAX)
    assert torch.equal(q.float().abs().amax(dim=1), torch.full((48,), FP8_MAX))
    back = fp8.dequantize(q, scale)
    # E4M3 keeps 3 mantissa bits: a normal value rounds by at most 1/16 of itself.
    rel = ((back - w).norm(dim=1) / w.norm(dim=1)).max()
    assert rel < 1 / 16
    # Values already on the E4M3 grid (times their scale) come back exactly.
    grid = q.float() * scale[:, None]
    q2, scale2 = fp8.quantize_weight(grid)
    assert torch.equal(q2.float(), q.float()) and torch.allclose(scale2, scale)


def test_activations_are_scaled_per_token_and_a_zero_row_stays_zero() -> None:
    torch.manual_seed(1)
    x = torch.randn(5, 64)
    x[2] = 0
    x[3] *= 1000
    q, scale = fp8.quantize_rows_torch(x)
    assert scale.shape == (5, 1) and q.dtype == FP8
    assert torch.equal(q[2].float(), torch.zeros(64)) and scale[2, 0] == fp8.MIN_SCALE
    assert not torch.isnan(fp8.dequantize(q, scale)).any()
    for row in (0, 1, 3, 4):
        assert q[row].float().abs().max() == FP8_MAX
        assert float(scale[row, 0]) == pytest.approx(float(x[row].abs().max()) / FP8_MAX)
    err = (fp8.dequantize(q, scale) - x).norm(dim=1)[[0, 1, 3, 4]] / x.norm(dim=1)[[0, 1, 3, 4]]
    assert err.max() < 1 / 16


def test_scaled_mm_gives_the_product_of_the_dequantized_operands() -> None:
    torch.manual_seed(2)
    w, x = torch.randn(96, 64), torch.randn(7, 64)
    weight = Fp8Weight.quantize(w)
    y = weight.matmul(x, fp8.quantize_rows_torch)
    ref = weight.reference(x)
    assert y.shape == (7, 96) and y.dtype == x.dtype
    assert ((y - ref).norm() / ref.norm()) < 1e-5  # both accumulate in float32
    exact = x @ w.t()
    assert 0 < ((y - exact).norm() / exact.norm()) < 0.08  # what FP8 costs on random data
    fused = Fp8Weight.cat([Fp8Weight.quantize(w[:32]), Fp8Weight.quantize(w[32:])])
    assert torch.equal(fused.q.float(), weight.q.float()) and torch.equal(fused.scale, weight.scale)


# --- the refusal ----------------------------------------------------------------------------------


def test_fp8_is_refused_on_the_cpu_with_one_sentence(cache_dir: Path, tiny_text_path: Path) -> None:
    reason = fp8.unsupported_reason(torch.device("cpu"))
    assert reason is not None and "FP8 tensor cores" in reason and "runs on cpu" in reason
    settings = make_settings(cache_dir, text_quantization="fp8")
    with pytest.raises(ModelLoadError) as refused:
        load_text_model(settings)
    assert str(refused.value) == reason
    # `serve text` exits before it binds its port, with that sentence alone on stderr.
    env = {**os.environ, "ARTICLEFORGE_TEXT_QUANTIZATION": "fp8", "ARTICLEFORGE_TEXT_PORT": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "serve", "text"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"articleforge serve text: {reason}"
    # In process (a TestClient), /readyz names it instead of a traceback.
    with refused_readyz(settings) as ready:
        assert ready["error"]["message"] == reason


# --- the lean Llama with FP8 layers ---------------------------------------------------------------


def _logits(settings: Any, ids: list[int] = IDS) -> torch.Tensor:
    loaded = load_text_model(settings, allow_cpu_fp8=True)
    adapters = [a for a in loaded.served.values() if a != "__base__"]
    lean = LeanLlama(loaded.model, adapters, 64, settings.text_quantization == "fp8")
    tensor = torch.tensor(ids)
    inputs = StepInputs(slots=None)
    if adapters:
        inputs.lora_rows = torch.ones(len(ids), dtype=torch.int64)
    return lean.forward(tensor, torch.arange(len(ids)), inputs, None, None, None).float()


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_fp8_layers_track_the_float_model(cache_dir: Path, tiny_text_path: Path) -> None:
    ref = _logits(make_settings(cache_dir))
    test = _logits(make_settings(cache_dir, text_quantization="fp8"))
    err = _close(test, ref)
    assert 0 < err < 0.05, err  # changed, and by FP8's rounding only
    assert (test.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9


def test_the_fp8_engine_generates_and_its_layers_hold_e4m3(cache_dir: Path) -> None:
    from services.text.engine import TextEngine
    from services.text.schemas import Prompt, SamplingParams

    settings = make_settings(cache_dir, text_quantization="fp8", text_kv_cache_tokens=512)
    loaded = load_text_model(settings, allow_cpu_fp8=True)
    engine = TextEngine(settings, loaded)
    engine.warmup()
    lean = engine.runner.model  # type: ignore[union-attr]
    layer = lean.layers[0]
    assert layer.qkv.fp8 is not None and layer.qkv.fp8.q.dtype == FP8
    assert layer.qkv.weight is None and lean.lm_head.dtype == torch.float32
    assert loaded.model.model.layers[0].mlp.down_proj.weight.numel() == 0  # bf16 copy freed
    request = engine.prepare(
        Prompt(text="Solar power"), SamplingParams(max_new_tokens=6, temperature=0), None, "fp8"
    )
    engine.start()

    async def run() -> Any:
        return await engine.submit(request).wait()

    try:
        result = asyncio.run(asyncio.wait_for(run(), timeout=60))
    finally:
        engine.shutdown()
    assert result.usage.completion_tokens == 6


# --- FP8 checkpoints ------------------------------------------------------------------------------


def write_fp8_checkpoint(src: Path, dst: Path, layout: str) -> Path:
    """The tiny model as an FP8 checkpoint: llm-compressor's `compressed-tensors` (per
    channel, scale [out, 1]) or vLLM/AutoFP8's `fp8` (per tensor, a scalar scale)."""
    shutil.copytree(src, dst)
    tensors = load_file(str(src / "model.safetensors"))
    for key in [k for k in tensors if k.endswith(".weight") and k.split(".")[-2] in LINEARS]:
        w = tensors[key].float()
        if layout == "compressed-tensors":
            q, scale = fp8.quantize_weight(w)
            scale = scale[:, None]
        else:
            scale = w.abs().max() / FP8_MAX
            q = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        tensors[key] = q.contiguous()
        tensors[key.removesuffix("weight") + "weight_scale"] = scale.float().contiguous()
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    if layout == "compressed-tensors":
        config["quantization_config"] = {
            "quant_method": "compressed-tensors",
            "format": "float-quantized",
            "config_groups": {
                "group_0": {
                    "targets": ["Linear"],
                    "weights": {"num_bits": 8, "type": "float", "strategy": "channel"},
                    "input_activations": {
                        "num_bits": 8, "type": "float", "strategy": "token", "dynamic": True,
                    },
                }
            },
            "ignore": ["lm_head"],
        }  # fmt: skip
    else:
        config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic"}
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("layout", ["compressed-tensors", "fp8"])
def test_fp8_checkpoints_load_with_their_own_scales(
    cache_dir: Path, tiny_text_path: Path, tmp_path: Path, layout: str
) -> None:
    folder = write_fp8_checkpoint(tiny_text_path, tmp_path / layout, layout)
    saved = load_file(str(folder / "model.safetensors"))
    settings = make_settings(cache_dir, text_model=str(folder), text_quantization="fp8")
    loaded = load_text_model(settings, allow_cpu_fp8=True)
    lean = LeanLlama(loaded.model, [], 64, True)
    down = lean.layers[1].down.fp8
    assert down is not None
    assert torch.equal(down.q.float(), saved["model.layers.1.mlp.down_proj.weight"].float())
    expected = saved["model.layers.1.mlp.down_proj.weight_scale"].float().reshape(-1)
    assert torch.equal(down.scale.reshape(-1), expected.expand(down.out_features))
    logits = _logits(settings)
    ref = _logits(make_settings(cache_dir))
    assert _close(logits, ref) < 0.08
    if layout == "compressed-tensors":  # the same per-channel quantization as on load
        on_load = _logits(make_settings(cache_dir, text_quantization="fp8"))
        assert torch.equal(logits, on_load)
    # Served without fp8, the checkpoint is refused with what to set.
    with pytest.raises(ModelLoadError, match="ARTICLEFORGE_TEXT_QUANTIZATION=fp8"):
        load_text_model(make_settings(cache_dir, text_model=str(folder)))


# --- adapters -------------------------------------------------------------------------------------


def test_a_merged_adapter_is_quantized_with_the_base(cache_dir: Path, tiny_adapter: Path) -> None:
    adapter = f"writer={tiny_adapter}"
    base = _logits(make_settings(cache_dir, text_quantization="fp8"))
    merged = _logits(make_settings(cache_dir, text_adapter=adapter))
    fp8_merged = _logits(make_settings(cache_dir, text_adapter=adapter, text_quantization="fp8"))
    # The adapter (random and large, init_lora_weights=False) moves the logits by ~140 %;
    # FP8 of the merged weights moves them by ~8 %.
    assert _close(fp8_merged, merged) < 0.1
    assert _close(base, merged) > 10 * _close(fp8_merged, merged)  # the adapter is in there


def test_an_unmerged_adapter_runs_in_full_precision_beside_the_fp8_base(
    cache_dir: Path, tiny_text_path: Path, tiny_adapter: Path, tmp_path: Path
) -> None:
    folder = write_fp8_checkpoint(tiny_text_path, tmp_path / "ckpt", "compressed-tensors")
    settings = make_settings(
        cache_dir, text_model=str(folder), text_quantization="fp8", text_adapter=f"w={tiny_adapter}"
    )
    loaded = load_text_model(settings, allow_cpu_fp8=True)
    assert not loaded.merged  # E4M3 values with scales are not merged into
    lean = LeanLlama(loaded.model, ["w"], 64, True)
    qkv = lean.layers[0].qkv
    assert qkv.fp8 is not None and qkv.lora is not None
    assert qkv.lora[0].dtype == torch.float32  # the model's own dtype, not E4M3
    with_adapter = _logits(settings)
    merged_float = _logits(make_settings(cache_dir, text_adapter=f"w={tiny_adapter}"))
    base_fp8 = _logits(make_settings(cache_dir, text_model=str(folder), text_quantization="fp8"))
    assert _close(with_adapter, merged_float) < 0.1
    assert _close(base_fp8, merged_float) > 10 * _close(with_adapter, merged_float)
