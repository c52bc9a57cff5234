"""The Batches page: a CSV of topics sent as one batch (`POST /v1/batches`), then a batch
followed: its counts, its items (each opens on the Article page), cancel and retry.

The batch shown is in the URL (`?batch=bat_…`), so a reload or a link comes back to it; the
list above the view offers the key's recent batches, newest first. While the batch runs, its
view reads `GET /v1/batches/{id}` every ARTICLEFORGE_UI_POLL_SECONDS inside a fragment.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any
from zoneinfo import available_timezones

import streamlit as st

from services.gateway.batches.schemas import BatchOptions, Schedule
from services.ui.common import gateway, settings, shows_errors, utc
from services.ui.limits import bounds
from services.ui.publishing import POST_STATUSES, TARGETS

NO_TARGET = "none"
CHOICE = "batch-choice"  # the list's widget key, kept in step with `?batch=`
CURSORS = "batch-cursors"  # session key: the item cursors of the pages before this one
FETCHED = "batch-fetched"  # session key: the status ``show`` read, for the fragment's first run
# Shown first in the counts, in this order; any other status follows.
STATUS_ORDER = ("queued", "writing", "illustrating", "assembling", "awaiting_review")


def options_of(
    name: str,
    target: str,
    post_status: str,
    link_related: bool,
    schedule: dict[str, Any] | None,
) -> dict[str, Any]:
    """The form as `BatchOptions`: only what was given, so the gateway's defaults apply."""
    options: dict[str, Any] = {"link_related": link_related}
    if name.strip():
        options["name"] = name.strip()
    if target != NO_TARGET:
        # A calendar publishes every post at its slot: a status would only contradict it.
        publish = {"target": target} if schedule else {"target": target, "status": post_status}
        options["defaults"] = {"publish": publish}
    if schedule:
        options["schedule"] = schedule
    return options


def batch_form() -> None:
    """The upload form; a sent batch becomes the one the page shows."""
    with st.form("batch"):
        upload = st.file_uploader(
            "CSV of topics",
            type=["csv"],
            max_upload_size=max(1, settings().max_body_bytes >> 20),  # MiB, the gateway's limit
            help="One row per article: a `topic` column, and optionally keywords (`;` between "
            "them), audience, tone, language, length, sections, words, images, style, "
            "publish_target, publish_status, publish_at (docs/api.md, “Batches”).",
            key="batch-file",
        )
        name = st.text_input(
            "Name",
            max_chars=bounds(BatchOptions, "name").max_length,
            placeholder="December calendar",
            key="batch-name",
        )
        left, right = st.columns(2)
        target = left.radio(
            "Publish to",
            [NO_TARGET, *TARGETS],
            format_func=lambda t: "Do not publish" if t == NO_TARGET else TARGETS[t],
            horizontal=True,
            key="batch-target",
        )
        post_status = right.radio(
            "Post status",
            list(POST_STATUSES),
            format_func=POST_STATUSES.__getitem__,
            horizontal=True,
            key="batch-status",
            help="Without a calendar; on a calendar every post is published at its slot.",
        )
        scheduled = st.checkbox(
            "Publish on a calendar",
            key="batch-scheduled",
            help="Each item without its own publish_at gets the next slot, in row order.",
        )
        first, clock, step, zone = st.columns(4)
        start = first.date_input(
            "First day", value=date.today() + timedelta(days=1), key="batch-start"
        )
        times = clock.text_input(
            "Times (HH:MM, comma between)",
            placeholder="09:00, 17:30",
            help="Clock times on each day; without them the slots are the first day's "
            "midnight, then one every step.",
            key="batch-times",
        )
        every = step.text_input(
            "Every",
            value="1d",
            max_chars=bounds(Schedule, "every").max_length,
            help="`30m`, `12h`, `1d`, `2w`; with times, whole days or weeks.",
            key="batch-every",
        )
        timezone = zone.selectbox(
            "Time zone", sorted(available_timezones()), index=None, key="batch-timezone"
        )
        link_related = st.checkbox(
            "Link related articles",
            key="batch-link-related",
            help="Each post links the first mention of another item's topic to that item's post.",
        )
        submitted = st.form_submit_button("Send the batch", type="primary", key="batch-submit")
    if not submitted:
        return
    if upload is None:
        st.error("Choose a CSV file first.", icon=":material/error:")
        return
    schedule = None
    if scheduled:
        clocks = [t.strip() for t in times.split(",") if t.strip()]
        assert isinstance(start, date)
        schedule = {"start": start.isoformat(), "every": every.strip(), "times": clocks}
        schedule["timezone"] = timezone or "UTC"
    options = options_of(name, target, post_status, link_related, schedule)
    send(upload.getvalue(), upload.name, options)


@shows_errors
def send(csv: bytes, filename: str, options: dict[str, Any]) -> None:
    accepted = gateway().create_batch(csv, filename, options)
    st.query_params["batch"] = accepted["id"]
    st.session_state.pop(CURSORS, None)
    st.rerun()


def label(batch: dict[str, Any]) -> str:
    counts = batch["counts"]
    name = batch.get("name") or batch["id"]
    return (
        f"{name} · {batch['status']} · {counts['ended']}/{counts['total']} ended · "
        f"{utc(batch['created_at'])}"
    )


def choose() -> None:
    """The list's callback: the batch picked becomes the URL's (before the page runs)."""
    st.query_params["batch"] = st.session_state[CHOICE]
    st.session_state.pop(CURSORS, None)


