"""The editorial loop through the ASGI app: outline review (approve, edit, expiry), one section
or one image regenerated as a new revision, older revisions kept, the image options of the
request, SEO fields and the exports. Real text and image services on tiny models (started once
for the module), the real pipeline jobs run by an in-process RQ worker, the real Redis
(database 6), and a local webhook receiver whose deliveries are verified."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from html.parser import HTMLParser
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import redis
import yaml
from fastapi.testclient import TestClient
from PIL import Image
from rq import Queue
from standardwebhooks import Webhook

from services.gateway import jobs
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from services.gateway.worker import InProcessWorker, article_worker
from tests.processes import free_port, serve_all
from tests.webhook_receiver import Receiver

KEY = "sk-editor"
OTHER_KEY = "sk-editor-other"
SECRET = "whsec_ZWRpdG9yaWFsLXRlc3RzLXNlY3JldC0wMTIzNDU2Nzg5"
BODY: dict[str, Any] = {
    "topic": "The future of solar power",
    "target_words": 120,
    "sections": 3,
    "keywords": ["photovoltaics"],
    "images": {"count": 2, "steps": 2, "size": "64x64", "seed": 5},
    "text": {"seed": 7},
}


class _Receiver(Receiver):
    deliveries: ClassVar[list[tuple[dict[str, str], bytes]]] = []


@dataclass
class Services:
    text_url: str
    image_url: str
    hook_url: str


@pytest.fixture(scope="module")
def services(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    ports = {"text": free_port(), "image": free_port()}
    env = {
        "ARTICLEFORGE_CACHE_DIR": str(cache_dir),
        "ARTICLEFORGE_TEXT_URL": f"http://127.0.0.1:{ports['text']}",
        "ARTICLEFORGE_IMAGE_URL": f"http://127.0.0.1:{ports['image']}",
    }
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    with ExitStack() as stack:
        serve_all(stack, ("text", "image"), ports, env, tmp_path_factory.mktemp("logs"))
        yield Services(
            env["ARTICLEFORGE_TEXT_URL"],
            env["ARTICLEFORGE_IMAGE_URL"],
            f"http://127.0.0.1:{receiver.server_address[1]}/hook",
        )
    receiver.shutdown()


@pytest.fixture()
def env(
    services: Services,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    redis_db: redis.Redis,
) -> Iterator[dict[str, str]]:
    """Environment of the in-process worker's jobs (they read settings from it)."""
    values = {
        "ARTICLEFORGE_REDIS_URL": redis_url,
        "ARTICLEFORGE_DATA_DIR": str(tmp_path / "data"),
        "ARTICLEFORGE_API_KEYS": f"{KEY},{OTHER_KEY}",
        "ARTICLEFORGE_TEXT_URL": services.text_url,
        "ARTICLEFORGE_IMAGE_URL": services.image_url,
        "ARTICLEFORGE_PUBLIC_URL": "http://testserver",
        "ARTICLEFORGE_WEBHOOK_SECRET": SECRET,
        "ARTICLEFORGE_WEBHOOK_ALLOW_PRIVATE": "true",
        "ARTICLEFORGE_WEBHOOK_RETRY_INTERVALS": "0",
        "ARTICLEFORGE_RATE_LIMIT_PER_MINUTE": "0",
        "ARTICLEFORGE_SERVICE_ATTEMPTS": "2",
        "ARTICLEFORGE_SERVICE_BACKOFF_SECONDS": "0.05",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    _Receiver.deliveries.clear()
    jobs.settings.cache_clear()
    yield values
    jobs.settings.cache_clear()


@pytest.fixture()
def client(env: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app(GatewaySettings(_env_file=None))) as c:  # type: ignore[call-arg]
        c.headers["Authorization"] = f"Bearer {KEY}"
        yield c


def drain(connection: redis.Redis) -> None:
    """Runs every queued job (stages, regenerations, webhooks) to the end, in this process."""
    queues = [Queue(name, connection=connection) for name in (jobs.ARTICLES_QUEUE, "images")]
    InProcessWorker(queues, connection=connection).work(burst=True)


def hooks(article_id: str) -> list[dict[str, Any]]:
    """The deliveries for one article, each verified against the secret (raises if forged)."""
    found = []
    for headers, raw in list(_Receiver.deliveries):
        event = Webhook(SECRET).verify(raw, headers)
        if event["data"]["id"] == article_id:
            found.append({"webhook-id": headers["webhook-id"], **event})
    return found


def succeeded(client: TestClient, connection: redis.Redis, **changes: Any) -> dict[str, Any]:
    article_id = client.post("/v1/articles", json={**BODY, **changes}).json()["id"]
    drain(connection)
    status = client.get(f"/v1/articles/{article_id}").json()
    assert status["status"] == "succeeded", status
    return dict(status)


# --- outline review ------------------------------------------------------------------------------


def test_review_stops_at_awaiting_review_and_approve_continues(
    client: TestClient, redis_db: redis.Redis, services: Services
) -> None:
    body = {**BODY, "review": "outline", "webhook": {"url": services.hook_url}}
    article_id = client.post("/v1/articles", json=body).json()["id"]
    drain(redis_db)
    status = client.get(f"/v1/articles/{article_id}").json()
    assert status["status"] == "awaiting_review"
    assert status["article"] is None and status["progress"]["stage"] == "outline"
    assert status["progress"]["percent"] == 10.0  # the outline is done, nothing after it
    assert len(status["outline"]["headings"]) == 3 and status["outline"]["title"]
    expires = datetime.fromisoformat(status["timestamps"]["review_expires"].replace("Z", "+00:00"))
    assert 23 * 3600 < expires.timestamp() - time.time() <= 24 * 3600
    # No section was written while waiting.
    assert redis_db.hget(f"af:article:{article_id}", "sections") is None
    [hook] = hooks(article_id)
    assert hook["type"] == "article.awaiting_review"
    assert hook["data"]["outline"] == status["outline"]
    assert client.get("/v1/articles", params={"status": "awaiting_review"}).json()["data"]

    approved = client.post(f"/v1/articles/{article_id}/approve")
    assert approved.status_code == 202, approved.text
    assert approved.json()["status"] == "writing"
    assert "review_expires" not in approved.json()["timestamps"]
    again = client.post(f"/v1/articles/{article_id}/approve")
    assert again.status_code == 409 and again.json()["error"]["param"] == "id"
    drain(redis_db)
    final = client.get(f"/v1/articles/{article_id}").json()
    assert final["status"] == "succeeded"
    assert [s["heading"] for s in final["article"]["sections"]] == status["outline"]["headings"]
    assert [h["type"] for h in hooks(article_id)] == [
        "article.awaiting_review",
        "article.succeeded",
    ]


def test_an_edited_outline_is_the_one_written(client: TestClient, redis_db: redis.Redis) -> None:
    article_id = client.post("/v1/articles", json={**BODY, "review": "outline"}).json()["id"]
    drain(redis_db)
    outline = {"title": "Sun on the Roof: A Homeowner's Guide", "headings": ["Costs", "Savings"]}
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    hidden = client.put(f"/v1/articles/{article_id}/outline", json=outline, headers=other)
    assert hidden.status_code == 404  # another key's article does not exist for it
    edited = client.put(
        f"/v1/articles/{article_id}/outline", json=outline, headers={"Idempotency-Key": "o-1"}
    )
    assert edited.status_code == 202, edited.text
    assert edited.json()["outline"] == outline
    replay = client.put(
        f"/v1/articles/{article_id}/outline", json=outline, headers={"Idempotency-Key": "o-1"}
    )
    assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
    drain(redis_db)
    article = client.get(f"/v1/articles/{article_id}").json()["article"]
    assert article["title"] == outline["title"]
    assert [s["heading"] for s in article["sections"]] == ["Costs", "Savings"]
    assert "outline" not in article["provenance"]["fallbacks"]


@pytest.mark.parametrize(
    ("outline", "param", "words"),
    [
        ({"title": "T", "headings": []}, "headings", "at least 1"),
        ({"title": "T", "headings": ["ok", "x" * 101]}, "headings", "headings[1] must be at most"),
        ({"title": "T", "headings": ["ok", "   "]}, "headings", "must not be blank"),
        ({"title": "T\u0007", "headings": ["ok"]}, "title", "control characters"),
        ({"title": "T", "headings": ["a"] * 13}, "headings", "at most 12"),
        ({"title": "T", "headings": ["a"], "sections": ["b"]}, "sections", "unknown field"),
    ],
)
def test_a_bad_outline_is_a_422_naming_the_field(
    client: TestClient, redis_db: redis.Redis, outline: dict[str, Any], param: str, words: str
) -> None:
    article_id = client.post("/v1/articles", json={**BODY, "review": "outline"}).json()["id"]
    response = client.put(f"/v1/articles/{article_id}/outline", json=outline)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_approving_an_article_without_review_is_a_409(
    client: TestClient, redis_db: redis.Redis
) -> None:
    article_id = client.post("/v1/articles", json=BODY).json()["id"]
    response = client.post(f"/v1/articles/{article_id}/approve")
    assert response.status_code == 409
    assert "not awaiting_review" in response.json()["error"]["message"]
    assert client.post("/v1/articles/art_" + "0" * 24 + "/approve").status_code == 404


def test_an_unanswered_review_expires_into_cancelled(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    redis_db: redis.Redis,
    services: Services,
) -> None:
    monkeypatch.setenv("ARTICLEFORGE_REVIEW_TIMEOUT_SECONDS", "1")
    jobs.settings.cache_clear()
    settings = GatewaySettings(_env_file=None)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {KEY}"
        body = {**BODY, "review": "outline", "webhook": {"url": services.hook_url}}
        swept, late = (client.post("/v1/articles", json=body).json()["id"] for _ in range(2))
        drain(redis_db)
        assert client.get(f"/v1/articles/{swept}").json()["status"] == "awaiting_review"
        time.sleep(1.2)
        # `late` is hidden from the sweep, to stand for one past due that it has not reached.
        redis_db.zrem("af:reviews", late)
        # The maintenance pass of any worker (the lost-job supervisor's) cancels what is due.
        worker = article_worker([jobs.ARTICLES_QUEUE], redis_db, settings)
        redis_db.delete("af:supervisor:lock")
        worker.run_maintenance_tasks()
        status = client.get(f"/v1/articles/{swept}").json()
        assert status["status"] == "cancelled", status
        assert status["error"]["type"] == "review_expired"
        assert "ARTICLEFORGE_REVIEW_TIMEOUT_SECONDS" in status["error"]["message"]
        assert client.post(f"/v1/articles/{swept}/approve").status_code == 409
        drain(redis_db)
        assert [h["type"] for h in hooks(swept)] == [
            "article.awaiting_review",
            "article.cancelled",
        ]
        assert not redis_db.sismember("af:active", swept)
        # Past due but not swept yet: an approval is refused, and cancels it.
        assert client.get(f"/v1/articles/{late}").json()["status"] == "awaiting_review"
        refused = client.post(f"/v1/articles/{late}/approve")
        assert refused.status_code == 409 and "expired" in refused.json()["error"]["message"]
        assert client.get(f"/v1/articles/{late}").json()["status"] == "cancelled"


# --- regenerating a section and redrawing an image -----------------------------------------------


def test_regenerating_a_section_makes_revision_2_and_keeps_revision_1(
    client: TestClient, redis_db: redis.Redis, services: Services
) -> None:
    first = succeeded(client, redis_db, webhook={"url": services.hook_url})
    article_id, original = first["id"], first["article"]
    assert first["revision"] == 1 and original["revision"] == 1
    accepted = client.post(
        f"/v1/articles/{article_id}/sections/1/regenerate",
        json={"instructions": "shorter, with an example", "seed": 11, "temperature": 1.0},
    )
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["revision"] == 2
    assert accepted.json()["links"]["revision"] == f"/v1/articles/{article_id}?revision=2"
    pending = client.get(f"/v1/articles/{article_id}").json()
    assert pending["revision"] == 1 and pending["edit"]["status"] == "queued"
    busy = client.post(f"/v1/articles/{article_id}/images/0/regenerate")
    assert busy.status_code == 409 and "revision 2" in busy.json()["error"]["message"]

    drain(redis_db)
    status = client.get(f"/v1/articles/{article_id}").json()
    assert status["revision"] == 2 and status["edit"]["status"] == "succeeded"
    article = status["article"]
    assert article["revision"] == 2 and article["updated_at"]
    before, after = original["sections"], article["sections"]
    assert after[1]["markdown"] != before[1]["markdown"]
    assert after[0] == before[0] and after[2] == before[2]  # the neighbours are untouched
    assert [i["id"] for i in article["images"]] == [i["id"] for i in original["images"]]
    assert article["provenance"]["seeds"]["sections"] == {"1": 11}
    assert article["json_ld"]["dateModified"] == article["updated_at"]
    old = client.get(f"/v1/articles/{article_id}", params={"revision": 1}).json()
    assert old["article"] == original and old["revision"] == 2
    missing = client.get(f"/v1/articles/{article_id}", params={"revision": 3})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "revision"
    assert "revisions 1..2" in missing.json()["error"]["message"]
    assert client.get(f"/v1/articles/{article_id}?revision=0").status_code == 422
    other = {"Authorization": f"Bearer {OTHER_KEY}"}  # another key sees no revision, no export
    for path in ("?revision=1", "/export.md?revision=1", "/export.html"):
        assert client.get(f"/v1/articles/{article_id}{path}", headers=other).status_code == 404

    # The prompt carried the outline, the neighbours and the editor's words (read back from the
    # job the worker ran).
    from rq.job import Job

    job = Job.fetch(f"{article_id}-edit-2", connection=redis_db)
    assert job.args[3]["instructions"] == "shorter, with an example"
    updated = [h for h in hooks(article_id) if h["type"] == "article.updated"]
    assert len(updated) == 1 and updated[0]["data"]["article"]["revision"] == 2
    assert updated[0]["webhook-id"] == f"msg_{article_id}_r2"


def test_the_same_seed_rewrites_a_section_to_the_same_text(
    client: TestClient, redis_db: redis.Redis
) -> None:
    article_id = succeeded(client, redis_db)["id"]
    texts = []
    for revision in (2, 3):
        response = client.post(f"/v1/articles/{article_id}/sections/0/regenerate", json={"seed": 3})
        assert response.json()["revision"] == revision
        drain(redis_db)
        texts.append(client.get(f"/v1/articles/{article_id}").json()["article"]["sections"][0])
    assert texts[0]["markdown"] == texts[1]["markdown"]


def test_redrawing_an_image_keeps_the_old_one_served(
    client: TestClient, redis_db: redis.Redis
) -> None:
    original = succeeded(client, redis_db)["article"]
    article_id = original["id"]
    options = {
        "prompt": "a red barn under a storm sky",
        "negative_prompt": "fog",
        "seed": 99,
        "steps": 3,
        "guidance_scale": 4.0,
        "scheduler": "euler",
    }
    accepted = client.post(f"/v1/articles/{article_id}/images/1/regenerate", json=options)
    assert accepted.status_code == 202, accepted.text
    drain(redis_db)
    article = client.get(f"/v1/articles/{article_id}").json()["article"]
    assert article["revision"] == 2
    old, new = original["images"][1], article["images"][1]
    assert new["id"] != old["id"] and new["seed"] == 99 and new["prompt"] == options["prompt"]
    assert article["images"][0] == original["images"][0]
    assert article["sections"][0]["image"]["id"] == new["id"]
    assert new["url"] in article["markdown"] and old["url"] not in article["markdown"]
    assert article["provenance"]["seeds"]["images"][1] == 99
    png = client.get(new["url"])
    assert png.status_code == 200
    parameters = Image.open(io.BytesIO(png.content)).info["parameters"]
    for part in ("a red barn under a storm sky", "Negative prompt: fog", "Steps: 3",
                 "Sampler: Euler", "CFG scale: 4", "Seed: 99"):  # fmt: skip
        assert part in parameters
    # Revision 1 still points at the old image, and it is still served.
    revision_1 = client.get(f"/v1/articles/{article_id}?revision=1").json()["article"]
    assert revision_1["images"][1]["id"] == old["id"]
    assert client.get(old["url"], headers={"Authorization": ""}).status_code == 200


BAD_REGENERATIONS: list[tuple[str, dict[str, Any], str, str]] = [
    ("sections/5/regenerate", {}, "k", "has 3 sections (0..2)"),
    ("sections/12/regenerate", {}, "k", "less than or equal to 11"),
    ("images/2/regenerate", {}, "k", "images 0..1"),
    ("sections/0/regenerate", {"temperature": 2.5}, "temperature", "less than or equal"),
    ("sections/0/regenerate", {"instructions": ""}, "instructions", "at least 1"),
    ("sections/0/regenerate", {"instruction": "x"}, "instruction", "unknown field"),
    ("images/0/regenerate", {"steps": 200}, "steps", "less than or equal to 150"),
    ("images/0/regenerate", {"seed": 2**32}, "seed", "less than or equal to 4294967295"),
    ("images/0/regenerate", {"scheduler": "plms"}, "scheduler", "dpmpp_2m"),
    ("images/0/regenerate", {"scheduler": "lcm", "steps": 80}, "scheduler", "at most 50"),
]


def test_bad_regeneration_input_names_the_field(client: TestClient, redis_db: redis.Redis) -> None:
    article_id = succeeded(client, redis_db)["id"]
    for path, body, param, words in BAD_REGENERATIONS:
        response = client.post(f"/v1/articles/{article_id}/{path}", json=body)
        assert response.status_code in (404, 422), response.text
        error = response.json()["error"]
        assert error["param"] == param and words in error["message"], (path, body, error)
    assert client.get(f"/v1/articles/{article_id}").json()["edit"] is None  # nothing queued


def test_regenerating_while_the_article_is_written_is_a_409(
    client: TestClient, redis_db: redis.Redis
) -> None:
    article_id = client.post("/v1/articles", json=BODY).json()["id"]
    for path in ("sections/0/regenerate", "images/0/regenerate"):
        response = client.post(f"/v1/articles/{article_id}/{path}")
        assert response.status_code == 409, response.text
        assert "queued; regenerate once it has succeeded" in response.json()["error"]["message"]
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    drain(redis_db)
    hidden = client.post(f"/v1/articles/{article_id}/sections/0/regenerate", headers=other)
    assert hidden.status_code == 404
    assert client.post(f"/v1/articles/{article_id}/sections/0/regenerate", headers={
        "Authorization": ""}).status_code == 401  # fmt: skip


def test_regeneration_is_idempotent_per_key(client: TestClient, redis_db: redis.Redis) -> None:
    article_id = succeeded(client, redis_db)["id"]
    path = f"/v1/articles/{article_id}/sections/2/regenerate"
    first = client.post(path, json={"seed": 1}, headers={"Idempotency-Key": "r-1"})
    again = client.post(path, json={"seed": 1}, headers={"Idempotency-Key": "r-1"})
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    other = client.post(path, json={"seed": 2}, headers={"Idempotency-Key": "r-1"})
    assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"
    drain(redis_db)
    assert client.get(f"/v1/articles/{article_id}").json()["revision"] == 2  # one, not two


def test_old_revisions_are_read_from_disk_once_redis_lost_the_record(
    client: TestClient, redis_db: redis.Redis
) -> None:
    article_id = succeeded(client, redis_db)["id"]
    client.post(f"/v1/articles/{article_id}/sections/0/regenerate")
    drain(redis_db)
    revision_1 = client.get(f"/v1/articles/{article_id}?revision=1").json()["article"]
    redis_db.delete(f"af:article:{article_id}")
    status = client.get(f"/v1/articles/{article_id}").json()
    assert status["article"]["revision"] == 2
    assert client.get(f"/v1/articles/{article_id}?revision=1").json()["article"] == revision_1
    expired = client.post(f"/v1/articles/{article_id}/sections/0/regenerate")
    assert expired.status_code == 409 and "expired" in expired.json()["error"]["message"]


# --- image options, SEO fields, exports -----------------------------------------------------------


def test_negative_prompt_and_scheduler_reach_the_image_service(
    client: TestClient, redis_db: redis.Redis
) -> None:
    images = {**BODY["images"], "negative_prompt": "people, cars", "scheduler": "euler_a"}
    article = succeeded(client, redis_db, images=images)["article"]
    for ref in article["images"]:
        parameters = Image.open(io.BytesIO(client.get(ref["url"]).content)).info["parameters"]
        assert "Negative prompt: people, cars" in parameters
        assert "Sampler: Euler a" in parameters
    refused = client.post(
        "/v1/articles", json={**BODY, "images": {"steps": 60, "scheduler": "lcm"}}
    )
    assert refused.status_code == 422
    assert refused.json()["error"]["param"] == "images.scheduler"
    assert "at most 50 steps, got steps=60" in refused.json()["error"]["message"]


def test_seo_fields_come_from_the_article(client: TestClient, redis_db: redis.Redis) -> None:
    long_topic = "A very long topic about " + "solar panels and batteries on rooftops " * 4
    article = succeeded(client, redis_db, topic=long_topic.strip())["article"]
    assert len(article["title"]) > 60
    assert 10 < len(article["seo_title"]) <= 60 and article["seo_title"].endswith("…")
    assert article["title"].startswith(article["seo_title"][:-1].rstrip())
    featured = article["featured_image"]["url"]
    og, twitter, ld = article["open_graph"], article["twitter"], article["json_ld"]
    assert og["og:title"] == twitter["twitter:title"] == article["seo_title"]
    assert og["og:description"] == article["meta_description"]
    assert og["og:image"] == twitter["twitter:image"] == featured
    assert og["og:type"] == "article" and twitter["twitter:card"] == "summary_large_image"
    assert ld["@context"] == "https://schema.org" and ld["@type"] == "Article"
    assert ld["image"][0] == featured and ld["datePublished"] == article["created_at"]
    assert ld["wordCount"] == article["word_count"] and ld["inLanguage"] == "en"
    assert len(ld["headline"]) <= 110
    plain = succeeded(client, redis_db, images={"count": 0})["article"]
    assert "og:image" not in plain["open_graph"] and plain["twitter"]["twitter:card"] == "summary"


class _Head(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.meta: dict[str, str] = {}
        self.title = ""
        self.json_ld = ""
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "meta" and values.get("content") is not None:
            self.meta[str(values.get("property") or values.get("name"))] = str(values["content"])
        self._in = tag if tag in ("title", "script") else None

    def handle_data(self, data: str) -> None:
        if self._in == "title":
            self.title += data
        elif self._in == "script":
            self.json_ld += data

    def handle_endtag(self, tag: str) -> None:
        self._in = None


def test_exports_for_static_sites_and_as_a_page(client: TestClient, redis_db: redis.Redis) -> None:
    status = succeeded(client, redis_db, topic='Solar: "panels" #1 & more')
    article_id, article = status["id"], status["article"]
    response = client.get(f"/v1/articles/{article_id}/export.md")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/markdown; charset=utf-8"
    text = response.text
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    matter = yaml.safe_load(head)
    assert matter["title"] == article["title"] and matter["slug"] == article["slug"]
    assert isinstance(matter["date"], datetime)  # a YAML timestamp, not a string
    assert matter["date"].isoformat().startswith(article["created_at"][:19])
    assert (
        matter["tags"] == article["tags"] and matter["description"] == article["meta_description"]
    )
    assert matter["image"] == article["featured_image"]["url"]
    assert not body.lstrip().startswith("# ")  # the generator prints the title
    assert "## " + article["sections"][0]["heading"].split()[0] in body

    page = client.get(f"/v1/articles/{article_id}/export.html")
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.text.startswith("<!doctype html>") and page.text.rstrip().endswith("</html>")
    parsed = _Head()
    parsed.feed(page.text)
    assert parsed.title == article["seo_title"]
    assert parsed.meta["description"] == article["meta_description"]
    assert parsed.meta["og:image"] == article["featured_image"]["url"]
    assert parsed.meta["twitter:card"] == "summary_large_image"
    assert json.loads(parsed.json_ld) == article["json_ld"]
    assert article["html"] in page.text

    client.post(f"/v1/articles/{article_id}/sections/0/regenerate")
    drain(redis_db)
    latest = yaml.safe_load(client.get(f"/v1/articles/{article_id}/export.md").text.split("---")[1])
    first = yaml.safe_load(
        client.get(f"/v1/articles/{article_id}/export.md?revision=1").text.split("---")[1]
    )
    assert latest["revision"] == 2 and "lastmod" in latest
    assert first["revision"] == 1 and "lastmod" not in first

    queued = client.post("/v1/articles", json=BODY).json()["id"]
    early = client.get(f"/v1/articles/{queued}/export.html")
    assert early.status_code == 409 and "once it has succeeded" in early.json()["error"]["message"]
    unknown = client.get(f"/v1/articles/{article_id}/export.md?format=x")
    assert unknown.status_code == 422 and unknown.json()["error"]["param"] == "format"


def test_the_new_routes_are_documented(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path, method in [
        ("/v1/articles/{article_id}/outline", "put"),
        ("/v1/articles/{article_id}/approve", "post"),
        ("/v1/articles/{article_id}/sections/{k}/regenerate", "post"),
        ("/v1/articles/{article_id}/images/{k}/regenerate", "post"),
        ("/v1/articles/{article_id}/export.md", "get"),
        ("/v1/articles/{article_id}/export.html", "get"),
    ]:
        operation = paths[path][method]
        assert operation["summary"]
        for code in ("401", "404", "409", "422"):
            assert code in operation["responses"], (path, code)
    schemas = spec["components"]["schemas"]
    for name in ("OutlineEdit", "SectionRegenerate", "ImageRegenerate", "EditAccepted"):
        for field, prop in schemas[name]["properties"].items():
            assert prop.get("description"), (name, field)
    parameters = paths["/v1/articles/{article_id}"]["get"]["parameters"]
    assert any(p["name"] == "revision" for p in parameters)


# --- a regeneration that fails, or is lost, leaves the article as it was --------------------------


def test_a_failed_regeneration_changes_nothing_and_frees_the_article(
    client: TestClient,
    redis_db: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    services: Services,
) -> None:
    original = succeeded(client, redis_db)["article"]
    article_id = original["id"]
    monkeypatch.setenv("ARTICLEFORGE_TEXT_URL", "http://127.0.0.1:9")  # the text service is gone
    jobs.settings.cache_clear()
    client.post(f"/v1/articles/{article_id}/sections/0/regenerate")
    drain(redis_db)
    status = client.get(f"/v1/articles/{article_id}").json()
    assert status["status"] == "succeeded" and status["revision"] == 1
    assert status["article"] == original
    assert status["edit"]["status"] == "failed" and status["edit"]["revision"] == 2
    assert status["edit"]["error"]["type"] == "service_unavailable"
    assert "did not answer after 2 attempts" in status["edit"]["error"]["message"]
    assert client.get(f"/v1/articles/{article_id}?revision=2").status_code == 404
    # Free for the next try, which makes revision 2 once the service is back.
    monkeypatch.setenv("ARTICLEFORGE_TEXT_URL", services.text_url)
    jobs.settings.cache_clear()
    retry = client.post(f"/v1/articles/{article_id}/sections/0/regenerate")
    assert retry.status_code == 202 and retry.json()["revision"] == 2
    drain(redis_db)
    assert client.get(f"/v1/articles/{article_id}").json()["revision"] == 2


def test_a_claim_whose_job_never_came_is_released(
    client: TestClient, redis_db: redis.Redis
) -> None:
    article_id = succeeded(client, redis_db)["id"]
    key = f"af:article:{article_id}"
    # A gateway that died between claiming revision 2 and queueing its job, long ago ...
    redis_db.hset(key, "edit_busy", f"2:{time.time() - 120}")
    accepted = client.post(f"/v1/articles/{article_id}/images/0/regenerate", json={"seed": 3})
    assert accepted.status_code == 202 and accepted.json()["revision"] == 2
    # ... and one that did so a moment ago still holds the article.
    redis_db.hset(key, "edit_busy", f"3:{time.time()}")
    assert client.post(f"/v1/articles/{article_id}/images/0/regenerate").status_code == 409


def test_a_regeneration_popped_by_a_dead_worker_is_queued_again(
    client: TestClient, redis_db: redis.Redis
) -> None:
    from services.gateway.worker import requeue_lost_jobs

    article_id = succeeded(client, redis_db)["id"]
    client.post(f"/v1/articles/{article_id}/sections/1/regenerate")
    job_id = f"{article_id}-edit-2"
    # A worker popped it (BLPOP) and died before registering it: on no queue, still `queued`.
    assert redis_db.lrem("rq:queue:articles", 0, job_id) == 1
    assert requeue_lost_jobs(redis_db, lost_after=0) == []  # first seen: it may be registering
    assert requeue_lost_jobs(redis_db, lost_after=0) == [job_id]
    drain(redis_db)
    assert client.get(f"/v1/articles/{article_id}").json()["revision"] == 2


def test_the_rewrite_prompt_carries_the_outline_the_neighbours_and_the_language() -> None:
    from services.gateway.editorial import rewrite_prompt
    from services.gateway.pipeline import Outline, section_preamble
    from services.gateway.schemas import ArticleRequest

    request = ArticleRequest(topic="Solarenergie", language="de", keywords=["Netzeinspeisung"])
    outline = Outline("Sonne auf dem Dach", ["Kosten", "Ersparnis", "Erste Schritte"])
    bodies = ["Was es kostet. " * 40 + "ENDE-EINS", "alt", "START-DREI " + "Wie man anfängt. " * 40]
    prompt = rewrite_prompt(request, outline, bodies, 1, "kürzer, mit einem Beispiel")
    for part in (
        '"Sonne auf dem Dach"',
        "1. Kosten; 2. Ersparnis; 3. Erste Schritte",
        'Now rewrite only section 2, "Ersparnis"',
        "ENDE-EINS",  # the end of the section before ...
        "START-DREI",  # ... and the start of the one after
        "Netzeinspeisung",
        "The editor asks: kürzer, mit einem Beispiel",
        "German",  # the article's language, as in every prompt of the pipeline
    ):
        assert part in prompt, part
    assert "follows on from the section before and leads into the one after" in prompt
    first = rewrite_prompt(request, outline, bodies, 0, None)
    assert "section before" not in first and "The editor asks" not in first
    assert first.endswith('Now rewrite only section 1, "Kosten", so that it leads into the one '
                          "after.")  # fmt: skip
    # Both start with the article's section preamble, word for word, as its section prompts do:
    # the text service's prefix cache serves that part from them.
    preamble = section_preamble(request, outline)
    assert prompt.startswith(preamble) and first.startswith(preamble)
    assert "ENDE-EINS" not in preamble and "Ersparnis" in preamble  # the whole outline


def test_sources_replaced_at_the_review_are_the_ones_written_from(
    client: TestClient, redis_db: redis.Redis
) -> None:
    """An editor adds one source and drops another while the outline waits: the sections job
    loads the new list (ids by their new positions) and the article keeps exactly those."""
    battery = {"type": "text", "title": "Battery guide", "text": "A home battery holds 10 kWh."}
    costs = {"type": "text", "title": "Cost survey", "text": "Panels cost 2.50 dollars a watt."}
    body = {**BODY, "review": "outline", "sources": [battery]}
    article_id = client.post("/v1/articles", json=body).json()["id"]
    drain(redis_db)
    waiting = client.get(f"/v1/articles/{article_id}").json()
    assert [(s["id"], s["title"]) for s in waiting["sources"]] == [("src_1", "Battery guide")]
    outline = {"title": "Solar at home", "headings": ["Costs", "Storage"], "sources": [costs]}
    bad = client.put(
        f"/v1/articles/{article_id}/outline", json={**outline, "sources": [{"type": "text"}]}
    )
    assert bad.status_code == 422 and "sources.0" in bad.json()["error"]["param"]
    edited = client.put(f"/v1/articles/{article_id}/outline", json=outline)
    assert edited.status_code == 202, edited.text
    drain(redis_db)
    final = client.get(f"/v1/articles/{article_id}").json()
    assert final["status"] == "succeeded", final["error"]
    assert [(s["id"], s["title"]) for s in final["sources"]] == [("src_1", "Cost survey")]
    assert [(s["id"], s["title"]) for s in final["article"]["sources"]] == [
        ("src_1", "Cost survey")
    ]
    texts = client.get(f"/v1/articles/{article_id}/sources").json()["data"]
    assert [s["text"] for s in texts] == [costs["text"]]
    assert json.loads(redis_db.hget(f"af:article:{article_id}", "request"))["sources"] == [costs]
