"""PEFT adapters: merged on a full-precision base, unmerged on request, picked by `model`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import torch

from services.text.loading import load_text_model
from tests.text.conftest import live_server, make_settings, ready_client

PROMPT = "Write an article about solar power."
TEXT = "Solar panels turn sunlight into electricity for homes and farms."


def greedy(client: object, model: str | None = None) -> str:
    body = {"prompt": PROMPT, "temperature": 0, "max_new_tokens": 24}
    if model:
        body["model"] = model
    response = client.post("/v1/generate", json=body)  # type: ignore[attr-defined]
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


def ppl(client: object, model: str | None = None) -> float:
    body: dict = {"texts": [TEXT]}
    if model:
        body["model"] = model
    return float(client.post("/v1/perplexity", json=body).json()["results"][0]["mean_nll"])  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def base_outputs(cache_dir: Path, tiny_text_path: Path) -> tuple[str, float]:
    with ready_client(make_settings(cache_dir)) as client:
        return greedy(client), ppl(client)


def test_merged_adapter_changes_the_output(
    cache_dir: Path, tiny_adapter: Path, base_outputs: tuple[str, float]
) -> None:
    settings = make_settings(cache_dir, text_adapter=f"writer={tiny_adapter}")
    with ready_client(settings) as client:
        models = client.get("/v1/models").json()["data"]
        assert [(m["id"], m["merged"], m["parent"]) for m in models] == [("writer", True, "tiny")]
        assert greedy(client) != base_outputs[0]
        assert ppl(client) != pytest.approx(base_outputs[1], abs=1e-4)
        # After a merge the bare base is no longer served; asking for it is an honest 404.
        response = client.post("/v1/generate", json={"prompt": "x", "model": "tiny"})
        assert response.status_code == 404


def test_unmerged_adapter_gives_the_same_logits_as_merged(
    cache_dir: Path, tiny_adapter: Path
) -> None:
    merged = load_text_model(make_settings(cache_dir, text_adapter=f"writer={tiny_adapter}"))
    unmerged = load_text_model(
        make_settings(cache_dir, text_adapter=f"writer={tiny_adapter}", text_merge_adapter=False)
    )
    assert merged.merged and not unmerged.merged
    ids = merged.tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.inference_mode():
        a = merged.model(input_ids=ids).logits
        b = unmerged.model(input_ids=ids).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_model_field_picks_adapter_or_base_even_in_one_batch(
    cache_dir: Path, tiny_adapter: Path, base_outputs: tuple[str, float]
) -> None:
    merged_settings = make_settings(cache_dir, text_adapter=f"writer={tiny_adapter}")
    with ready_client(merged_settings) as client:
        merged_text, merged_nll = greedy(client), ppl(client)

    settings = make_settings(
        cache_dir,
        text_adapter=f"writer={tiny_adapter}",
        text_merge_adapter=False,
        text_batch_wait_ms=200,
    )
    with live_server(settings) as base:
        names = {m["id"]: m for m in httpx.get(f"{base}/v1/models").json()["data"]}
        assert set(names) == {"tiny", "writer"}
        assert names["writer"]["merged"] is False

        async def both() -> list[str]:
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                replies = await asyncio.gather(
                    *(
                        client.post(
                            "/v1/generate",
                            json={
                                "prompt": PROMPT,
                                "temperature": 0,
                                "max_new_tokens": 24,
                                "model": m,
                            },
                        )
                        for m in ("tiny", "writer", "tiny", "writer")
                    )
                )
            return [r.json()["text"] for r in replies]

        texts = asyncio.run(both())
        client = httpx.Client(base_url=base, timeout=60)
        default_nll = ppl(client)  # the adapter is the default when `model` is absent
        base_nll = ppl(client, "tiny")

    assert texts == [base_outputs[0], merged_text, base_outputs[0], merged_text]
    assert default_nll == pytest.approx(merged_nll, abs=1e-4)
    assert base_nll == pytest.approx(base_outputs[1], abs=1e-4)


def test_malformed_adapter_setting_fails_at_start_up(cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="`path` or `name=path`"):
        make_settings(cache_dir, text_adapter="bad name=/x")
    with pytest.raises(ValueError, match="names 'a' twice"):
        make_settings(cache_dir, text_adapter="a=/x,a=/y")
    # `runs/tiny` would be called `tiny`, like the base model: refused, with the fix.
    with pytest.raises(ValueError, match="ARTICLEFORGE_TEXT_ADAPTER=writer=runs/tiny"):
        make_settings(cache_dir, text_adapter="runs/tiny")