def chooser(current: str | None) -> str | None:
    """The recent batches as a list; returns the one chosen (the URL's, else the newest)."""
    listed = gateway().batches(limit=settings().ui_history_page_size)["data"]
    labels = {batch["id"]: label(batch) for batch in listed}
    if current and current not in labels:  # older than the list, or another key's
        labels = {current: current, **labels}
    if not labels:
        st.info("No batches yet: send a CSV above.")
        return None
    if current and st.session_state.get(CHOICE) != current:
        st.session_state[CHOICE] = current  # a new batch, or a link: the list follows the URL
    chosen = st.selectbox(
        "Batch", list(labels), format_func=labels.__getitem__, key=CHOICE, on_change=choose
    )
    if chosen != current:
        st.query_params["batch"] = chosen
        st.session_state.pop(CURSORS, None)
    return str(chosen)


def render_counts(status: dict[str, Any]) -> None:
    counts = status["counts"]
    total, done = int(counts["total"]), int(counts["ended"])
    by_status: dict[str, int] = counts.get("by_status") or {}
    st.progress(done / total if total else 0.0, text=f"{done} of {total} items ended")
    columns = st.columns(5)
    columns[0].metric("Status", status["status"])
    columns[1].metric("Succeeded", by_status.get("succeeded", 0))
    columns[2].metric("Failed", by_status.get("failed", 0))
    columns[3].metric("Waiting for a slot", counts.get("waiting", 0))
    columns[4].metric("Scheduled posts", counts.get("scheduled", 0))
    order = [s for s in STATUS_ORDER if s in by_status] + sorted(
        s for s in by_status if s not in STATUS_ORDER
    )
    line = " · ".join(f"{by_status[s]} {s}" for s in order)
    by_publish: dict[str, int] = counts.get("by_publish") or {}
    if by_publish:
        line += "  \nPublishing: " + " · ".join(f"{n} {s}" for s, n in sorted(by_publish.items()))
    st.caption(line)


def item_row(item: dict[str, Any]) -> None:
    left, middle, right, button = st.columns([4, 3, 3, 1], vertical_alignment="center")
    left.markdown(f"**{item['index'] + 1}. {item['topic']}**  \n`{item['article_id']}`")
    state = "queued, waiting for a slot" if item.get("waiting") else item["status"]
    error = item.get("error")
    if error:
        state = f"{item['status']} at `{error.get('stage')}`  \n{error.get('message')}"
    if item.get("earlier_ids"):
        state += f"  \nretried {len(item['earlier_ids'])}×"
    middle.markdown(state)
    publish = item.get("publish")
    if publish:
        name = TARGETS.get(publish["target"], publish["target"])
        shown = f"{name}: {publish['state']}"
        if publish.get("at"):
            shown += f" for {utc(publish['at'])}"
        if publish.get("url"):
            shown += f"  \n[open the post]({publish['url']})"
        right.markdown(shown)
    if button.button("Open", key=f"open-{item['article_id']}"):
        st.switch_page("pages/article.py", query_params={"article": item["article_id"]})


def render_items(status: dict[str, Any], cursors: list[int]) -> None:
    st.subheader("Items", anchor=False)
    for item in status["items"]:
        item_row(item)
    earlier, later = st.columns(2)
    if len(cursors) > 1 and earlier.button("Earlier items", key="batch-earlier"):
        cursors.pop()
        st.rerun()
    if status.get("next_cursor") and later.button("Later items", key="batch-later"):
        cursors.append(int(status["next_cursor"]))
        st.rerun()


def render(status: dict[str, Any], cursors: list[int]) -> None:
    """Counts, the buttons the batch's state allows, and one page of its items."""
    heading = status.get("name") or f"A batch of {status['counts']['total']} articles"
    st.subheader(heading, anchor=False)
    retried = f" · retried {status['retries']}×" if status.get("retries") else ""
    finished = f" · ended {utc(status['finished_at'])}" if status.get("finished_at") else ""
    st.caption(f"`{status['id']}` · created {utc(status['created_at'])}{finished}{retried}")
    render_counts(status)
    refresh, cancel, retry = st.columns(3)
    refresh.button("Refresh", key="batch-refresh", icon=":material/refresh:")
    if status["status"] == "running" and cancel.button(
        "Cancel the batch",
        key="batch-cancel",
        icon=":material/cancel:",
        help="Items not yet ended are cancelled; finished ones and their posts stay.",
    ):
        gateway().cancel_batch(status["id"])
        st.rerun()
    if status["status"] == "failed" and retry.button(
        "Retry the failed items",
        key="batch-retry",
        icon=":material/replay:",
        help="Failed articles run again as new articles; failed publishes are tried again.",
    ):
        gateway().retry_batch(status["id"])
        st.rerun()
    render_items(status, cursors)


def fetch(batch_id: str, cursors: list[int]) -> dict[str, Any]:
    return gateway().batch(batch_id, limit=settings().ui_history_page_size, cursor=cursors[-1])


@shows_errors
def follow(batch_id: str) -> None:
    """The running batch's view as a fragment: once it ends the whole page runs again. Its
    first run shows what ``show`` just read; each later one reads the batch again."""
    cursors: list[int] = st.session_state.setdefault(CURSORS, [0])
    status = st.session_state.pop(FETCHED, None) or fetch(batch_id, cursors)
    if status["status"] != "running":
        st.rerun()
    render(status, cursors)


def show(batch_id: str) -> None:
    cursors: list[int] = st.session_state.setdefault(CURSORS, [0])
    status = fetch(batch_id, cursors)
    if status["status"] == "running":
        st.session_state[FETCHED] = status
        st.fragment(run_every=settings().ui_poll_seconds)(follow)(batch_id)
    else:
        render(status, cursors)


@shows_errors
def view(current: str | None) -> None:
    chosen = chooser(current)
    if chosen:
        show(chosen)


st.title("Batches")
current = st.query_params.get("batch")
with st.expander("New batch", expanded=current is None, icon=":material/upload_file:"):
    batch_form()
view(current)
