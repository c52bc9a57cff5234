"""The History page: recent articles from `GET /v1/articles`, filtered by status; any one of
them opens on the Article page."""

from __future__ import annotations

from typing import Any, get_args

import streamlit as st

from services.gateway.schemas import Status
from services.ui.common import gateway, name_of, settings, shows_errors, utc

ALL = "all"
CURSORS = "history_cursors"  # session key: the cursors of the pages before this one


def row(item: dict[str, Any]) -> None:
    progress = item.get("progress") or {}
    times = item.get("timestamps") or {}
    left, middle, right, button = st.columns([4, 3, 2, 1], vertical_alignment="center")
    left.markdown(f"**{name_of(item['id'], item) or '(no outline yet)'}**  \n`{item['id']}`")
    percent = float(progress.get("percent", 0))
    state = f"{item['status']}  \n{percent:.0f} % · {progress.get('stage')}"
    error = item.get("error")
    if error:
        state = f"{item['status']} at `{error.get('stage')}`  \n{error.get('message')}"
    middle.markdown(state)
    finished = f"  \nfinished {utc(times['finished'])}" if times.get("finished") else ""
    right.markdown(f"created {utc(times.get('created'))}{finished}")
    if button.button("Open", key=f"open-{item['id']}"):
        st.switch_page("pages/article.py", query_params={"article": item["id"]})


@shows_errors
def history() -> None:
    st.title("History")
    wanted = st.selectbox("Status", (ALL, *get_args(Status)), key="history-status")
    cursors: list[str | None] = st.session_state.setdefault(CURSORS, [None])
    if st.session_state.get("history-last-status") != wanted:
        cursors[:] = [None]
        st.session_state["history-last-status"] = wanted
    page = gateway().articles(
        status=None if wanted == ALL else wanted,
        cursor=cursors[-1],
        limit=settings().ui_history_page_size,
    )
    if not page["data"]:
        st.info("No articles" + ("" if wanted == ALL else f" with status {wanted}") + " yet.")
    for item in page["data"]:
        row(item)
    newer, older = st.columns(2)
    if len(cursors) > 1 and newer.button("Newer", key="history-newer"):
        cursors.pop()
        st.rerun()
    if page.get("next_cursor") and older.button("Older", key="history-older"):
        cursors.append(page["next_cursor"])
        st.rerun()


history()
