"""Which of an image's step previews the gateway keeps for article status and events.

The image service sends a preview every ``ARTICLEFORGE_IMAGE_PREVIEW_EVERY`` steps; on a GPU
that can be several a second per image, and each kept preview is one more event (a few KB of
PNG) in the article's stream. So the image job keeps at most one per
``ARTICLEFORGE_PREVIEW_INTERVAL_MS``: the first at once (the viewer sees the noise right
away), later ones once the interval has passed, and the one still held back when the image
finishes (the picture's last state before the PNG replaces it). A held-back preview goes out
on the first step after the interval, so a slow step never hides one for long.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Kept = tuple[int, str]  # (step the preview shows, base64 PNG)


class PreviewThrottle:
    def __init__(self, interval_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.interval = interval_seconds
        self.clock = clock
        self.kept_at: float | None = None  # when the last preview was kept; None before any
        self.held: Kept | None = None  # the newest preview not kept yet

    def due(self, step: int, preview: str | None) -> Kept | None:
        """Called on every step (``preview`` None on steps without one); returns the preview
        to keep now, if any."""
        if preview is not None:
            self.held = (step, preview)
        if self.held is None:
            return None
        now = self.clock()
        if self.kept_at is not None and now - self.kept_at < self.interval:
            return None
        kept, self.held, self.kept_at = self.held, None, now
        return kept

    def flush(self) -> Kept | None:
        """The preview still held back when the image is finished (the last one), if any."""
        kept, self.held = self.held, None
        return kept
