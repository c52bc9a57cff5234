"""Publishing from the studio's article page into a real WordPress (tests/publish/wordpress_site.py:
Debian's WordPress on PHP's built-in server and MariaDB). The package's stack has no publishing
target, so this module starts a gateway and a worker of its own, configured for the site, with a
Redis of their own (the stack's workers must not take its publish jobs), and borrows the stack's
text and image services. The studio offers the publish, shows it queued, then published with the
post's link; the post is in WordPress as asked (a draft, then public); a target the gateway has
no settings for reads as the gateway's sentence."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from tests.processes import free_port, running, until
from tests.publish.wordpress_site import WordPressSite, missing
from tests.redis_server import OwnRedis
from tests.ui.conftest import API_KEY, UIStack, finished_article
from tests.ui.test_app import APP, assert_no_traceback

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def site() -> Iterator[WordPressSite]:
    reason = missing()
    if reason:
        pytest.skip(f"no real WordPress here: {reason}")
    wordpress = WordPressSite(webhook_secret="studio-tests").start()
    yield wordpress
    wordpress.stop()


@pytest.fixture(scope="module")
def publishing_stack(
    ui_stack: UIStack, site: WordPressSite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UIStack]:
    """A gateway and a worker that publish into ``site``, on the stack's text and image."""
    redis_server = OwnRedis(free_port())
    redis_server.start()
    tmp = tmp_path_factory.mktemp("publishing")
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    env = {
        "ARTICLEFORGE_REDIS_URL": redis_server.url,
        "ARTICLEFORGE_TEXT_URL": ui_stack.text,
        "ARTICLEFORGE_IMAGE_URL": ui_stack.image,
        "ARTICLEFORGE_PUBLIC_URL": gateway,
        "ARTICLEFORGE_DATA_DIR": str(tmp / "data"),
        "ARTICLEFORGE_API_KEYS": API_KEY,
        "ARTICLEFORGE_RATE_LIMIT_PER_MINUTE": "0",
        "ARTICLEFORGE_PUBLISH_WORDPRESS_URL": site.url,
        "ARTICLEFORGE_PUBLISH_WORDPRESS_USER": site.user,
        "ARTICLEFORGE_PUBLISH_WORDPRESS_APP_PASSWORD": site.app_password,
        "ARTICLEFORGE_PUBLISH_RETRY_INTERVALS": "0,0",
        "OMP_NUM_THREADS": "1",
    }
    try:
        with ExitStack() as stack:
            stack.enter_context(
                running(
                    ["serve", "gateway", "--port", str(port)],
                    env=env,
                    ready_url=gateway + "/readyz",
                    log_path=tmp / "gateway.log",
                )
            )
            stack.enter_context(
                running(["worker", "--name", "publisher"], env=env, log_path=tmp / "worker.log")
            )
            yield replace(ui_stack, gateway=gateway, logs=tmp)
    finally:
        redis_server.stop()


def opened(article_id: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params["article"] = article_id
    return at.run()


def notes(at: AppTest) -> list[str]:
    return [str(e.value) for kind in ("success", "info", "error") for e in getattr(at, kind)]


def published(at: AppTest, as_what: str) -> str | None:
    """The WordPress line once it says published as ``as_what``, polling as the page does."""
    at.run()
    assert_no_traceback(at)
    lines = [n for n in notes(at) if n.startswith("WordPress: ")]
    assert not any("failed" in line for line in lines), lines
    done = [line for line in lines if line.startswith(f"WordPress: published as a {as_what}")]
    return done[0] if done else None


def wordpress_state(stack: UIStack, article_id: str) -> dict[str, Any]:
    with stack.client() as client:
        return dict(client.get(f"/v1/articles/{article_id}").json()["publish"]["wordpress"])


def post_of(site: WordPressSite, post_id: str) -> dict[str, Any]:
    with site.api() as api:
        return dict(api.get(f"/wp/v2/posts/{post_id}", params={"context": "edit"}).json())


def test_publish_to_wordpress_as_a_draft_then_publicly_from_the_article_page(
    publishing_stack: UIStack, site: WordPressSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in publishing_stack.env().items():
        monkeypatch.setenv(name, value)
    article_id = finished_article(publishing_stack, "Composting in small gardens", seed=5)
    at = opened(article_id)
    assert_no_traceback(at)
    assert at.button(key="publish").label == "Publish to WordPress"
    assert not [n for n in notes(at) if n.startswith(("WordPress:", "Ghost:"))]

    # A target the gateway has no settings for: its own sentence, naming the one it has.
    at.radio(key="publish-target").set_value("ghost").run()
    assert at.button(key="publish").label == "Publish to Ghost"
    at.button(key="publish").click().run()
    [refused] = [e.value for e in at.error]
    assert "configured on this gateway (wordpress)" in refused, refused

    # WordPress, as a draft: queued at once, then published with the post's link.
    at.radio(key="publish-target").set_value("wordpress").run()
    at.radio(key="publish-status").set_value("draft").run()
    at.button(key="publish").click().run()
    assert_no_traceback(at)
    assert any(n.startswith("WordPress: ") for n in notes(at)), notes(at)
    line = until("the draft to be published", lambda: published(at, "draft"), timeout=60)
    state = wordpress_state(publishing_stack, article_id)
    post = post_of(site, state["post_id"])
    assert post["status"] == "draft"
    assert f"[open the post]({state['url']})" in line, line
    assert f"[edit it in WordPress]({state['edit_url']})" in line, line
    assert at.button(key="publish").label == "Publish to WordPress again"

    # Again, publicly: the same post, now public.
    at.radio(key="publish-status").set_value("publish").run()
    at.button(key="publish").click().run()
    until("the post to go public", lambda: published(at, "public post"), timeout=60)
    again = post_of(site, wordpress_state(publishing_stack, article_id)["post_id"])
    assert (again["id"], again["status"]) == (post["id"], "publish")
    assert httpx.get(again["link"], timeout=10).status_code == 200
