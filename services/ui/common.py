"""What every page of the studio shares: settings, clients, error display, pictures."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec

import streamlit as st
from PIL import Image

from services.ui.client import ApiError, GatewayClient
from services.ui.config import UISettings

logger = logging.getLogger(__name__)
P = ParamSpec("P")


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
