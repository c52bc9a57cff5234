"""The studio in a real browser: Debian's headless Chromium, driven by playwright, opens the app
served by `streamlit run` (the command `articleforge ui` runs) against the live stack, submits a
topic, watches the progress view until an image preview shows, then waits for the finished
article and checks that its pictures loaded. Its screenshots go to the test's temporary folder;
`ARTICLEFORGE_REFRESH_SCREENSHOTS=1 python -m pytest tests/ui/test_browser.py` writes them into
docs/img/ instead, for the README (CONTRIBUTING.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
# The machine has no network: without these Chromium reaches out (updates, sync, QUIC probes)
# and logs every refused connection.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"


def screenshots_folder(tmp_path: Path) -> Path:
    """docs/img/ only when asked to refresh the README's pictures; a test run changes no
    tracked file."""
    return DOCS_IMG if os.environ.get("ARTICLEFORGE_REFRESH_SCREENSHOTS") == "1" else tmp_path


TOPIC = "Rooftop solar for homeowners"
STEPS = 40  # the steps slider moved up from its default (25) so the previews stay a while


def test_submit_in_the_browser_and_read_the_illustrated_article(
    studio_url: str, tmp_path: Path
) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install)")
    from playwright.sync_api import expect, sync_playwright

    shots = screenshots_folder(tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    tracked = {p.name: p.read_bytes() for p in DOCS_IMG.glob("studio-*.png")}
    with sync_playwright() as driver:
        browser = driver.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile every run
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            page = browser.new_page()
            page.goto(studio_url)
            page.get_by_label("Topic").fill(TOPIC)
            page.get_by_label("Sections").fill("2")
            page.get_by_label("Images").fill("2")
            page.get_by_label("Image seed (empty: random)").fill("11")
            steps = page.get_by_role("slider", name="Steps")
            steps.focus()
            for _ in range(STEPS - 25):
                steps.press("ArrowRight")
            expect(steps).to_have_value(str(STEPS))
            page.get_by_role("button", name="Write the article").click()

            # The progress view, with a preview of an image being drawn.
            preview = page.get_by_text("preview at step").first
            expect(preview).to_be_visible(timeout=90_000)
            page.screenshot(path=str(shots / "studio-progress.png"), full_page=True)

            # The finished article, with its pictures loaded.
            expect(page.get_by_role("button", name="Download HTML")).to_be_visible(timeout=90_000)
            expect(page.get_by_text("Revision 1")).to_be_visible()
            expect(page.get_by_text("Rewrite this section").first).to_be_visible()
            page.set_viewport_size({"width": 1280, "height": 1800})  # the first section too
            page.wait_for_load_state("networkidle")
            loaded = page.eval_on_selector_all(
                "[data-testid='stMain'] img",
                "els => els.map(e => e.complete && e.naturalWidth > 0)",
            )
            assert loaded and all(loaded), loaded
            assert len(loaded) == 2  # the featured image and the first section's
            page.screenshot(path=str(shots / "studio-article.png"), full_page=True)
        finally:
            browser.close()
    assert all(
        (shots / name).stat().st_size > 0 for name in ("studio-progress.png", "studio-article.png")
    )
    if shots != DOCS_IMG:  # a plain test run leaves the README's pictures as they are
        assert {p.name: p.read_bytes() for p in DOCS_IMG.glob("studio-*.png")} == tracked
