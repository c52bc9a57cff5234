"""Crash recovery, whole system: SIGKILL the worker running each stage; every article succeeds.

One stack (text, image, gateway, three workers; real processes, tiny models, the real Redis)
runs six trials at once: for each stage (outline, sections, image prompts, image 0, image 1,
assemble) one article loses the worker, work horse and all, in the middle of that stage, and a
fresh worker starts beside the others, as an operator or an orchestrator would. A seventh
article loses only the work horse of its sections stage (the OOM killer's choice). Each stage
must restart within 60 s (see docs/reliability.md for the bound), each article must succeed,
and nothing may be counted twice: sections, images (the PNGs on disk too), tokens (equal to an
identical article that no one killed) and webhook deliveries.
A second test restarts the text service in the middle of an article.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
logger = logging.getLogger(__name__)

RESTART_WITHIN = 60.0  # seconds, issue 9
STAGE_RETRIES = 3  # the default of ARTICLEFORGE_STAGE_RETRIES


MAX_SECTION_TOKENS = int(100 * 1.4) + 32  # pipeline.write_sections: 200 words, 2 sections


def _texts(article: dict[str, Any]) -> list[str]:
    return [section["markdown"] for section in article["sections"]]


def _body(stack: Stack, topic: str) -> dict[str, Any]:
    return {
        "topic": topic,
        "sections": 2,
        "target_words": 200,
        "text": {"seed": 7},
        "images": {"count": 2, "steps": 12, "size": "64x64", "seed": 11},
        "webhook": {"url": stack.hook_url},
    }


@pytest.fixture()
def rec(reliability_stack: Stack) -> Stack:
    return reliability_stack


@dataclass
class Trial:
    stage: str
    job: str  # the RQ job id suffix
    article_id: str = ""
    horse_only: bool = False  # kill the work horse under a live worker (as the OOM killer would)
    killed: str = ""  # the worker name
    killed_at: float = 0.0
    started_at: str = ""  # the killed run's, in RQ's job hash
    restarted_after: float | None = None
    missed: list[str] = field(default_factory=list)  # articles whose stage ended before the kill

    @property
    def job_id(self) -> str:
        return f"{self.article_id}-{self.job}"


def _ready_to_kill(stack: Stack, trial: Trial, job: dict[str, str]) -> bool:
    if job.get("status") != "started" or not job.get("worker_name"):
        return False
    record = stack.redis.hgetall(f"af:article:{trial.article_id}")
    if trial.stage == "sections":  # some tokens counted already: a re-run must not add to them
        return int(record.get(b"tokens", b"0")) >= 16
    if trial.job.startswith("image-"):  # some steps done already
        return f"image_step:{trial.job.removeprefix('image-')}".encode() in record
    return True


def test_a_worker_killed_in_any_stage_loses_nothing(rec: Stack) -> None:
    trials = [
        Trial("outline", "outline"),
        Trial("sections", "sections"),
        Trial("image_prompts", "image_prompts"),
        Trial("image 0", "image-0"),
        Trial("image 1", "image-1"),
        Trial("assemble", "assemble"),
        Trial("sections, work horse only", "sections", horse_only=True),
    ]
    client = rec.client()
    before = {p.stem for p in (rec.data_dir / "images").glob("*.png")}

    def submit(trial: Trial) -> None:
        accepted = client.post("/v1/articles", json=_body(rec, "Solar power at home"))
        assert accepted.status_code == 202, accepted.text
        trial.article_id = accepted.json()["id"]

    for trial in trials:
        submit(trial)
    control = client.post("/v1/articles", json=_body(rec, "Solar power at home")).json()["id"]

    deadline = time.monotonic() + 240
    pending = list(trials)
    while pending and time.monotonic() < deadline:
        for trial in list(pending):
            job = rec.job(trial.job_id)
            if not trial.killed:
                if _ready_to_kill(rec, trial, job):
                    trial.killed, trial.killed_at = job["worker_name"], time.monotonic()
                    trial.started_at = job.get("started_at", "")
                    if trial.horse_only:
                        if rec.kill_horse(trial.killed) is None:  # it had just finished
                            trial.killed = ""
                            continue
                    else:
                        rec.kill_worker(trial.killed)
                        rec.add_worker()
                    logger.info("killed %s in %s of %s", trial.killed, trial.stage, trial.job_id)
            elif job.get("started_at") != trial.started_at and job.get("status") in (
                "started",
                "finished",
            ):
                trial.restarted_after = time.monotonic() - trial.killed_at
                pending.remove(trial)
            elif job.get("status") == "finished":
                # The stage ended before the kill landed (assemble takes milliseconds): that
                # run is not a trial. Try again with a new article.
                trial.missed.append(trial.article_id)
                assert len(trial.missed) < 5, f"could not catch {trial.stage} in 5 articles"
                trial.killed = ""
                submit(trial)
        time.sleep(0.002 if any(t.stage == "assemble" and not t.killed for t in pending) else 0.02)
    summary = {t.stage: t.restarted_after for t in trials}
    logger.info("restart after kill, seconds: %s", summary)
    assert not pending, f"not restarted: {[t.stage for t in pending]}; {summary}"
    for trial in trials:
        assert trial.restarted_after is not None and trial.restarted_after < RESTART_WITHIN

    # Articles of missed kills must succeed too, and count in the checks on disk and webhooks.
    ids = [t.article_id for t in trials] + [control] + [a for t in trials for a in t.missed]
    final = rec.wait_for(ids, timeout=240)
    for trial in trials:
        status = final[trial.article_id]
        assert status["status"] == "succeeded", (trial.stage, status)
        # One retry, by RQ: the stage ran once more, not twice more, and not by luck.
        assert int(rec.job(trial.job_id)["retries_left"]) == STAGE_RETRIES - 1, trial.stage
    reference = final[control]
    assert reference["status"] == "succeeded", reference
    for trial in trials:
        status = final[trial.article_id]
        article = status["article"]
        assert len(article["sections"]) == 2, trial.stage
        assert len(article["images"]) == 2 and status["progress"]["images_done"] == 2
        assert len({image["id"] for image in article["images"]}) == 2
        # Seeds are fixed, so the text is the reference's, and so must be the token count
        # (a re-run that added to the count would exceed it).
        tokens = status["progress"]["tokens"]
        assert 0 < tokens <= 2 * MAX_SECTION_TOKENS, trial.stage
        if _texts(article) == _texts(reference["article"]):
            assert tokens == reference["progress"]["tokens"], trial.stage
    # Every new PNG on disk belongs to one of these articles: a re-run image overwrote its own.
    on_disk = sorted(
        p.stem for p in (rec.data_dir / "images").glob("*.png") if p.stem not in before
    )
    in_articles = sorted(i["id"] for s in final.values() for i in s["article"]["images"])
    assert on_disk == in_articles

    time.sleep(3)  # webhooks are sent by a job queued after `succeeded`
    for article_id in ids:
        hooks = rec.hooks_for(article_id)
        assert [h["type"] for h in hooks] == ["article.succeeded"], (article_id, hooks)
        assert hooks[0]["webhook-id"] == f"msg_{article_id}_succeeded"


def test_a_text_service_restart_mid_article_is_retried(rec: Stack) -> None:
    """The service client retries with backoff while the text service comes back."""
    client = rec.client()
    article_id = client.post("/v1/articles", json=_body(rec, "Composting")).json()["id"]
    deadline = time.monotonic() + 120
    while rec.job(f"{article_id}-sections").get("status") != "started":
        assert time.monotonic() < deadline, "sections never started"
        time.sleep(0.02)
    killed_at = time.monotonic()
    rec.restart_service("text")
    logger.info("text service ready again %.1f s after its SIGKILL", time.monotonic() - killed_at)
    status = rec.wait_for([article_id], timeout=240)[article_id]
    assert status["status"] == "succeeded", status
    assert len(status["article"]["sections"]) == 2
    # The stage itself never failed: its service calls waited the restart out.
    assert int(rec.job(f"{article_id}-sections")["retries_left"]) == STAGE_RETRIES
