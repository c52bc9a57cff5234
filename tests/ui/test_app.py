"""The studio driven by Streamlit's AppTest against the live stack (tests/ui/conftest.py): an
article is submitted from the form, its progress shows image previews while it is drawn, the
finished article renders with its images, a section is rewritten and an image redrawn into new
revisions, an outline is reviewed, the history opens an article, the playgrounds generate, and
API errors read as sentences."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from streamlit.testing.v1 import AppTest

import services.ui
from tests.processes import free_port, until
from tests.ui.conftest import DRAWN, UIStack

pytestmark = pytest.mark.e2e

APP = str(Path(services.ui.__file__).parent / "app.py")


def fresh() -> AppTest:
    return AppTest.from_file(APP, default_timeout=30).run()


def fill(at: AppTest, topic: str, **fields: Any) -> AppTest:
    """Types the form as a person would, then presses the submit button."""
    at.text_input(key="topic").input(topic)
    for key, value in fields.items():
        _widget(at, key).set_value(value)
    return at.button(key="submit").click().run()


def _widget(at: AppTest, key: str) -> Any:
    kinds = ("text_input", "number_input", "selectbox", "slider", "checkbox", "text_area")
    for kind in (*kinds, "file_uploader"):
        found = [w for w in getattr(at, kind) if w.key == key]
        if found:
            return found[0]
    raise KeyError(key)


def captions(at: AppTest) -> list[str]:
    return [c for element in at.image for c in element.captions]


def shown_text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def byline(at: AppTest) -> str:
    """The finished article's line under its title (revision, words, reading time)."""
    [line] = [c.value for c in at.caption if c.value.startswith("Revision ")]
    return str(line)


