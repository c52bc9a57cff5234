"""The whole system with its storage in S3: text, image and gateway servers and a worker pool as
real processes (tiny models, the real Redis), keeping everything in a bucket of a real
S3-compatible server (moto's, its own process: tests/s3_server.py), and nothing in DATA_DIR.

One stack runs, in order: a whole article whose images are fetched through their URLs; a
section regeneration and an image redraw of it (revisions 2 and 3); its publish into the real
WordPress of tests/publish (skipped without one); a worker killed in the middle of an image; and
last, workers that give presigned URLs, whose images come from the store itself. Each checks
the bucket's keys and that DATA_DIR stayed empty.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.e2e.stack import SECRET, Stack, stack
from tests.processes import until
from tests.publish.wordpress_site import WordPressSite, missing
from tests.s3_server import S3Server, s3_server

pytestmark = pytest.mark.e2e

PREFIX = "af"


class System:
    def __init__(self, stack: Stack, s3: S3Server, bucket: str, site: WordPressSite | None):
        self.stack, self.s3, self.bucket, self.site = stack, s3, bucket, site
        self.articles: dict[str, dict[str, Any]] = {}  # name -> final status

    def keys(self, under: str = "") -> list[str]:
        """The bucket's keys below the prefix, without it."""
        cut = len(PREFIX) + 1
        return [k[cut:] for k in self.s3.keys(self.bucket, f"{PREFIX}/{under}")]

    def data_dir_is_empty(self) -> bool:
        data = self.stack.data_dir
        return not data.exists() or not any(data.rglob("*"))


