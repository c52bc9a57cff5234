"""Promises of the API that issue 11 found broken, each kept and checked here: the requested
language in every prompt, unknown fields and query parameters refused, XML-valid HTML, alt text
and captions, one default for sections, resumable events, cancel as no failure, and the OpenAPI
document. The ASGI app, the real pipeline code and the real Redis (database 5)."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from services.gateway import assemble, jobs, pipeline
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from services.gateway.schemas import DEFAULT_SECTIONS, ArticleRequest, ImageRef

KEY = "sk-promises"
OTHER_KEY = "sk-promises-other"


@pytest.fixture()
def client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, redis_db: redis.Redis
) -> Iterator[TestClient]:
    env = {
        "ARTICLEFORGE_REDIS_URL": redis_url,
        "ARTICLEFORGE_DATA_DIR": str(tmp_path / "data"),
        "ARTICLEFORGE_API_KEYS": f"{KEY},{OTHER_KEY}",
        "ARTICLEFORGE_TEXT_URL": "http://127.0.0.1:9",
        "ARTICLEFORGE_IMAGE_URL": "http://127.0.0.1:9",
        "ARTICLEFORGE_WEBHOOK_ALLOW_PRIVATE": "true",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    jobs.settings.cache_clear()
    with TestClient(create_app(GatewaySettings(_env_file=None))) as c:  # type: ignore[call-arg]
        c.headers["Authorization"] = f"Bearer {KEY}"
        yield c
    jobs.settings.cache_clear()


# --- unknown fields and query parameters ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "hint"),
    [
        ({"topic": "solar power", "image": {"count": 1}}, "image", "images"),
        ({"topic": "solar power", "images": {"cont": 1}}, "images.cont", "count"),
        ({"topic": "solar power", "text": {"seeed": 1}}, "text.seeed", "seed"),
        (
            {"topic": "solar power", "webhook": {"url": "https://a.example", "secret": "x"}},
            "webhook.secret",
            None,
        ),
    ],
)
def test_an_unknown_field_is_a_422_naming_it(
    client: TestClient, redis_db: redis.Redis, body: dict[str, Any], param: str, hint: str | None
) -> None:
    response = client.post("/v1/articles", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"].startswith(f"{param}: unknown field")
    if hint:
        assert f"did you mean `{hint}`?" in error["message"]
    assert redis_db.zcard("af:articles") == 0  # nothing was queued


def test_every_gateway_request_body_refuses_unknown_fields(client: TestClient) -> None:
    """Every request schema of the gateway's OpenAPI, nested ones included, is closed."""
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    seen: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.split("/")[-1] not in seen:
                seen.add(ref.split("/")[-1])
                walk(schemas[ref.split("/")[-1]])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for operations in spec["paths"].values():
        for operation in operations.values():
            walk(operation.get("requestBody", {}))
    assert "ArticleRequest" in seen
    open_ = [
        name
        for name in sorted(seen)
        if schemas[name].get("type") == "object"
        and "properties" in schemas[name]
        and schemas[name].get("additionalProperties") is not False
    ]
    assert not open_, f"request schemas that accept unknown fields: {open_}"


