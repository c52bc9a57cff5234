"""The editorial loop as a CMS drives it, against the whole system as real processes (text,
image and gateway servers, two workers, tiny models, the real Redis, database 10) and a local
webhook receiver: outline review -> edited outline -> continue -> regenerate section 2 -> redraw
image 1. Revisions 1..3 are all readable, every webhook is signed, and the images of revision 1
are still served after image 1 was redrawn."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image
from standardwebhooks import Webhook

from tests.e2e.stack import SECRET, Stack, stack
from tests.processes import until

pytestmark = pytest.mark.e2e

API_KEY = "sk-editorial-e2e"


@pytest.fixture(scope="module")
def system(
    cache_dir: Path, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[Stack]:
    env = {"ARTICLEFORGE_API_KEYS": API_KEY, "OMP_NUM_THREADS": "1"}
    with stack(cache_dir, tmp_path_factory.mktemp("editorial"), redis_url, 2, env) as s:
        yield s


def _until(what: str, check: Callable[[], Any], timeout: float = 180) -> Any:
    return until(what, check, timeout, every=0.3)


def _verified_hooks(system: Stack, article_id: str) -> list[tuple[dict[str, str], dict]]:
    found = []
    for headers, raw in list(system.deliveries):
        event = Webhook(SECRET).verify(raw, headers)  # raises on a bad signature
        key = base64.b64decode(SECRET.removeprefix("whsec_"))
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + raw
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        assert headers["webhook-signature"] == f"v1,{expected}"
        if event["data"]["id"] == article_id:
            found.append((headers, event))
    return found


def test_review_edit_continue_regenerate_redraw(system: Stack) -> None:
    client = httpx.Client(
        base_url=system.gateway, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
    )

    def status(**params: Any) -> dict[str, Any]:
        response = client.get(f"/v1/articles/{article_id}", params=params)
        assert response.status_code == 200, response.text
        return dict(response.json())

    body = {
        "topic": "Rooftop solar for homeowners",
        "target_words": 150,
        "sections": 3,
        "review": "outline",
        "images": {"count": 2, "steps": 2, "size": "64x64", "seed": 21, "scheduler": "euler"},
        "webhook": {"url": system.hook_url},
        "metadata": {"cms_post_id": 7},
    }
    accepted = client.post("/v1/articles", json=body, headers={"Idempotency-Key": "e2e-ed-1"})
    assert accepted.status_code == 202, accepted.text
    article_id = accepted.json()["id"]

    # 1. The outline waits for review, announced by a webhook.
    waiting = _until(
        "awaiting_review", lambda: (s := status())["status"] == "awaiting_review" and s
    )
    assert waiting["outline"]["headings"] and waiting["article"] is None
    _until("the review webhook", lambda: _verified_hooks(system, article_id))
    early = client.post(f"/v1/articles/{article_id}/sections/0/regenerate")
    assert early.status_code == 409  # nothing written yet

    # 2. The editor rewrites the outline; writing continues from it.
    outline = {
        "title": "Solar on Your Roof: Costs, Savings, Next Steps",
        "headings": ["What it costs", "What it saves", "How to start"],
    }
    edited = client.put(f"/v1/articles/{article_id}/outline", json=outline)
    assert edited.status_code == 202, edited.text
    first = _until("revision 1", lambda: (s := status())["status"] == "succeeded" and s)
    revision_1 = first["article"]
    assert first["revision"] == revision_1["revision"] == 1
    assert revision_1["title"] == outline["title"]
    assert [s["heading"] for s in revision_1["sections"]] == outline["headings"]
    assert revision_1["seo_title"] and revision_1["json_ld"]["headline"] == outline["title"]

    # 3. Regenerate section 2 (the third, 0-based as in `sections`).
    regenerated = client.post(
        f"/v1/articles/{article_id}/sections/2/regenerate",
        json={"instructions": "end with a checklist", "seed": 5, "temperature": 0.9},
    )
    assert regenerated.status_code == 202, regenerated.text
    assert regenerated.json()["revision"] == 2
    second = _until("revision 2", lambda: (s := status())["revision"] == 2 and s)
    revision_2 = second["article"]
    assert second["edit"]["status"] == "succeeded"
    assert revision_2["sections"][2]["markdown"] != revision_1["sections"][2]["markdown"]
    assert revision_2["sections"][:2] == revision_1["sections"][:2]
    assert revision_2["images"] == revision_1["images"]

    # 4. Redraw image 1 (the first section's illustration).
    redrawn = client.post(
        f"/v1/articles/{article_id}/images/1/regenerate",
        json={"prompt": "a ladder against a sunny roof", "seed": 77, "steps": 3},
    )
    assert redrawn.status_code == 202, redrawn.text
    third = _until("revision 3", lambda: (s := status())["revision"] == 3 and s)
    revision_3 = third["article"]
    assert revision_3["images"][0] == revision_1["images"][0]
    assert revision_3["images"][1]["id"] != revision_1["images"][1]["id"]
    assert revision_3["images"][1]["seed"] == 77
    assert revision_3["sections"] != revision_2["sections"]  # section 0 shows the new image
    assert revision_3["sections"][2]["markdown"] == revision_2["sections"][2]["markdown"]

    # Every revision is still readable, each as it was.
    for number, expected in ((1, revision_1), (2, revision_2), (3, revision_3)):
        older = status(revision=number)
        assert older["revision"] == 3 and older["article"] == expected
    assert client.get(f"/v1/articles/{article_id}", params={"revision": 4}).status_code == 404

    # Revision 1's images are still served, by their signed URLs, without a key.
    for ref in revision_1["images"] + revision_3["images"]:
        png = httpx.get(ref["url"], timeout=30)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert f"Seed: {ref['seed']}" in Image.open(io.BytesIO(png.content)).info["parameters"]

    # The webhooks: the pause, the first revision, then one `article.updated` per revision.
    hooks = _until(
        "four webhooks", lambda: (h := _verified_hooks(system, article_id)) and len(h) >= 4 and h
    )
    types = [event["type"] for _, event in hooks]
    assert types == [
        "article.awaiting_review",
        "article.succeeded",
        "article.updated",
        "article.updated",
    ]
    assert len({headers["webhook-id"] for headers, _ in hooks}) == 4  # none de-duplicated away
    assert hooks[0][1]["data"]["outline"] == waiting["outline"]
    assert [event["data"]["article"]["revision"] for _, event in hooks[1:]] == [1, 2, 3]
    assert hooks[3][1]["data"]["metadata"] == {"cms_post_id": 7}

    # The export of the latest revision parses as front matter a static-site generator reads.
    exported = client.get(f"/v1/articles/{article_id}/export.md").text
    matter = yaml.safe_load(exported.split("---\n")[1])
    assert matter["title"] == outline["title"] and matter["revision"] == 3
    assert matter["image"] == revision_3["featured_image"]["url"]
