"""The Article page: the request form, then the article it makes, followed live.

The article followed is in the URL (`?article=art_…`), so a reload or a link from the history
comes back to it.
"""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from services.ui.article_form import Draft, article_form
from services.ui.client import ApiError
from services.ui.common import gateway, name_of, remember, sent, shows_errors
from services.ui.progress import WORKING, follow_live
from services.ui.result import render_result
from services.ui.sources import render_sources
from services.ui.sources_form import explained


def heading(article_id: str, status: dict[str, Any]) -> None:
    """The article's title or topic as the heading; its id only as the small print."""
    st.subheader(name_of(article_id, status) or "An article sent from elsewhere")
    st.caption(f"`{article_id}` · {status['status']}")


def review(article_id: str, outline: dict[str, Any], sources: list[dict[str, Any]]) -> None:
    st.info("The outline waits for your review: edit the headings, then continue.")
    render_sources(sources)
    with st.form("outline"):
        title = st.text_input("Title", value=str(outline["title"]), key="outline-title")
        headings = st.text_area(
            "Headings, one a line (one section is written per heading)",
            value="\n".join(outline["headings"]),
            key="outline-headings",
        )
        left, right = st.columns(2)
        edited = left.form_submit_button(
            "Write from these headings", type="primary", key="outline-edit"
        )
        approved = right.form_submit_button("Approve as proposed", key="outline-approve")
    if edited:
        lines = [line.strip() for line in headings.splitlines() if line.strip()]
        gateway().edit_outline(article_id, title.strip(), lines)
        st.rerun()
    if approved:
        gateway().approve(article_id)
        st.rerun()


@shows_errors
def show(article_id: str) -> None:
    status = gateway().article(article_id)
    state = status["status"]
    if state != "succeeded":  # the result has the title as its own heading
        heading(article_id, status)
    if state in WORKING:
        follow_live(article_id)
    elif state == "awaiting_review":
        review(article_id, status["outline"], status.get("sources") or [])
    elif state == "succeeded":
        render_result(article_id, status)
    elif state == "failed":
        failed(article_id, status)
    else:
        st.warning(f"The article was {state}.")


def failed(article_id: str, status: dict[str, Any]) -> None:
    """Why it failed, what was asked, and the same request again."""
    error = status.get("error") or {}
    st.error(
        f"The article failed at `{error.get('stage')}` ({error.get('type')}): "
        f"{error.get('message')}"
    )
    request = sent(article_id)
    if request is None:
        st.caption(
            "Its parameters are not known here: it was sent by another client, or before this "
            "studio started (the gateway's status does not carry the request)."
        )
    else:
        with st.expander("Parameters sent", icon=":material/tune:"):
            st.code(json.dumps(shown(request), indent=2, ensure_ascii=False), language="json")
        if st.button("Retry", key="retry", icon=":material/replay:"):
            send(request, [])
    render_sources(status.get("sources") or [])


def shown(request: dict[str, Any]) -> dict[str, Any]:
    """The request as a person reads it: an uploaded file's base64 as its size."""
    sources = [
        {**spec, "content_base64": f"({len(spec['content_base64'])} characters of base64)"}
        if "content_base64" in spec
        else spec
        for spec in request.get("sources", [])
    ]
    return {**request, "sources": sources} if sources else request


def send(body: dict[str, Any], origins: list[str]) -> None:
    try:
        accepted = gateway().create_article(body)
    except ApiError as error:
        raise explained(error, origins) from None
    remember(accepted["id"], body)
    st.session_state.pop("pending_edit", None)
    st.query_params["article"] = accepted["id"]
    st.rerun()


@shows_errors
def submit(draft: Draft) -> None:
    send(draft.body, draft.origins)


article_id = st.query_params.get("article")
with st.expander("New article", expanded=article_id is None, icon=":material/edit:"):
    draft = article_form()
    if draft is not None:
        submit(draft)
if article_id:
    show(article_id)
