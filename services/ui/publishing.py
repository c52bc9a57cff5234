"""Publishing a finished article from its page: into WordPress or Ghost, as a draft or public
post (POST /v1/articles/{id}/publish), and where each target stands (the status's `publish`).

The gateway lists no targets, so both are offered: one it has no settings for answers with its
400, whose sentence names the targets it does have and the settings that would add another.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from services.ui.common import gateway, settings, shows_errors

TARGETS = {"wordpress": "WordPress", "ghost": "Ghost"}
POST_STATUSES = {"draft": "Draft (for an editor to review)", "publish": "Published (public)"}
MOVING = ("queued", "publishing")


def state_line(target: str, info: dict[str, Any]) -> None:
    """One target's state, as a person reads it: the post's link once it is there."""
    name = TARGETS.get(target, target)
    state = info.get("state")
    error = (info.get("error") or {}).get("message")
    as_what = "draft" if info.get("status") == "draft" else "public post"
    if state == "published":
        links = f"[open the post]({info['url']})" if info.get("url") else "no link given"
        if info.get("edit_url"):
            links += f" · [edit it in {name}]({info['edit_url']})"
        st.success(f"{name}: published as a {as_what} — {links}", icon=":material/check_circle:")
    elif state == "failed":
        st.error(
            f"{name}: publishing failed — {error or 'no reason given'}", icon=":material/error:"
        )
    else:
        retry = f" (retrying after: {error})" if error else ""
        st.info(f"{name}: {state} as a {as_what}…{retry}", icon=":material/hourglass_top:")


@shows_errors
def watch_publishing(article_id: str, states: dict[str, Any]) -> None:
    """While a target is queued or publishing: the page again once a state changes."""
    if (gateway().article(article_id).get("publish") or {}) != states:
        st.rerun()


@shows_errors
def publish(article_id: str, target: str, status: str) -> None:
    gateway().publish(article_id, target, status)
    st.rerun()


def render_publishing(article_id: str, status: dict[str, Any]) -> None:
    states: dict[str, Any] = status.get("publish") or {}
    st.subheader("Publish", anchor=False)
    for target, info in states.items():
        state_line(target, info)
    if any(info.get("state") in MOVING for info in states.values()):
        st.fragment(run_every=settings().ui_poll_seconds)(watch_publishing)(article_id, states)
    left, right = st.columns(2)
    target = left.radio(
        "Target",
        list(TARGETS),
        format_func=TARGETS.__getitem__,
        horizontal=True,
        key="publish-target",
    )
    post_status = right.radio(
        "Post status",
        list(POST_STATUSES),
        format_func=POST_STATUSES.__getitem__,
        horizontal=True,
        key="publish-status",
    )
    busy = states.get(target, {}).get("state") in MOVING
    again = " again" if target in states else ""
    if st.button(
        f"Publish to {TARGETS[target]}{again}",
        key="publish",
        icon=":material/publish:",
        disabled=busy,
        help="The first publish creates the post; every later one updates the same post.",
    ):
        publish(article_id, target, post_status)