def test_the_list_filters_by_status_and_refuses_unknown_parameters(client: TestClient) -> None:
    ids = [client.post("/v1/articles", json={"topic": f"topic {k}"}).json()["id"] for k in range(5)]
    for article_id in ids[1:4]:
        assert client.delete(f"/v1/articles/{article_id}").status_code == 200
    # Another key's cancelled article never shows up.
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    theirs = client.post("/v1/articles", json={"topic": "their topic"}, headers=other).json()["id"]
    client.delete(f"/v1/articles/{theirs}", headers=other)

    cancelled = client.get("/v1/articles", params={"status": "cancelled"}).json()
    assert [a["id"] for a in cancelled["data"]] == ids[3:0:-1]
    assert {a["status"] for a in cancelled["data"]} == {"cancelled"}
    queued = client.get("/v1/articles", params={"status": "queued"}).json()
    assert [a["id"] for a in queued["data"]] == [ids[4], ids[0]]

    # Pages of a filtered list are full and continue where the last one ended.
    first = client.get("/v1/articles", params={"status": "cancelled", "limit": 2}).json()
    assert [a["id"] for a in first["data"]] == [ids[3], ids[2]]
    rest = client.get(
        "/v1/articles",
        params={"status": "cancelled", "limit": 2, "cursor": first["next_cursor"]},
    ).json()
    assert [a["id"] for a in rest["data"]] == [ids[1]] and rest["next_cursor"] is None

    bad = client.get("/v1/articles", params={"status": "done"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "status"
    typo = client.get("/v1/articles", params={"stauts": "cancelled"})
    assert typo.status_code == 422
    error = typo.json()["error"]
    assert error["param"] == "stauts"
    assert error["message"] == "stauts: unknown query parameter; did you mean `status`?"
    on_one = client.get(f"/v1/articles/{ids[0]}", params={"verbose": "1"})
    assert on_one.status_code == 422 and on_one.json()["error"]["param"] == "verbose"


# --- the requested language in every prompt ------------------------------------------------------


class RecordingText:
    """The real tiny text engine, with every body the pipeline sends it kept for reading."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.prompts: list[str] = []

    async def generate(self, body: dict[str, Any], on_delta: Any = None) -> dict[str, Any]:
        self.prompts.append(body["prompt"])
        reply: dict[str, Any] = await self.inner.generate(body, on_delta)
        return reply


@pytest.fixture(scope="module")
def tiny_text(cache_dir: Path) -> Iterator[Any]:
    from services.gateway.local import LocalText
    from services.text.config import TextSettings
    from services.text.engine import TextEngine
    from services.text.loading import load_text_model

    settings = TextSettings(_env_file=None, text_model="tiny", text_device="cpu")  # type: ignore[call-arg]
    engine = TextEngine(settings, load_text_model(settings))
    engine.start()
    yield LocalText(engine)
    engine.shutdown()


async def _write(text: RecordingText, request: ArticleRequest) -> tuple[Any, list[str], list[str]]:
    outline = await pipeline.write_outline(text, request, 7)
    bodies, _ = await pipeline.write_sections(text, request, outline, 7)
    prompts, _ = await pipeline.write_image_prompts(text, request, outline, bodies, 7)
    return outline, bodies, prompts


@pytest.mark.parametrize(
    ("language", "name"), [("de", "German"), ("pt-BR", "Portuguese (pt-BR)"), ("en", "English")]
)
def test_every_prompt_asks_for_the_requested_language(
    tiny_text: Any, language: str, name: str
) -> None:
    request = ArticleRequest(
        topic="Solarenergie auf dem Dach",
        language=language,
        sections=3,
        target_words=100,
        images={"count": 3},  # type: ignore[arg-type]
        text={"seed": 3, "temperature": 0.0},  # type: ignore[arg-type]
    )
    recording = RecordingText(tiny_text)
    asyncio.run(_write(recording, request))
    # 1 outline + 3 sections + 3 image prompts, each naming the language.
    assert len(recording.prompts) == 7
    for prompt in recording.prompts:
        assert f"Write it in {name}." in prompt or f"written in {name}" in prompt, prompt


def test_fallbacks_speak_the_language_or_none() -> None:
    german = ArticleRequest(topic="Solarenergie auf dem Dach", language="de", sections=3)
    outline = pipeline.fallback_outline(german)
    assert outline.headings == [
        "Worum es bei Solarenergie auf dem Dach geht",
        "Warum Solarenergie auf dem Dach wichtig ist",
        "Wie Solarenergie auf dem Dach funktioniert",
    ]
    assert pipeline.fallback_section("Die Vorteile", german).startswith("Dieser Abschnitt")
    # A language without fallback words gets no English ones: the request's own words only.
    japanese = ArticleRequest(topic="太陽光発電の未来", language="ja", sections=2)
    outline = pipeline.fallback_outline(japanese)
    assert outline.headings == ["太陽光発電の未来 (1)", "太陽光発電の未来 (2)"]
    english_words = {"what", "why", "how", "the", "this", "section", "covers"}
    section = pipeline.fallback_section(outline.headings[0], japanese)
    assert not english_words & set(section.lower().replace(".", " ").split()), section
    alt = pipeline.alt_text(
        pipeline.fallback_image_prompt(outline.title, japanese.topic), None, "ja"
    )
    assert alt == "太陽光発電の未来"


def test_tags_follow_the_language() -> None:
    request = ArticleRequest(
        topic="Die Zukunft der Solarenergie in Österreich",
        language="de",
        keywords=["Photovoltaik"],
        sections=1,
    )
    article = _assembled(request, pipeline.fallback_outline(request), ["Text."], [])
    assert article.tags == ["photovoltaik", "zukunft", "solarenergie", "österreich"]


# --- XML-valid text, alt text and captions -------------------------------------------------------

C0 = "".join(chr(c) for c in range(32))
PROVENANCE = {
    "text_model": "tiny",
    "adapter": None,
    "image_model": "tiny",
    "parameters": {},
    "seeds": {},
    "timings": {},
}


def _assembled(
    request: ArticleRequest, outline: pipeline.Outline, bodies: list[str], images: list[ImageRef]
) -> Any:
    from services.gateway.schemas import Provenance

    return assemble.assemble(
        "art_1",
        request,
        outline,
        bodies,
        images,
        Provenance.model_validate(PROVENANCE),
        "2026-12-01T00:00:00Z",
    )


def _image(k: int, prompt: str, caption: str, style: str | None = None) -> ImageRef:
    return assemble.image_ref(
        f"img_{k}", f"http://x/v1/images/img_{k}?a=1&b=2", prompt, k, 64, 64, caption, style=style
    )


def test_every_c0_control_character_is_cleaned_before_markdown_and_html() -> None:
    request = ArticleRequest(topic="control characters", sections=2)
    outline = pipeline.Outline(f"Ti{C0}tle", [f"Fir{C0}st", "Second\x00\x1b"])
    bodies = [f"Body{C0} one.\n\nMore\x07 \x08text\x1b.", f"Two\ud800\ufffe\x7f\x85 {C0}end."]
    images = [_image(0, f"a roof{C0}", f"cap{C0}"), _image(1, f"panels\x05{C0}", "c\x00")]
    article = _assembled(request, outline, bodies, images)
    invalid = set(C0) - {"\t", "\n", "\r"} | {"\ud800", "\ufffe", "\x7f", "\x85"}
    texts = [article.markdown, article.html, article.title, article.excerpt]
    texts += [article.meta_description, *article.tags]
    for section in article.sections:
        texts += [section.heading, section.markdown, section.html]
    for image in article.images:
        texts += [image.alt, image.caption, image.prompt]
    for text in texts:
        assert not invalid & set(text), repr(text)
    # An XML parser reads the whole HTML (void elements closed, attributes escaped) ...
    root = ET.fromstring(f"<root>{article.html}</root>")
    assert root.find("h1") is not None and root.find("h1").text == "Ti tle"  # type: ignore[union-attr]
    assert [img.get("alt") for img in root.iter("img")] == ["A roof", "Panels"]
    assert [img.get("src") for img in root.iter("img")][0] == "http://x/v1/images/img_0?a=1&b=2"
    for section in article.sections:
        ET.fromstring(f"<root>{section.html}</root>")
    # ... and the text itself survived (the CR and LF among the controls break its lines).
    flat = " ".join("".join(root.itertext()).split())
    assert "Body one." in flat and "More text." in flat
    assert [s.heading for s in article.sections] == ["Fir st", "Second"]


def test_alt_text_describes_the_picture_and_the_caption_belongs_to_the_section() -> None:
    request = ArticleRequest(topic="solar power", sections=2, images={"count": 3})  # type: ignore[arg-type]
    outline = pipeline.Outline("Solar Power Today", ["How panels work", "What they cost"])
    bodies = [
        "Panels turn light into current. The cells are made of silicon. Each one gives half "
        "a volt in full sun.",
        "Prices fell by ninety percent. Installers now quote per watt. A lot.",
    ]
    style = "watercolor, soft light"
    images = [
        _image(0, pipeline.with_style("a sunny roof with panels", style), "x", style),
        _image(1, pipeline.with_style("silicon cells in close-up", style), "x", style),
        _image(2, pipeline.with_style("a price chart falling", style), "x", style),
    ]
    article = _assembled(request, outline, bodies, images)
    featured, first, second = article.images
    assert featured.alt == "A sunny roof with panels" and featured.caption == "Solar Power Today"
    assert first.alt == "Silicon cells in close-up"
    # A section image's caption is a sentence of its section, but never one printed elsewhere
    # on the page: not the section's first line (beside the image), and for the first
    # section not the excerpt's two sentences either (issue 27, point 8).
    assert first.caption == "Each one gives half a volt in full sun."
    assert second.caption == "Installers now quote per watt."
    assert article.excerpt == "Panels turn light into current. The cells are made of silicon."
    for section in article.sections:
        assert section.image is not None
        assert len({section.heading, section.image.alt, section.image.caption}) == 3
        assert not section.markdown.startswith(section.image.caption)
    assert article.sections[0].image == first
    assert "<figcaption>Each one gives half a volt in full sun.</figcaption>" in article.html
    assert "![Silicon cells in close-up](http://x/v1/images/img_1" in article.markdown


def test_a_section_with_no_other_sentence_is_captioned_by_its_alt_text() -> None:
    request = ArticleRequest(topic="solar power", sections=1, images={"count": 2})  # type: ignore[arg-type]
    outline = pipeline.Outline("Solar Power Today", ["How panels work"])
    images = [_image(0, "a sunny roof", "x"), _image(1, "silicon cells in close-up", "x")]
    article = _assembled(request, outline, ["Panels turn light into current."], images)
    assert article.images[1].caption == article.images[1].alt == "Silicon cells in close-up"
    assert article.excerpt == "Panels turn light into current."


def test_fallback_headings_read_well_for_a_plural_topic() -> None:
    request = ArticleRequest(topic="Heat pumps for old houses", sections=4)
    headings = pipeline.fallback_outline(request).headings
    assert headings == [
        "Heat pumps for old houses explained",
        "The case for heat pumps for old houses",
        "Heat pumps for old houses in practice",
        "The benefits",
    ]
    assert not any(" is" in h.split("houses")[-1] for h in headings)


def test_the_fallback_image_prompt_names_the_title_once() -> None:
    request = ArticleRequest(topic="solar power", sections=2, images={"count": 2})  # type: ignore[arg-type]
    outline = pipeline.fallback_outline(request)  # its title is the topic
    subjects = pipeline.image_subjects(outline, 2)
    featured = pipeline.fallback_image_prompt(subjects[0], request.topic)
    assert featured == "Solar power, editorial illustration, detailed"
    section = pipeline.fallback_image_prompt(subjects[1], request.topic)
    assert section.lower().count("solar power") == 1
    assert pipeline.fallback_image_prompt("Rooftop panels", "solar power") == (
        "Rooftop panels, solar power, editorial illustration, detailed"
    )
    image = _image(0, featured, "x")
    assert image.alt == "Illustration: Solar power"
    article = _assembled(request, outline, ["One. Two.", "Three."], [image])
    assert article.featured_image is not None
    assert article.featured_image.alt != article.featured_image.caption


def test_one_default_for_sections() -> None:
    assert ArticleRequest(topic="solar power").sections == DEFAULT_SECTIONS
    spec = create_app(GatewaySettings(_env_file=None)).openapi()  # type: ignore[call-arg]
    field = spec["components"]["schemas"]["ArticleRequest"]["properties"]["sections"]
    assert field["default"] == DEFAULT_SECTIONS


# --- resumable events ----------------------------------------------------------------------------


def _sse(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        if fields:
            events.append(fields)
    return events


def test_events_have_ids_and_a_reconnect_resumes_after_last_event_id(client: TestClient) -> None:
    article_id = client.post("/v1/articles", json={"topic": "solar power"}).json()["id"]
    assert client.delete(f"/v1/articles/{article_id}").status_code == 200
    url = f"/v1/articles/{article_id}/events"
    events = _sse(client.get(url).text)
    assert [(e["event"], json.loads(e["data"])["status"]) for e in events] == [
        ("progress", "queued"),
        ("progress", "cancelled"),
        ("cancelled", "cancelled"),
    ]
    assert all(e.get("id") for e in events)
    queued, cancelled, final = (e["id"] for e in events)
    assert queued != cancelled and final == cancelled

    resumed = _sse(client.get(url, headers={"Last-Event-ID": queued}).text)
    assert [(e["event"], e["id"]) for e in resumed] == [
        ("progress", cancelled),
        ("cancelled", cancelled),
    ]
    # After the last event only the end is told again, so a client that lost it learns it.
    at_end = _sse(client.get(url, headers={"Last-Event-ID": cancelled}).text)
    assert [(e["event"], e["id"]) for e in at_end] == [("cancelled", cancelled)]

    bad = client.get(url, headers={"Last-Event-ID": "yesterday"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "last-event-id"


# --- the OpenAPI document ------------------------------------------------------------------------


def test_openapi_declares_bearer_and_the_errors_each_route_can_give() -> None:
    spec = create_app(GatewaySettings(_env_file=None)).openapi()  # type: ignore[call-arg]
    schemes = spec["components"]["securitySchemes"]
    assert schemes == {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "API key",
            "description": schemes["bearerAuth"]["description"],
        }
    }
    operations = {
        (method.upper(), path): op
        for path, ops in spec["paths"].items()
        if path.startswith("/v1/")
        for method, op in ops.items()
    }
    assert len(operations) >= 6
    for (method, path), op in operations.items():
        codes = set(op["responses"])
        where = f"{method} {path}: {sorted(codes)}"
        assert op.get("security") == [{"bearerAuth": []}], where
        assert "401" in codes and "503" in codes, where
        assert ("404" in codes) == ("{" in path), where
        assert ("413" in codes) == (method in ("POST", "PUT", "PATCH")), where
    create, listing = operations[("POST", "/v1/articles")], operations[("GET", "/v1/articles")]
    assert {"401", "409", "413", "429"} <= set(create["responses"])
    assert not {"404", "409", "413", "429"} & set(listing["responses"])
    cancel = operations[("DELETE", "/v1/articles/{article_id}")]["responses"]
    assert "409" in cancel and "already ended" in cancel["409"]["description"]
    for read in ("/v1/articles/{article_id}", "/v1/articles/{article_id}/events"):
        assert not {"409", "413", "429"} & set(operations[("GET", read)]["responses"]), read
    assert not {"409", "413", "429"} & set(
        operations[("GET", "/v1/images/{image_id}")]["responses"]
    )
    # The error replies carry the error shape.
    shape = create["responses"]["409"]["content"]["application/json"]["schema"]["$ref"]
    assert shape.endswith("/ErrorResponse")
