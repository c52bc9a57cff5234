"""nf4 through bitsandbytes on the CPU: the seed paper's quantized serving path."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.text.loading import load_text_model
from tests.text.conftest import make_settings, ready_client

TEXT = "Solar panels turn sunlight into electricity for homes and farms."


def test_nf4_loads_4bit_layers_with_the_papers_settings(
    cache_dir: Path, tiny_text_path: Path
) -> None:
    import bitsandbytes as bnb
    import torch

    loaded = load_text_model(make_settings(cache_dir, text_quantization="nf4"))
    layer = loaded.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    assert layer.weight.quant_type == "nf4"
    assert layer.compute_dtype == torch.bfloat16
    assert loaded.model.config.quantization_config.bnb_4bit_use_double_quant is False


def test_nf4_serves_with_an_unmerged_adapter(cache_dir: Path, tiny_adapter: Path) -> None:
    full = make_settings(cache_dir, text_adapter=f"writer={tiny_adapter}")
    with ready_client(full) as client:
        full_nll = client.post("/v1/perplexity", json={"texts": [TEXT]}).json()["results"][0]

    settings = make_settings(
        cache_dir, text_quantization="nf4", text_adapter=f"writer={tiny_adapter}"
    )
    with ready_client(settings) as client:
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert models["writer"]["merged"] is False  # adapters stay unmerged on an nf4 base
        reply = client.post(
            "/v1/generate", json={"prompt": "Solar power", "temperature": 0, "max_new_tokens": 8}
        )
        assert reply.status_code == 200
        assert reply.json()["usage"]["completion_tokens"] == 8
        nf4_nll = client.post("/v1/perplexity", json={"texts": [TEXT]}).json()["results"][0]
    # 4-bit weights shift the scores a little, not wholesale.
    assert nf4_nll["tokens"] == full_nll["tokens"]
    assert nf4_nll["mean_nll"] == pytest.approx(full_nll["mean_nll"], rel=0.05)
