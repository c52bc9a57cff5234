"""Every seed the gateway accepts is one the services accept: the largest seed each request schema
allows (read from the schema itself) goes through a whole article, or a whole regeneration, and
ends `succeeded`; one past it is a 422 naming the field and the limit.

The whole system runs as real processes (text, image and gateway servers, a worker, tiny models,
the real Redis, database 15), as in tests/e2e. The bug this guards: `images.seed` once went up to
2**63 - 1 while the image service stops at 2**32 - 1, so such an article was queued and then
failed at its image stage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from services.gateway.editorial_schemas import ImageRegenerate, SectionRegenerate
from services.gateway.schemas import ImageOptions, TextOptions
from tests.e2e.stack import Stack, stack
from tests.processes import until

pytestmark = pytest.mark.e2e

IMAGES = {"steps": 2, "size": "64x64", "scheduler": "euler"}


@pytest.fixture(scope="module")
def system(
    cache_dir: Path, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[Stack]:
    env = {"OMP_NUM_THREADS": "1"}
    with stack(cache_dir, tmp_path_factory.mktemp("seeds"), redis_url, 2, env) as s:
        yield s


@pytest.fixture(scope="module")
def client(system: Stack) -> Iterator[httpx.Client]:
    with system.client() as c:
        yield c


def _until(what: str, check: Callable[[], Any], timeout: float = 180) -> Any:
    return until(what, check, timeout, every=0.3)


def largest_seed(model: type[BaseModel]) -> int:
    """The `maximum` of ``model.seed`` in its JSON schema (exact: the OpenAPI page renders
    bounds as JSON numbers, and 2**63 - 1 does not survive that)."""
    field = model.model_json_schema()["properties"]["seed"]
    return int(max(s["maximum"] for s in field.get("anyOf", [field]) if "maximum" in s))


def _article(client: httpx.Client, text_seed: int, images: dict[str, Any]) -> str:
    body = {
        "topic": "Rooftop solar for homeowners",
        "target_words": 100,
        "sections": 1,
        "text": {"seed": text_seed},
        "images": {**IMAGES, **images},
    }
    accepted = client.post("/v1/articles", json=body)
    assert accepted.status_code == 202, accepted.text
    return str(accepted.json()["id"])


def _finished(client: httpx.Client, article_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status = dict(client.get(f"/v1/articles/{article_id}").json())
        return status if status["status"] in ("succeeded", "failed", "cancelled") else None

    return dict(_until(f"article {article_id}", done))


def _refused(response: httpx.Response, param: str, limit: int) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert str(limit) in error["message"], error


def test_the_largest_article_seeds_make_an_article_and_one_more_is_a_422(
    client: httpx.Client,
) -> None:
    text_max = largest_seed(TextOptions)
    image_max = largest_seed(ImageOptions)

    # One image at the largest seed; two images whose second one lands on it (image k: seed + k).
    one = _article(client, text_max, {"count": 1, "seed": image_max})
    two = _article(client, text_max, {"count": 2, "seed": image_max - 1})
    for article_id, seeds in ((one, [image_max]), (two, [image_max - 1, image_max])):
        status = _finished(client, article_id)
        assert status["status"] == "succeeded", status.get("error")
        article = status["article"]
        assert article["provenance"]["seeds"] == {"text": text_max, "images": seeds}
        assert [image["seed"] for image in article["images"]] == seeds

    base = {"topic": "Rooftop solar for homeowners", "target_words": 100, "sections": 1}
    too_big_text = client.post("/v1/articles", json={**base, "text": {"seed": text_max + 1}})
    _refused(too_big_text, "text.seed", text_max)
    too_big_image = {**base, "images": {**IMAGES, "count": 1, "seed": image_max + 1}}
    _refused(client.post("/v1/articles", json=too_big_image), "images.seed", image_max)
    # Two images from the largest seed: the second would need one past it.
    past_the_end = {**base, "images": {**IMAGES, "count": 2, "seed": image_max}}
    _refused(client.post("/v1/articles", json=past_the_end), "images.seed", image_max)


def test_the_largest_regeneration_seeds_make_a_revision_and_one_more_is_a_422(
    client: httpx.Client,
) -> None:
    article_id = _article(client, 3, {"count": 1, "seed": 5})
    assert _finished(client, article_id)["status"] == "succeeded"

    for kind, model, revision in (
        ("sections", SectionRegenerate, 2),
        ("images", ImageRegenerate, 3),
    ):
        seed = largest_seed(model)
        path = f"/v1/articles/{article_id}/{kind}/0/regenerate"
        _refused(client.post(path, json={"seed": seed + 1}), "seed", seed)
        accepted = client.post(path, json={"seed": seed})
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["revision"] == revision

        def edited(revision: int = revision) -> dict[str, Any] | None:
            status = dict(client.get(f"/v1/articles/{article_id}").json())
            edit = status.get("edit") or {}
            ended = edit.get("revision") == revision and edit["status"] in ("succeeded", "failed")
            return status if ended else None

        status = _until(f"revision {revision}", edited)
        assert status["edit"]["status"] == "succeeded", status["edit"]
        assert status["revision"] == revision
        seeds = status["article"]["provenance"]["seeds"]
        if kind == "sections":
            assert seeds["sections"] == {"0": seed}
        else:
            assert seeds["images"] == [seed]
            assert status["article"]["images"][0]["seed"] == seed
