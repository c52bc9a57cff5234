"""The article API without workers: validation, auth, idempotency, limits, SSRF, ids, cancel."""

from __future__ import annotations

import json
from pathlib import Path

import redis
from fastapi.testclient import TestClient
from rq import Queue
from rq.job import Job, JobStatus

from services.gateway import jobs
from services.gateway.worker import InProcessWorker
from tests.gateway.conftest import KEY, OTHER_KEY, make_client
from tests.metrics import sample

BODY = {"topic": "The future of solar power", "images": {"count": 2}}


def test_create_answers_202_and_queues_the_job_graph(
    client: TestClient, redis_db: redis.Redis
) -> None:
    response = client.post("/v1/articles", json=BODY, headers={"X-Request-Id": "cms-7"})
    assert response.status_code == 202
    article_id = response.json()["id"]
    assert response.headers["location"] == f"/v1/articles/{article_id}"
    status = client.get(f"/v1/articles/{article_id}").json()
    assert status["status"] == "queued"
    assert status["progress"] == {
        "stage": "queued",
        "percent": 0.0,
        "tokens": 0,
        "images_done": 0,
        "images_total": 2,
        "images": [
            {
                "index": k,
                "state": "queued",
                "step": 0,
                "steps": None,
                "step_progress": True,
                "preview": None,
                "preview_step": None,
                "url": None,
            }
            for k in range(2)
        ],
    }
    outline = Job.fetch(f"{article_id}-outline", connection=redis_db)
    assert outline.meta["request_id"] == "cms-7"
    assert outline.get_status() == JobStatus.QUEUED
    # The text stages wait on their dependencies (no worker blocks); the image jobs and
    # assemble are queued once their inputs exist, under ids fixed now, which the record lists.
    for stage in ("sections", "image_prompts"):
        assert Job.fetch(f"{article_id}-{stage}", connection=redis_db).get_status() == (
            JobStatus.DEFERRED
        )
    later = [f"{article_id}-{stage}" for stage in ("image-0", "image-1", "assemble")]
    assert not any(Job.exists(job_id, redis_db) for job_id in later)
    jobs = json.loads(redis_db.hget(f"af:article:{article_id}", "jobs"))
    assert jobs[-3:] == later
    assert len(Queue("articles", connection=redis_db)) == 1


def test_bad_input_names_the_field(client: TestClient) -> None:
    response = client.post("/v1/articles", json={"topic": "ok topic", "images": {"steps": 400}})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "images.steps"
    assert "less than or equal to 150" in error["message"]
    response = client.post(
        "/v1/articles",
        json={"topic": "ok topic", "images": {"count": 2}, "image_prompts": ["only one"]},
    )
    assert response.status_code == 422
    assert "one prompt per image" in response.json()["error"]["message"]
    response = client.post(
        "/v1/articles", json={"topic": "ok topic", "images": {"size": "500x512"}}
    )
    assert response.status_code == 422 and "multiples of 8" in response.json()["error"]["message"]


