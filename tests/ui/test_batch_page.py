"""The studio's Batches page against the live stack (tests/ui/conftest.py): a CSV uploaded
through the page becomes a batch whose counts the page follows to the end, and whose items open
on the Article page; a CSV the gateway refuses reads as its sentence naming the row and field;
and the page's Cancel cancels the batch, as the API then says."""

from __future__ import annotations

from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from tests.processes import until
from tests.ui.conftest import UIStack
from tests.ui.test_app import APP, assert_no_traceback, shown_text

pytestmark = pytest.mark.e2e

# Small articles, so the stack's two workers finish them in seconds: one section, no images.
SMALL = "sections,words,images\n"


def csv_of(*topics: str) -> bytes:
    return ("topic," + SMALL + "".join(f"{t},1,100,0\n" for t in topics)).encode()


def batch_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30).run()
    at.switch_page("pages/batch.py").run()
    assert_no_traceback(at)
    return at


def upload(at: AppTest, csv: bytes, **fields: Any) -> AppTest:
    """Chooses the file and fills the form as a person would, then sends it."""
    at.file_uploader(key="batch-file").set_value(("topics.csv", csv, "text/csv"))
    for key, value in fields.items():
        kinds = ("text_input", "radio", "checkbox", "date_input", "selectbox")
        [widget] = [w for kind in kinds for w in getattr(at, kind) if w.key == key]
        widget.set_value(value)
    return at.button(key="batch-submit").click().run()


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def batch_status(stack: UIStack, batch_id: str) -> dict[str, Any]:
    with stack.client() as client:
        reply = client.get(f"/v1/batches/{batch_id}")
        assert reply.status_code == 200, reply.text
        return dict(reply.json())


def batch_ids(stack: UIStack) -> list[str]:
    with stack.client() as client:
        return [b["id"] for b in client.get("/v1/batches", params={"limit": 100}).json()["data"]]


def test_a_csv_sent_from_the_page_is_followed_to_its_end(studio: UIStack) -> None:
    topics = ("Rain gardens", "Compost tea")
    at = upload(batch_page(), csv_of(*topics), **{"batch-name": "Garden week"})
    assert_no_traceback(at)
    batch_id = at.query_params["batch"]
    assert batch_id.startswith("bat_")
    assert not at.error
    assert [s.value for s in at.subheader][:1] == ["Garden week"]
    assert metrics(at)["Status"] == "running"
    assert at.button(key="batch-cancel").label == "Cancel the batch"

    def ended() -> dict[str, Any] | None:
        status = batch_status(studio, batch_id)
        assert status["status"] in ("running", "succeeded"), status
        return status if status["status"] == "succeeded" else None

    status = until("the batch to succeed", ended, timeout=120)
    until("the page to see the end", lambda: metrics(at.run())["Status"] == "succeeded")
    assert_no_traceback(at)
    shown = metrics(at)
    assert shown["Succeeded"] == "2" and shown["Failed"] == "0", shown
    assert "2 of 2 items ended" in str(at.get("progress")[0].proto.text)
    assert not [b for b in at.button if b.key in ("batch-cancel", "batch-retry")]
    text = shown_text(at)
    for item in status["items"]:
        line = f"**{item['index'] + 1}. {item['topic']}**  \n`{item['article_id']}`"
        assert line in text, text

    # The batch is in the list of recent ones, under its name; an item opens its article.
    [choice] = [s for s in at.selectbox if s.key == "batch-choice"]
    assert choice.value == batch_id
    assert any(o.startswith("Garden week · succeeded · 2/2 ended") for o in choice.options)
    first = status["items"][0]["article_id"]
    at.button(key=f"open-{first}").click().run()
    assert_no_traceback(at)
    assert at.query_params["article"] == first


def test_a_bad_csv_is_the_gateways_sentence_naming_the_row_and_field(studio: UIStack) -> None:
    bad = b"topic,words\nHeat pumps,400\nSolar roofs,lots\n"
    before = batch_ids(studio)
    at = upload(batch_page(), bad)
    assert_no_traceback(at)
    assert batch_ids(studio) == before  # nothing was made
    assert at.query_params.get("batch") in (None, *before[:1])  # the newest, if any, is shown
    [error] = at.error
    assert "422" in error.value and "`items.1.target_words`" in error.value, error.value
    assert "CSV line 3, column `words`" in error.value, error.value

    # A column the gateway does not know: named, with the ones it does.
    at = upload(batch_page(), b"topic,wordz\nHeat pumps,400\n")
    [error] = at.error
    assert "`file`" in error.value and "unknown CSV column 'wordz'" in error.value, error.value


def test_cancel_on_the_page_cancels_the_batch_and_the_list_switches(studio: UIStack) -> None:
    at = upload(batch_page(), csv_of("Window boxes"), **{"batch-name": "Small one"})
    small = at.query_params["batch"]
    # More items than the stack's two workers finish before the click.
    at = upload(at, csv_of(*(f"Balcony plant {k}" for k in range(12))))
    assert_no_traceback(at)
    batch_id = at.query_params["batch"]
    assert batch_id != small
    at.button(key="batch-cancel").click().run()
    assert_no_traceback(at)
    status = batch_status(studio, batch_id)
    assert status["status"] == "cancelled"
    assert status["counts"]["by_status"].get("cancelled", 0) > 0, status["counts"]
    assert metrics(at)["Status"] == "cancelled"
    assert not [b for b in at.button if b.key in ("batch-cancel", "batch-retry")]

    # The list opens another batch: the URL and the view follow it.
    at.selectbox(key="batch-choice").select(small).run()
    assert_no_traceback(at)
    assert at.query_params["batch"] == small
    assert [s.value for s in at.subheader][:1] == ["Small one"]
