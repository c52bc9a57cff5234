"""What every page of the studio shares: settings, clients, error display, pictures."""

from __future__ import annotations

import base64
import io
import logging
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any, ParamSpec

import streamlit as st
from PIL import Image

from services.ui.client import ApiError, GatewayClient
from services.ui.config import UISettings

logger = logging.getLogger(__name__)
P = ParamSpec("P")
SENT_KEPT = 1000  # requests the studio keeps for headings and retries, oldest dropped first


def settings() -> UISettings:
    """Read on every run (a few microseconds), so a changed environment needs no cache reset."""
    return UISettings()


def gateway() -> GatewayClient:
    return GatewayClient(settings())


def shows_errors(render: Callable[P, None]) -> Callable[P, None]:
    """Runs a page or fragment; an API failure becomes its message in `st.error`, anything else
    a sentence (the traceback goes to the log, never to the screen)."""

    @wraps(render)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            render(*args, **kwargs)
        except ApiError as exc:
            st.error(exc.message, icon=":material/error:")
        except Exception as exc:
            logger.exception("studio: %s failed", render.__name__)
            st.error(
                f"Something went wrong in the studio ({type(exc).__name__}); its log has the "
                "details.",
                icon=":material/error:",
            )

    return run


def decode_data_url(url: str) -> bytes:
    """The bytes of a `data:image/...;base64,...` URL (or of bare base64)."""
    return base64.b64decode(url.split(",", 1)[1] if url.startswith("data:") else url)


def enlarged(png: bytes, width: int) -> bytes:
    """A small picture (a tiny model's 64 px, a latent preview's 1/8 size) scaled up to
    ``width`` with nearest-neighbour sampling, so it is shown sharp instead of smeared."""
    image: Image.Image = Image.open(io.BytesIO(png))
    if image.width >= width:
        return png
    factor = max(1, width // image.width)
    image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def show_png(png: bytes, *, caption: str | None = None, width: int = 384) -> None:
    st.image(enlarged(png, width), caption=caption, width=width)


@st.cache_resource(show_spinner=False)
def _sent() -> OrderedDict[str, dict[str, Any]]:
    """The request body of each article this studio submitted, by id. The gateway's status
    does not carry the request, so the topic and a retry come from here; kept for the studio's
    process (every session, so the history and a reload find it too), not across restarts."""
    return OrderedDict()


def remember(article_id: str, body: dict[str, Any]) -> None:
    sent = _sent()
    sent[article_id] = body
    while len(sent) > SENT_KEPT:
        sent.popitem(last=False)


def sent(article_id: str) -> dict[str, Any] | None:
    """The request this studio sent for the article, if it did."""
    return _sent().get(article_id)


def name_of(article_id: str, status: dict[str, Any]) -> str | None:
    """What a heading calls the article: its title once known, else the topic it was asked
    for; None when neither is known (an article another client sent, before its outline)."""
    for part in ("article", "outline"):
        title = (status.get(part) or {}).get("title")
        if title:
            return str(title)
    request = sent(article_id)
    return str(request["topic"]) if request and request.get("topic") else None


def section_label(index: int) -> str:
    """Section `index` (0-based, as the API counts) as the result names it: 1-based."""
    return f"section {index + 1}"


def image_label(slot: int) -> str:
    """Image slot 0 is the featured image; slot k illustrates section k."""
    return "featured image" if slot == 0 else f"image {slot}"


def utc(iso: str | None) -> str:
    """A gateway timestamp (`2026-12-07T09:14:03.123456Z`) as `2026-12-07 09:14 UTC`."""
    if not iso:
        return ""
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
