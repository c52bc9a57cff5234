"""Settings of the studio, the Streamlit front end (``ARTICLEFORGE_UI_*``).

The studio talks only to HTTP APIs: the gateway's public one for articles, and the text and
image services' own for the playgrounds. It never imports a model or Redis.

``max_body_bytes`` (ARTICLEFORGE_MAX_BODY_BYTES, from CommonSettings) is read as the gateway's
request limit, the variable the gateway reads too: the article form refuses sources that would
not fit it before sending them.
"""

from __future__ import annotations

from pydantic import Field

from services.common.config import CommonSettings


class UISettings(CommonSettings):
    # The gateway's public API, as the studio's server (not the browser) reaches it.
    ui_gateway_url: str = "http://127.0.0.1:8000"
    # Bearer key sent to the gateway; leave unset when the gateway runs with auth off.
    ui_api_key: str | None = None
    # The text and image services, for the playgrounds (the gateway's own defaults).
    ui_text_url: str = "http://127.0.0.1:8001"
    ui_image_url: str = "http://127.0.0.1:8002"
    # Seconds to wait for a gateway answer (reads are quick; creation only queues work).
    ui_timeout_seconds: float = Field(default=30.0, gt=0)
    # Seconds to wait for a playground generation (a whole text or image, on a slow card).
    ui_generation_timeout_seconds: float = Field(default=600.0, gt=0)
    # Seconds between two looks at an article in progress (progress, previews, regenerations).
    ui_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # Articles per page of the history.
    ui_history_page_size: int = Field(default=20, ge=1, le=100)

    def gateway(self) -> str:
        return self.ui_gateway_url.rstrip("/")