def test_auth_is_required_and_constant_time(client: TestClient) -> None:
    anonymous = client.post("/v1/articles", json=BODY, headers={"Authorization": ""})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert anonymous.json()["error"]["type"] == "authentication_error"
    wrong = client.get("/v1/articles", headers={"Authorization": "Bearer sk-nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "invalid API key"
    assert client.get("/v1/articles").status_code == 200


def test_articles_of_another_key_are_invisible(client: TestClient) -> None:
    article_id = client.post("/v1/articles", json=BODY).json()["id"]
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    assert client.get(f"/v1/articles/{article_id}", headers=other).status_code == 404
    assert client.get("/v1/articles", headers=other).json()["data"] == []
    assert [a["id"] for a in client.get("/v1/articles").json()["data"]] == [article_id]


def test_idempotency_key(client: TestClient) -> None:
    first = client.post("/v1/articles", json=BODY, headers={"Idempotency-Key": "k-1"})
    again = client.post("/v1/articles", json=BODY, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    changed = client.post(
        "/v1/articles", json={**BODY, "topic": "Wind power"}, headers={"Idempotency-Key": "k-1"}
    )
    assert changed.status_code == 409
    assert changed.json()["error"]["param"] == "Idempotency-Key"
    assert len(client.get("/v1/articles").json()["data"]) == 1


def test_rate_limit_per_key(gateway_env: dict[str, str]) -> None:
    with make_client(rate_limit_per_minute=2) as client:
        headers = {"Authorization": f"Bearer {KEY}"}
        for _ in range(2):
            assert client.post("/v1/articles", json=BODY, headers=headers).status_code == 202
        limited = client.post("/v1/articles", json=BODY, headers=headers)
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert "ARTICLEFORGE_RATE_LIMIT_PER_MINUTE" in limited.json()["error"]["message"]
        # The limit is per key: another key still gets through.
        other = client.post(
            "/v1/articles", json=BODY, headers={"Authorization": f"Bearer {OTHER_KEY}"}
        )
        assert other.status_code == 202


def test_queue_bound(gateway_env: dict[str, str]) -> None:
    with make_client(max_active_articles=1) as client:
        headers = {"Authorization": f"Bearer {KEY}"}
        first = client.post("/v1/articles", json=BODY, headers=headers)
        assert first.status_code == 202
        full = client.post("/v1/articles", json=BODY, headers=headers)
        assert full.status_code == 429 and full.headers["retry-after"] == "10"
        # Cancelling frees the place.
        assert (
            client.delete(f"/v1/articles/{first.json()['id']}", headers=headers).status_code == 200
        )
        assert client.post("/v1/articles", json=BODY, headers=headers).status_code == 202


def test_webhooks_to_private_addresses_are_refused(client: TestClient) -> None:
    for url in (
        "http://127.0.0.1:8080/hook",
        "http://10.0.0.5/x",
        "http://169.254.169.254/",
        "http://localhost/hook",
        "http://[::1]/hook",
    ):
        response = client.post("/v1/articles", json={**BODY, "webhook": {"url": url}})
        assert response.status_code == 400, url
        assert response.json()["error"]["param"] == "webhook.url"
        assert "ARTICLEFORGE_WEBHOOK_ALLOW_PRIVATE" in response.json()["error"]["message"]
    assert client.get("/v1/articles").json()["data"] == []  # nothing was queued


def test_private_webhooks_allowed_when_configured(gateway_env: dict[str, str]) -> None:
    with make_client(webhook_allow_private=True) as client:
        response = client.post(
            "/v1/articles",
            json={**BODY, "webhook": {"url": "http://127.0.0.1:8080/hook"}},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert response.status_code == 202


def test_image_ids_cannot_escape_the_data_folder(
    client: TestClient, gateway_env: dict[str, str]
) -> None:
    secret = Path(gateway_env["ARTICLEFORGE_DATA_DIR"]) / "webhook_secret"
    assert secret.exists()  # created at start-up, and must never be served
    for image_id in (
        "..%2Fwebhook_secret",
        "../webhook_secret",
        "img_..",
        "webhook_secret",
        "img_" + "0" * 23 + "/",
        "img_%2e%2e%2f",
    ):
        response = client.get(f"/v1/images/{image_id}")
        assert response.status_code == 404, image_id
    assert client.get("/v1/images/img_" + "0" * 24).status_code == 404


def test_cancel_drops_queued_jobs(client: TestClient, redis_db: redis.Redis) -> None:
    article_id = client.post("/v1/articles", json=BODY).json()["id"]
    cancelled = client.delete(f"/v1/articles/{article_id}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    for stage in ("outline", "sections", "image_prompts"):
        job = Job.fetch(f"{article_id}-{stage}", connection=redis_db)
        assert job.get_status() == JobStatus.CANCELED
    # Never queued, and never will be: the stages that would queue them were cancelled.
    assert not any(Job.exists(f"{article_id}-{s}", redis_db) for s in ("image-0", "assemble"))
    assert len(Queue("articles", connection=redis_db)) == 0
    again = client.delete(f"/v1/articles/{article_id}")
    assert again.status_code == 409


def test_a_service_that_stays_down_fails_the_article(
    client: TestClient, redis_db: redis.Redis
) -> None:
    article_id = client.post("/v1/articles", json=BODY).json()["id"]
    queues = [Queue(name, connection=redis_db) for name in (jobs.ARTICLES_QUEUE, jobs.IMAGES_QUEUE)]
    InProcessWorker(queues, connection=redis_db).work(burst=True)
    status = client.get(f"/v1/articles/{article_id}").json()
    assert status["status"] == "failed"
    assert status["error"]["stage"] == "outline"
    assert status["error"]["type"] == "service_unavailable"
    assert (
        "text service at http://127.0.0.1:9 did not answer after 2 attempts"
        in (status["error"]["message"])
    )
    later = Job.fetch(f"{article_id}-image_prompts", connection=redis_db)
    assert later.get_status() == JobStatus.CANCELED
    assert not Job.exists(f"{article_id}-assemble", redis_db)


def test_unknown_article_is_404(client: TestClient) -> None:
    for article_id in ("art_" + "0" * 24, "nope", "../../etc/passwd"):
        response = client.get(f"/v1/articles/{article_id}")
        assert response.status_code == 404


def test_redis_down_is_503_not_500(gateway_env: dict[str, str]) -> None:
    with make_client(redis_url="redis://127.0.0.1:1/0") as client:
        headers = {"Authorization": f"Bearer {KEY}"}
        assert client.get("/readyz").status_code == 503
        response = client.post("/v1/articles", json=BODY, headers=headers)
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "service_unavailable"


def test_no_keys_means_auth_off(gateway_env: dict[str, str]) -> None:
    with make_client(api_keys="") as client:
        assert client.post("/v1/articles", json=BODY).status_code == 202


def test_metrics_show_admissions_and_the_queue(gateway_env: dict[str, str]) -> None:

    with make_client(max_active_articles=1) as client:
        headers = {"Authorization": f"Bearer {KEY}"}
        before = client.get("/metrics").text
        assert client.post("/v1/articles", json=BODY, headers=headers).status_code == 202
        assert client.post("/v1/articles", json=BODY, headers=headers).status_code == 429
        after = client.get("/metrics").text
    created = "articleforge_gateway_articles_created_total"
    assert sample(after, created) - sample(before, created) == 1
    rejected = "articleforge_gateway_rejected_total"
    assert (
        sample(after, rejected, reason="queue_full") - sample(before, rejected, reason="queue_full")
        == 1
    )
    assert sample(after, "articleforge_gateway_active_articles") == 1
    assert sample(after, "articleforge_gateway_queue_length", queue="articles") == 1
    assert sample(after, "articleforge_gateway_queue_length", queue="images") == 0