def assert_no_traceback(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def test_submit_watch_previews_read_the_article_rewrite_and_redraw(studio: UIStack) -> None:
    at = fill(
        fresh(),
        "Rooftop solar for homeowners",
        words=100,
        sections=2,
        count=DRAWN["count"],
        size=DRAWN["size"],
        steps=DRAWN["steps"],
        scheduler=DRAWN["scheduler"],
        image_seed=DRAWN["seed"],
        text_seed=7,
    )
    assert_no_traceback(at)
    article_id = at.query_params["article"]
    assert article_id.startswith("art_")

    # While the images are drawn: step counters, and a preview of at least one image.
    def previews() -> list[str]:
        at.run()
        assert_no_traceback(at)
        return [c for c in captions(at) if "preview at step" in c]

    seen = until("a preview image in the progress view", previews, timeout=90, every=0.1)
    assert any(c.startswith(("featured image", "image 1")) for c in seen), seen
    assert "step " in shown_text(at)

    # Finished: the article as the gateway has it, with every image shown.
    with studio.client() as client:

        def finished() -> dict[str, Any] | None:
            status = client.get(f"/v1/articles/{article_id}").json()
            return status if status["status"] == "succeeded" else None

        status = until("the article to succeed", finished)
    article = status["article"]
    until("the finished article in the studio", lambda: at.run().title)
    assert_no_traceback(at)
    assert at.title[0].value == article["title"]
    assert [h.value for h in at.header] == [s["heading"] for s in article["sections"]]
    shown = captions(at)
    assert len(shown) == len(article["images"]) == DRAWN["count"]
    assert not [c for c in shown if "preview" in c]
    for section in article["sections"]:
        assert section["markdown"] in shown_text(at)
    assert byline(at).startswith("Revision 1 ·")
    assert {b.label for b in at.get("download_button")} >= {
        "Download JSON",
        "Download Markdown",
        "Download HTML",
    }

    # Rewrite the second section: the new revision replaces it in place.
    at.text_input(key="rewrite-instructions-1").input("end with a checklist")
    at.button(key="rewrite-1").click().run()
    assert_no_traceback(at)
    # The note while it runs counts sections as the result does: the second is section 2.
    [note] = [i.value for i in at.info if i.value.startswith("Making revision")]
    assert note.startswith("Making revision 2: section 2 is "), note
    until(
        "revision 2 in the studio",
        lambda: any("revision 2" in s.value for s in at.run().success),
        timeout=60,
    )
    with studio.client() as client:
        second = client.get(f"/v1/articles/{article_id}").json()
    assert second["revision"] == 2
    rewritten = second["article"]["sections"][1]["markdown"]
    assert rewritten != article["sections"][1]["markdown"]
    assert rewritten in shown_text(at)
    assert article["sections"][1]["markdown"] not in shown_text(at)
    assert byline(at).startswith("Revision 2 ·")

    # Redraw the first section's image with a seed of its own: revision 3, a new picture there.
    before = [image.value for image in at.image]
    at.number_input(key="redraw-seed-1").set_value(77)
    at.button(key="redraw-1").click().run()
    assert_no_traceback(at)
    until(
        "revision 3 in the studio",
        lambda: any("revision 3" in s.value for s in at.run().success),
        timeout=60,
    )
    with studio.client() as client:
        third = client.get(f"/v1/articles/{article_id}").json()["article"]
    assert third["images"][1]["seed"] == 77
    assert third["images"][1]["id"] != article["images"][1]["id"]
    after = [image.value for image in at.image]
    assert after[0] == before[0] and after[1] != before[1]


def test_outline_review_then_history(studio: UIStack) -> None:
    at = fill(fresh(), "Heat pumps in old houses", words=100, sections=2, count=0, review=True)
    assert_no_traceback(at)
    article_id = at.query_params["article"]
    assert_headings_name_it(at)
    until("the outline review form", lambda: at.run().get("text_area") and _has_outline(at))
    with studio.client() as client:
        outline = client.get(f"/v1/articles/{article_id}").json()["outline"]
    assert [h.value for h in at.subheader] == [outline["title"]]
    at.text_input(key="outline-title").input("Heat Pumps for Old Houses")
    at.text_area(key="outline-headings").input("What it costs\nWhat it saves\nHow to start")
    at.button(key="outline-edit").click().run()
    assert_no_traceback(at)
    until("the reviewed article", lambda: at.run().title, timeout=60)
    assert at.title[0].value == "Heat Pumps for Old Houses"
    assert [h.value for h in at.header] == ["What it costs", "What it saves", "How to start"]

    history = AppTest.from_file(APP, default_timeout=30).run()
    history.switch_page("pages/history.py").run()
    assert_no_traceback(history)
    assert article_id in shown_text(history)
    history.selectbox(key="history-status").select("failed").run()
    assert article_id not in shown_text(history)
    history.selectbox(key="history-status").select("succeeded").run()
    history.button(key=f"open-{article_id}").click().run()
    assert_no_traceback(history)
    assert history.query_params["article"] == article_id
    assert history.title[0].value == "Heat Pumps for Old Houses"


def headings(at: AppTest) -> list[str]:
    return [h.value for kind in ("title", "header", "subheader") for h in getattr(at, kind)]


def assert_headings_name_it(at: AppTest) -> None:
    """Whatever state the article is in, no heading is its raw id."""
    assert headings(at), "no heading"
    assert not [h for h in headings(at) if "art_" in h], headings(at)


def test_a_failed_article_says_why_shows_what_was_asked_and_retries(studio: UIStack) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/gone.html"  # refused: the only source fails
    topic = "Tidal mills of Brittany"
    at = fresh()
    at.text_area(key="source_urls").input(nowhere)
    at = fill(at, topic, words=100, sections=2, count=0)
    assert_no_traceback(at)
    first = at.query_params["article"]

    def failed(article_id: str) -> dict[str, Any]:
        with studio.client() as client:
            status = client.get(f"/v1/articles/{article_id}").json()
        assert status["status"] not in ("succeeded", "cancelled"), status["status"]
        return status if status["status"] == "failed" else {}

    error = until("the article to fail", lambda: failed(first))["error"]
    at.run()
    assert_no_traceback(at)
    assert [b.label for b in at.button if b.key == "retry"] == ["Retry"]
    assert [h.value for h in at.subheader] == [topic]
    [shown] = at.error
    assert error["stage"] in shown.value and error["message"] in shown.value, shown.value
    [sent] = [c.value for c in at.code]
    assert topic in sent and nowhere in sent and '"sections": 2' in sent

    at.button(key="retry").click().run()
    assert_no_traceback(at)
    second = at.query_params["article"]
    assert second.startswith("art_") and second != first
    again = until("the retried article to fail", lambda: failed(second))["error"]
    assert again["message"] == error["message"]  # the same request: the same source refused

    # The history names both by their topic (the studio remembers what it sent).
    history = AppTest.from_file(APP, default_timeout=30).run()
    history.switch_page("pages/history.py").run()
    history.selectbox(key="history-status").select("failed").run()
    assert_no_traceback(history)
    text = shown_text(history)
    assert f"**{topic}**  \n`{first}`" in text and f"**{topic}**  \n`{second}`" in text


def test_history_shows_why_an_article_failed_and_times_in_utc(studio: UIStack) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/gone.html"
    body = {
        "topic": "Windmills",
        "target_words": 100,
        "sections": 1,
        "images": {"count": 0},
        "sources": [{"type": "url", "url": nowhere}],
    }
    with studio.client() as client:
        article_id = client.post("/v1/articles", json=body).json()["id"]

        def failed() -> dict[str, Any]:
            status = client.get(f"/v1/articles/{article_id}").json()
            return status if status["status"] == "failed" else {}

        status = until("the article to fail", failed)
    history = AppTest.from_file(APP, default_timeout=30).run()
    history.switch_page("pages/history.py").run()
    assert_no_traceback(history)
    text = shown_text(history)
    error = status["error"]
    assert f"failed at `{error['stage']}`  \n{error['message']}" in text, text
    created = datetime.fromisoformat(status["timestamps"]["created"])
    assert f"created {created:%Y-%m-%d %H:%M} UTC" in text, text


def _has_outline(at: AppTest) -> bool:
    return any(w.key == "outline-headings" for w in at.text_area)


def test_bad_input_is_a_message_naming_the_field(studio: UIStack) -> None:
    at = fill(fresh(), "Solar power", language="english")
    assert_no_traceback(at)
    assert "article" not in at.query_params
    [error] = at.error
    assert "422" in error.value and "`language`" in error.value, error.value


def test_a_gateway_that_is_down_is_a_message(
    studio: UIStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("ARTICLEFORGE_UI_GATEWAY_URL", down)
    at = fill(fresh(), "Solar power")
    assert_no_traceback(at)
    [error] = at.error
    assert error.value.startswith(f"The gateway at {down} is not reachable"), error.value
    history = AppTest.from_file(APP, default_timeout=30).run()
    history.switch_page("pages/history.py").run()
    assert_no_traceback(history)
    assert "is not reachable" in history.error[0].value


def test_text_playground_streams_what_the_text_service_writes(studio: UIStack) -> None:
    at = fresh()
    at.switch_page("pages/text_playground.py").run()
    assert_no_traceback(at)
    at.text_area(key="text-prompt").input("Write about rooftop solar.")
    at.number_input(key="text-max_tokens").set_value(24)
    at.number_input(key="text-seed").set_value(5)
    at.button(key="text-generate").click().run()
    assert_no_traceback(at)
    body = {
        "model": at.selectbox(key="text-model").value,
        "messages": [{"role": "user", "content": "Write about rooftop solar."}],
        "max_tokens": 24,
        "seed": 5,
        "temperature": 0.7,
        "top_p": 0.9,
    }
    with httpx.Client(base_url=studio.text, timeout=60) as client:
        reply = client.post("/v1/chat/completions", json=body).json()
    expected = reply["choices"][0]["message"]["content"]
    assert expected.strip() and expected.strip() in shown_text(at)  # markdown drops the edges
    assert f"{reply['usage']['completion_tokens']} generated" in at.caption[-1].value


def test_image_playground_draws_with_the_settings_given(studio: UIStack) -> None:
    at = fresh()
    at.switch_page("pages/image_playground.py").run()
    assert_no_traceback(at)
    at.text_area(key="image-prompt").input("a lighthouse at dusk")
    at.number_input(key="image-steps").set_value(12)
    at.number_input(key="image-seed").set_value(5)
    at.number_input(key="image-n").set_value(2)
    at.button(key="image-draw").click().run()
    assert_no_traceback(at)
    assert captions(at) == ["seed 5", "seed 6"]
    assert [b.label for b in at.get("download_button")] == ["PNG", "PNG"]


def test_a_key_the_gateway_refuses_is_a_message(
    studio: UIStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARTICLEFORGE_UI_API_KEY", "sk-not-this-one")
    at = fresh()
    at.switch_page("pages/history.py").run()
    assert_no_traceback(at)
    [error] = at.error
    assert "refused the API key" in error.value and "ARTICLEFORGE_UI_API_KEY" in error.value
