"""The studio works offline: in a real browser (Debian's Chromium, as in test_browser.py), every
page of the studio and a finished article load with no request leaving the studio's own server
(or the gateway's): no web font, icon font, avatar, CDN script or usage-statistics beacon."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.ui.conftest import UIStack, finished_article
from tests.ui.test_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.e2e

PAGES = ("", "history", "batch", "text_playground", "image_playground")


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def test_no_page_of_the_studio_asks_the_internet_for_anything(
    studio_url: str, ui_stack: UIStack, tmp_path: Path
) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install)")
    from playwright.sync_api import expect, sync_playwright

    article_id = finished_article(ui_stack, "Offline gardening notes", seed=3)
    allowed = {origin(studio_url), origin(ui_stack.gateway)}
    requested: list[str] = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
        )
        try:
            page = browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            for path in PAGES:
                page.goto(f"{studio_url}/{path}")
                expect(page.get_by_role("link", name="History")).to_be_visible(timeout=30_000)
                page.wait_for_load_state("networkidle")
            page.goto(f"{studio_url}/?article={article_id}")
            expect(page.get_by_role("button", name="Download HTML")).to_be_visible(timeout=30_000)
            page.wait_for_load_state("networkidle")
        finally:
            browser.close()
    # data: and blob: URLs are made in the page itself; everything else must be a server of ours.
    fetched = [url for url in requested if urlsplit(url).scheme in ("http", "https", "ws", "wss")]
    assert fetched, requested
    outside = sorted({url for url in fetched if origin(url) not in allowed})
    assert not outside, outside
