"""Issue 11's promises that only real processes show: a cancel is no failure in any metric and
is announced by webhook; a model that cannot load says so in one sentence (generate, serve,
/readyz, logs); `articleforge generate` and the API share one default for sections."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from services.gateway.schemas import DEFAULT_SECTIONS
from tests.e2e.stack import SECRET, Stack, stack
from tests.metrics import sample
from tests.processes import articleforge_command, free_port, running

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def promises_stack(
    cache_dir: Path, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[Stack]:
    with stack(cache_dir, tmp_path_factory.mktemp("promises"), redis_url, 1) as s:
        yield s


def _wait(what: str, check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_cancel_is_no_failure_in_any_metric_and_sends_article_cancelled(
    promises_stack: Stack,
) -> None:
    s = promises_stack
    body = {
        "topic": "a long article to cancel",
        "sections": 12,
        "target_words": 4000,  # long sections: the stage is still writing when the DELETE lands
        "images": {"count": 1, "steps": 5},
        "webhook": {"url": s.hook_url},
    }
    with s.client() as client:
        article_id = client.post("/v1/articles", json=body).json()["id"]

        def writing_sections() -> bool:
            progress = client.get(f"/v1/articles/{article_id}").json()["progress"]
            return bool(progress["stage"] == "sections" and progress["tokens"] > 0)

        _wait("the sections stage to stream tokens", writing_sections)
        assert s.job(f"{article_id}-sections")["status"] == "started"
        cancelled = client.delete(f"/v1/articles/{article_id}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"

        # The running stage is stopped (its work horse killed) and filed as cancelled, as are the
        # stages that never ran; none is failed.
        _wait(
            "the stopped stage to be filed",
            lambda: s.job(f"{article_id}-sections").get("status") == "canceled",
        )
        assert s.job(f"{article_id}-image_prompts")["status"] == "canceled"
        # The featured image's job exists once its prompt was written (beside the sections);
        # the one worker is busy with the sections, so it never ran and is cancelled too.
        image = s.job(f"{article_id}-image-0")
        assert image.get("status", "canceled") == "canceled"
        assert not s.job(f"{article_id}-assemble")  # queued only after the image prompts stage
        assert s.redis.zcard("rq:failed:articles") == 0
        assert s.redis.zcard("rq:failed:images") == 0

        metrics = client.get("/metrics").text
        for queue in ("articles", "images"):
            assert sample(metrics, "articleforge_gateway_failed_jobs", queue=queue) == 0
        assert sample(metrics, "articleforge_gateway_cancelled_jobs", queue="articles") >= 2
        cancelled_images = 1 if image else 0
        assert (
            sample(metrics, "articleforge_gateway_cancelled_jobs", queue="images")
            == cancelled_images
        )
        # The services saw a client go away, not an error.
        text_url = s.env["ARTICLEFORGE_TEXT_URL"]
        text_metrics = httpx.get(f"{text_url}/metrics").text
        assert sample(text_metrics, "articleforge_text_requests_total", status="error") == 0

    _wait("the article.cancelled webhook", lambda: s.hooks_for(article_id), timeout=30)
    (hook,) = s.hooks_for(article_id)
    assert hook["type"] == "article.cancelled"
    assert hook["webhook-id"] == f"msg_{article_id}_cancelled"
    assert hook["data"]["status"] == "cancelled" and hook["data"]["id"] == article_id
    headers, raw = next(
        (h, r) for h, r in s.deliveries if json.loads(r)["data"]["id"] == article_id
    )
    assert Webhook(SECRET).verify(raw, headers)["type"] == "article.cancelled"


# --- a model that cannot load says why, in one sentence ------------------------------------------


def _offline_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """No Hub: an empty Hugging Face cache and HF_HUB_OFFLINE, as on a machine without network."""
    return {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        **{f"ARTICLEFORGE_{k.upper()}": v for k, v in settings.items()},
    }


CASES = [
    ("text_model", "/nonexistent", "text model '/nonexistent' could not be loaded: the folder "),
    ("text_model", "gpt2", "text model 'gpt2' could not be loaded: it is not in the Hugging Face"),
    ("image_model", "/nonexistent", "image model '/nonexistent' could not be loaded: the folder"),
    (
        "image_model",
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "image model 'stable-diffusion-v1-5/stable-diffusion-v1-5' could not be loaded: it is "
        "not in the Hugging Face cache",
    ),
]


@pytest.mark.parametrize(("setting", "value", "sentence"), CASES)
def test_generate_says_in_one_sentence_why_a_model_did_not_load(
    cache_dir: Path, tmp_path: Path, setting: str, value: str, sentence: str
) -> None:
    result = subprocess.run(
        [*articleforge_command(), "generate", "solar power", "--out", str(tmp_path / "out")],
        env=_offline_env(tmp_path, **{setting: value}),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 1
    output = (result.stdout + result.stderr).strip()
    assert "Traceback" not in output, output
    assert output.startswith(f"error: {sentence}"), output
    assert len(output.splitlines()) <= 3, output  # one sentence (wrapped at most)
    assert f"ARTICLEFORGE_{setting.upper()}" in output  # ... that says what to change
    if not value.startswith("/"):
        assert f"huggingface-cli download {value}" in output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("service", "setting", "value", "sentence"),
    [("text", *CASES[1]), ("image", *CASES[2])],
)
def test_serve_readyz_and_logs_say_it_in_one_sentence(
    cache_dir: Path, tmp_path: Path, service: str, setting: str, value: str, sentence: str
) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    env = _offline_env(tmp_path, **{setting: value}, log_level="INFO")
    with running(["serve", service, "--port", str(port)], env=env, log_path=log):
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline, log.read_text()
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            if "still loading" not in ready.text:
                break
            time.sleep(0.2)
        assert ready.status_code == 503
        message = ready.json()["error"]["message"]
        assert message.startswith(sentence) and f"ARTICLEFORGE_{setting.upper()}" in message
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        time.sleep(0.5)
        logged = log.read_text()
    assert "Traceback" not in logged, logged
    assert logged.count(message) == 1, logged
    (line,) = [ln for ln in logged.splitlines() if message in ln]
    assert " ERROR " in line


# --- one default for sections --------------------------------------------------------------------


def test_generate_writes_the_apis_default_sections_in_the_language_asked(
    cache_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [*articleforge_command(), "generate", "Solarenergie", "--out", str(out), "--seed", "3"]
        + ["--images", "0", "--language", "de"],
        env={**os.environ, "ARTICLEFORGE_CACHE_DIR": str(cache_dir)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    article = json.loads((out / "article.json").read_text())
    assert len(article["sections"]) == DEFAULT_SECTIONS
    assert article["provenance"]["parameters"]["sections"] == DEFAULT_SECTIONS
    assert article["language"] == "de"
    if "outline" in article["provenance"]["fallbacks"]:  # the tiny model writes no outline
        assert article["sections"][0]["heading"] == "Worum es bei Solarenergie geht"
