"""The Article page: the request form, then the article it makes, followed live.

The article followed is in the URL (`?article=art_…`), so a reload or a link from the history
comes back to it.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from services.ui.article_form import Draft, article_form
from services.ui.client import ApiError
from services.ui.common import gateway, shows_errors
from services.ui.progress import WORKING, follow_live
from services.ui.result import render_result
from services.ui.sources import render_sources
from services.ui.sources_form import explained


def review(article_id: str, outline: dict[str, Any], sources: list[dict[str, Any]]) -> None:
    st.subheader(f"Outline of {article_id}")
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
    if state in WORKING:
        st.subheader(f"Working on {article_id}")
        follow_live(article_id)
    elif state == "awaiting_review":
        review(article_id, status["outline"], status.get("sources") or [])
    elif state == "succeeded":
        render_result(article_id, status)
    elif state == "failed":
        error = status.get("error") or {}
        st.error(
            f"The article failed at `{error.get('stage')}` ({error.get('type')}): "
            f"{error.get('message')}"
        )
        render_sources(status.get("sources") or [])
    else:
        st.warning(f"The article was {state}.")


@shows_errors
def submit(draft: Draft) -> None:
    try:
        accepted = gateway().create_article(draft.body)
    except ApiError as error:
        raise explained(error, draft.origins) from None
    st.session_state.pop("pending_edit", None)
    st.query_params["article"] = accepted["id"]
    st.rerun()


article_id = st.query_params.get("article")
with st.expander("New article", expanded=article_id is None, icon=":material/edit:"):
    draft = article_form()
    if draft is not None:
        submit(draft)
if article_id:
    show(article_id)