@pytest.fixture(scope="module")
def system(
    cache_dir: Path, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[System]:
    tmp = tmp_path_factory.mktemp("s3-storage")
    with s3_server(tmp) as s3:
        bucket = s3.make_bucket(__name__)
        env = {
            **s3.env(bucket, PREFIX),
            "OMP_NUM_THREADS": "1",
            # A killed worker's image is re-queued within seconds instead of 20-35.
            "ARTICLEFORGE_WORKER_JOB_MONITORING_INTERVAL_SECONDS": "1",
            "ARTICLEFORGE_WORKER_HEARTBEAT_GRACE_SECONDS": "3",
            "ARTICLEFORGE_WORKER_MAINTENANCE_INTERVAL_SECONDS": "1",
            "ARTICLEFORGE_PUBLISH_RETRY_INTERVALS": "1,1",
            "ARTICLEFORGE_PUBLISH_TIMEOUT_SECONDS": "20",
        }
        site = None if missing() else WordPressSite(webhook_secret=SECRET).start()
        if site is not None:
            env |= {
                "ARTICLEFORGE_PUBLISH_WORDPRESS_URL": site.url,
                "ARTICLEFORGE_PUBLISH_WORDPRESS_USER": site.user,
                "ARTICLEFORGE_PUBLISH_WORDPRESS_APP_PASSWORD": site.app_password,
            }
        try:
            with stack(cache_dir, tmp, redis_url, 2, env) as s:
                yield System(s, s3, bucket, site)
        finally:
            if site is not None:
                site.stop()


def body(topic: str, seed: int) -> dict[str, Any]:
    return {
        "topic": topic,
        "sections": 2,
        "target_words": 120,
        "text": {"seed": seed},
        "images": {"count": 2, "steps": 2, "size": "64x64", "seed": seed},
    }


def finish(system: System, article_id: str) -> dict[str, Any]:
    status = system.stack.wait_for([article_id], timeout=180, poll=0.2)[article_id]
    assert status["status"] == "succeeded", status
    return status


def fetch_png(url: str, seed: int) -> None:
    """The image behind an article's URL, fetched as a CMS page would: no key."""
    served = httpx.get(url, timeout=30)
    assert served.status_code == 200, (url, served.text)
    assert served.headers["content-type"] == "image/png"
    assert f"Seed: {seed}" in Image.open(io.BytesIO(served.content)).info["parameters"]


def test_a_whole_article_is_kept_in_the_bucket(system: System) -> None:
    with system.stack.client() as client:
        article_id = client.post("/v1/articles", json=body("Rooftop solar", 7)).json()["id"]
    status = finish(system, article_id)
    system.articles["first"] = status
    images = status["article"]["images"]
    for image in images:
        assert image["url"].startswith(f"{system.stack.gateway}/v1/images/{image['id']}?")
        fetch_png(image["url"], image["seed"])
    keys = system.keys()
    assert f"articles/{article_id}.json" in keys
    assert {f"images/{i['id']}.png" for i in images} <= set(keys)
    assert "url_signing_secret" in keys  # one secret for every host, generated once
    assert system.data_dir_is_empty()


def test_a_regeneration_keeps_its_revisions_in_the_bucket(system: System) -> None:
    article_id = system.articles["first"]["id"]
    first = system.articles["first"]["article"]
    with system.stack.client() as client:
        regenerated = client.post(
            f"/v1/articles/{article_id}/sections/1/regenerate", json={"seed": 5}
        )
        assert regenerated.status_code == 202, regenerated.text
        until(
            "revision 2", lambda: client.get(f"/v1/articles/{article_id}").json()["revision"] == 2
        )
        redrawn = client.post(
            f"/v1/articles/{article_id}/images/1/regenerate", json={"seed": 77, "steps": 2}
        )
        assert redrawn.status_code == 202, redrawn.text
        third = until(
            "revision 3",
            lambda: (
                (s := client.get(f"/v1/articles/{article_id}").json())["revision"] == 3
                and s["edit"]["status"] == "succeeded"
                and s
            ),
        )
        older = client.get(f"/v1/articles/{article_id}", params={"revision": 1}).json()
    assert older["article"] == first
    new_image = third["article"]["images"][1]
    assert new_image["id"] != first["images"][1]["id"]
    fetch_png(new_image["url"], 77)
    fetch_png(first["images"][1]["url"], first["images"][1]["seed"])  # revision 1's, still there
    keys = system.keys()
    assert {f"revisions/{article_id}/{n}.json" for n in (1, 2, 3)} <= set(keys)
    assert f"images/{new_image['id']}.png" in keys
    assert system.data_dir_is_empty()
    system.articles["first"] = third


def test_a_publish_uploads_the_images_from_the_bucket(system: System) -> None:
    if system.site is None:
        pytest.skip(f"no real WordPress here: {missing()}")
    status = system.articles["first"]
    article_id = status["id"]
    with system.stack.client() as client:
        accepted = client.post(
            f"/v1/articles/{article_id}/publish", json={"target": "wordpress", "status": "publish"}
        )
        assert accepted.status_code == 202, accepted.text
        record = until(
            "the publish",
            lambda: (
                (p := client.get(f"/v1/articles/{article_id}").json()["publish"].get("wordpress"))
                and p["state"] in ("published", "failed")
                and p
            ),
            timeout=120,
        )
    assert record["state"] == "published", record
    with system.site.api() as api:
        post = api.get(f"/wp/v2/posts/{record['post_id']}", params={"context": "edit"}).json()
        media = api.get(f"/wp/v2/media/{post['featured_media']}").json()
    assert post["status"] == "publish" and media["media_type"] == "image"
    assert f"publish/{article_id}/wordpress.json" in system.keys()
    assert system.data_dir_is_empty()


def test_a_worker_killed_in_an_image_loses_nothing(system: System) -> None:
    stack = system.stack
    slow = body("Heat pumps", 9)
    slow["images"]["steps"] = 60  # long enough to be caught in the middle
    with stack.client() as client:
        article_id = client.post("/v1/articles", json=slow).json()["id"]
    job_id = f"{article_id}-image-0"

    def drawing() -> dict[str, str] | None:
        job = stack.job(job_id)
        step = stack.redis.hget(f"af:article:{article_id}", "image_step:0")
        return job if job.get("status") == "started" and step else None

    job = until("image 0 drawing", drawing, every=0.02)
    started_at = job.get("started_at")
    stack.kill_worker(job["worker_name"])
    if not stack.workers:  # one worker per process: start another, as an orchestrator would
        stack.add_worker()
    killed_at = time.monotonic()
    status = finish(system, article_id)
    assert stack.job(job_id).get("started_at") != started_at  # it ran again
    assert time.monotonic() - killed_at < 120
    images = status["article"]["images"]
    assert len({i["id"] for i in images}) == 2
    for image in images:
        fetch_png(image["url"], image["seed"])
    # The re-run wrote the same object over its own: every PNG in the bucket is an article's
    # (this one's, and the first one's at revisions 1 and 3).
    with stack.client() as client:
        first_id = system.articles["first"]["id"]
        revision_1 = client.get(f"/v1/articles/{first_id}", params={"revision": 1}).json()
    kept_images = [status, revision_1, system.articles["first"]]
    in_articles = {f"images/{i['id']}.png" for s in kept_images for i in s["article"]["images"]}
    assert set(system.keys("images/")) == in_articles
    # With its Redis record gone, the article is served from the bucket's copy.
    stack.redis.delete(f"af:article:{article_id}")
    with stack.client() as client:
        kept = client.get(f"/v1/articles/{article_id}").json()
    assert kept["article"] == status["article"]
    assert system.data_dir_is_empty()


def test_presigned_urls_fetch_images_from_the_store(system: System) -> None:
    """Workers set to presigned URLs replace the others: their articles' image URLs are the
    store's, fetched without the gateway."""
    stack = system.stack
    stack.env |= {
        "ARTICLEFORGE_STORAGE_IMAGE_URLS": "presigned",
        "ARTICLEFORGE_IMAGE_URL_TTL_SECONDS": "600",
    }
    old = list(stack.workers)
    stack.add_worker()
    for name in old:
        stack.kill_worker(name)
    with stack.client() as client:
        article_id = client.post("/v1/articles", json=body("Rain gardens", 11)).json()["id"]
    status = finish(system, article_id)
    for image in status["article"]["images"]:
        path = f"{system.bucket}/{PREFIX}/images/{image['id']}.png"
        assert image["url"].startswith(f"{system.s3.endpoint}/{path}?"), image["url"]
        assert "X-Amz-Expires=600" in image["url"]
        fetch_png(image["url"], image["seed"])
    assert system.data_dir_is_empty()
