"""The storage (services/gateway/storage.py): the same behaviour from DATA_DIR and from a real
S3-compatible server (moto's, its own process: tests/s3_server.py), the errors an operator sees
when the store is missing, unreachable or refuses the key, the settings that are refused at
start-up, and the gateway's image route and /readyz on S3."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from services.gateway import signing
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from services.gateway.storage import Blobs, LocalBlobs, S3Blobs, StorageError, kept_secret
from services.gateway.store import ArticleStore
from tests.processes import free_port
from tests.s3_server import ACCESS_KEY, REGION, SECRET_KEY, S3Server, s3_server

KEY = "sk-storage"
IMAGE_ID = "img_" + "ab" * 12
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="module")
def bucket(s3: S3Server) -> str:
    return s3.make_bucket(__name__)


def s3_blobs(s3: S3Server, bucket: str, prefix: str, **overrides: Any) -> S3Blobs:
    options: dict[str, Any] = {
        "endpoint_url": s3.endpoint,
        "region": REGION,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "addressing_style": "path",
        **overrides,
    }
    return S3Blobs(f"s3://{bucket}/{prefix}", **options)


@pytest.fixture(params=["local", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Blobs:
    if request.param == "local":
        return LocalBlobs(tmp_path / "data")
    s3: S3Server = request.getfixturevalue("s3")
    bucket: str = request.getfixturevalue("bucket")
    return s3_blobs(s3, bucket, f"t/{tmp_path.name}")


# --- one behaviour, two backends ---


def test_objects_are_written_read_listed_and_deleted(blobs: Blobs) -> None:
    assert blobs.get("images/none.png") is None and not blobs.exists("images/none.png")
    blobs.put("images/a.png", PNG)
    blobs.put("publish/art_1/wordpress.json", b'{"a": 1}')
    blobs.put("publish/art_1/ghost.json", b"{}")
    blobs.put("publish/art_10/ghost.json", b"{}")  # a sibling whose name starts the same
    assert blobs.get("images/a.png") == PNG and blobs.exists("images/a.png")
    blobs.put("images/a.png", b"again")  # replaced whole
    assert blobs.get("images/a.png") == b"again"
    assert blobs.list("publish/art_1/") == [
        "publish/art_1/ghost.json",
        "publish/art_1/wordpress.json",
    ]
    assert blobs.list("publish/art_2/") == []
    blobs.delete("images/a.png")
    blobs.delete("images/a.png")  # deleting what is gone is no error
    assert blobs.get("images/a.png") is None


def test_create_writes_only_what_is_absent(blobs: Blobs) -> None:
    assert blobs.create("webhook_secret", b"first\n")
    assert not blobs.create("webhook_secret", b"second\n")
    assert blobs.get("webhook_secret") == b"first\n"


def test_a_secret_made_by_racing_processes_is_one_secret(blobs: Blobs) -> None:
    """Gateway and workers start together: each makes a secret, one of them is kept by all."""
    made: list[str] = []
    start = threading.Barrier(6)

    def one(k: int) -> None:
        start.wait()
        made.append(kept_secret(blobs, "url_signing_secret", lambda: f"secret-{k}"))

    threads = [threading.Thread(target=one, args=(k,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(made)) == 1 and len(made) == 6
    assert blobs.get("url_signing_secret") == f"{made[0]}\n".encode()


@pytest.mark.parametrize("key", ["../secret", "/etc/passwd", "images/../../x", "", "a//b"])
def test_keys_cannot_leave_the_store(blobs: Blobs, key: str) -> None:
    with pytest.raises(ValueError, match="not a storage key"):
        blobs.put(key, b"x")


def test_s3_keys_live_under_the_prefix_and_prefixes_do_not_mix(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    one, two = s3_blobs(s3, bucket, f"{tmp_path.name}/one"), s3_blobs(s3, bucket, "")
    one.put("images/a.png", PNG)
    assert s3.keys(bucket, tmp_path.name) == [f"{tmp_path.name}/one/images/a.png"]
    assert two.get("images/a.png") is None
    reply = s3.client().head_object(Bucket=bucket, Key=f"{tmp_path.name}/one/images/a.png")
    assert reply["ContentType"] == "image/png"  # a presigned URL shows it as an image


def test_a_presigned_url_fetches_the_object_without_credentials(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    blobs = s3_blobs(s3, bucket, tmp_path.name)
    blobs.put("images/a.png", PNG)
    url = blobs.presigned_url("images/a.png", 300)
    assert url.startswith(f"{s3.endpoint}/{bucket}/{tmp_path.name}/images/a.png?")
    assert "X-Amz-Expires=300" in url and "X-Amz-Signature=" in url
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and fetched.content == PNG
    public = s3_blobs(
        s3, bucket, tmp_path.name, public_endpoint_url="https://files.example.com"
    ).presigned_url("images/a.png", 60)
    assert public.startswith(f"https://files.example.com/{bucket}/{tmp_path.name}/images/a.png?")


def test_a_forked_work_horse_writes_through_a_client_of_its_own(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """RQ forks a work horse per job from a worker that may have used the store already."""
    blobs = s3_blobs(s3, bucket, tmp_path.name)
    blobs.put("images/parent.png", PNG)
    parent_client = blobs._client()
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only if its write went through another client
        ok = False
        try:
            blobs.put("images/child.png", PNG)
            ok = blobs._client() is not parent_client
        finally:
            os._exit(0 if ok else 1)
    _, code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(code) == 0
    assert blobs.get("images/child.png") == PNG and blobs._client() is parent_client


# --- what an operator sees when the store fails ---


def test_a_missing_bucket_names_the_setting(s3: S3Server) -> None:
    blobs = s3_blobs(s3, "no-such-bucket-here", "")
    problem = blobs.check()
    assert problem and "does not exist" in problem and "ARTICLEFORGE_STORAGE_URL" in problem
    for call in (
        lambda: blobs.put("images/a.png", PNG),
        lambda: blobs.get("images/a.png"),
        lambda: blobs.exists("images/a.png"),
        lambda: blobs.list("publish/"),
    ):
        with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' does not exist"):
            call()


def test_an_unreachable_endpoint_names_the_setting_and_fails_fast() -> None:
    blobs = S3Blobs(
        "s3://bucket",
        endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        access_key_id="a",
        secret_access_key="b",
        region=REGION,
        timeout=1,
        attempts=1,
    )
    started = time.monotonic()
    with pytest.raises(StorageError, match="unreachable.*ARTICLEFORGE_STORAGE_ENDPOINT_URL"):
        blobs.get("images/a.png")
    assert time.monotonic() - started < 5
    problem = blobs.check()
    assert problem and "ARTICLEFORGE_STORAGE_ENDPOINT_URL" in problem


def test_a_refused_key_names_the_credential_settings(tmp_path: Path) -> None:
    with s3_server(tmp_path, auth=True) as strict:
        strict.client().create_bucket(Bucket="strict")  # the one request moto lets through
        blobs = S3Blobs(
            "s3://strict/p",
            endpoint_url=strict.endpoint,
            region=REGION,
            access_key_id="AKIANOSUCHKEY0000000",
            secret_access_key="wrong",
            attempts=1,
        )
        with pytest.raises(StorageError) as refused:
            blobs.put("images/a.png", PNG)
    assert "access denied" in refused.value.message
    assert "ARTICLEFORGE_STORAGE_ACCESS_KEY_ID" in refused.value.message
    assert refused.value.status_code == 503


def test_an_unwritable_data_dir_names_the_setting(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("a file where the folder should be")
    with pytest.raises(StorageError, match="ARTICLEFORGE_DATA_DIR"):
        LocalBlobs(tmp_path / "data").put("images/a.png", PNG)


# --- settings ---


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"storage_url": "gs://bucket/x"}, "is not an s3:// URL"),
        ({"storage_url": "s3:///prefix"}, "names no bucket"),
        ({"storage_url": "s3://Bad_Bucket"}, "is not a bucket name"),
        ({"storage_url": "s3://bucket/a b"}, "the prefix 'a b'"),
        ({"storage_endpoint_url": "http://minio:9000"}, "ARTICLEFORGE_STORAGE_URL is empty"),
        ({"storage_image_urls": "presigned"}, "ARTICLEFORGE_STORAGE_URL is empty"),
        (
            {"storage_url": "s3://bucket", "storage_image_urls": "presigned"},
            "needs ARTICLEFORGE_IMAGE_URL_TTL_SECONDS between 1 and 604800",
        ),
        (
            {"storage_url": "s3://bucket", "storage_access_key_id": "AKIA"},
            "ARTICLEFORGE_STORAGE_SECRET_ACCESS_KEY go together",
        ),
        (
            {"storage_url": "s3://bucket", "storage_endpoint_url": "minio:9000"},
            "not an http(s) URL",
        ),
    ],
)
def test_bad_storage_settings_are_refused_with_what_to_change(
    settings: dict[str, str], expected: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        GatewaySettings(_env_file=None, **settings)  # type: ignore[arg-type]
    assert expected in str(refused.value)


def test_the_default_is_data_dir_and_the_secret_key_stays_out_of_logs(tmp_path: Path) -> None:
    assert isinstance(GatewaySettings(_env_file=None, data_dir=tmp_path).storage(), LocalBlobs)  # type: ignore[call-arg]
    config = GatewaySettings(
        _env_file=None,  # type: ignore[call-arg]
        storage_url="s3://bucket/p",
        storage_access_key_id="AKIA",
        storage_secret_access_key="very-secret-key",  # type: ignore[arg-type]
    )
    assert isinstance(config.storage(), S3Blobs) and config.storage() is config.storage()
    assert "very-secret-key" in config.publish_secrets()  # what the services redact
    assert "very-secret-key" not in repr(config)


# --- the gateway on S3 ---


def gateway(
    s3: S3Server, bucket: str, prefix: str, tmp_path: Path, redis_url: str, **extra: Any
) -> TestClient:
    settings = GatewaySettings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        api_keys=KEY,
        public_url="http://testserver",
        storage_url=f"s3://{bucket}/{prefix}",
        storage_endpoint_url=s3.endpoint,
        storage_region=REGION,
        storage_access_key_id=ACCESS_KEY,
        storage_secret_access_key=SECRET_KEY,  # type: ignore[arg-type]
        storage_addressing_style="path",
        **extra,
    )
    return TestClient(create_app(settings))


def test_the_gateway_keeps_its_secrets_and_serves_images_from_the_bucket(
    s3: S3Server, bucket: str, tmp_path: Path, redis_url: str
) -> None:
    prefix = f"gw-{tmp_path.name}"
    with gateway(s3, bucket, prefix, tmp_path, redis_url) as client:
        settings: GatewaySettings = client.app.state.settings  # type: ignore[attr-defined]
        store: ArticleStore = client.app.state.store  # type: ignore[attr-defined]
        store.save_image(IMAGE_ID, PNG)
        url = urlsplit(signing.signed_image_url(settings, IMAGE_ID))
        served = client.get(f"{url.path}?{url.query}")  # no key: the gateway's signature
        assert served.status_code == 200 and served.content == PNG
        assert served.headers["content-type"] == "image/png"
        keyed = client.get(f"/v1/images/{IMAGE_ID}", headers={"Authorization": f"Bearer {KEY}"})
        assert keyed.content == PNG
        missing = client.get(
            "/v1/images/img_" + "0" * 24, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert missing.status_code == 404
        assert client.get("/readyz").status_code == 200
    assert s3.keys(bucket, prefix) == [
        f"{prefix}/images/{IMAGE_ID}.png",
        f"{prefix}/url_signing_secret",
        f"{prefix}/webhook_secret",
    ]
    assert not (tmp_path / "data").exists()  # nothing of it on this host


def test_presigned_image_urls_point_at_the_store(
    s3: S3Server, bucket: str, tmp_path: Path, redis_url: str
) -> None:
    prefix = f"pre-{tmp_path.name}"
    extra = {"storage_image_urls": "presigned", "image_url_ttl_seconds": 3600}
    with gateway(s3, bucket, prefix, tmp_path, redis_url, **extra) as client:
        settings: GatewaySettings = client.app.state.settings  # type: ignore[attr-defined]
        client.app.state.store.save_image(IMAGE_ID, PNG)  # type: ignore[attr-defined]
        url = signing.signed_image_url(settings, IMAGE_ID)
        assert url.startswith(f"{s3.endpoint}/{bucket}/{prefix}/images/{IMAGE_ID}.png?")
        assert "X-Amz-Expires=3600" in url
        assert httpx.get(url).content == PNG  # from the store, not through the gateway
        # The gateway's own route still serves it, for a key.
        keyed = client.get(f"/v1/images/{IMAGE_ID}", headers={"Authorization": f"Bearer {KEY}"})
        assert keyed.content == PNG


def test_a_missing_bucket_is_a_503_and_readyz_says_which_setting(
    s3: S3Server, tmp_path: Path, redis_url: str
) -> None:
    extra = {"url_signing_secret": "fixed", "webhook_secret": "whsec_" + "A" * 43 + "="}
    with gateway(s3, "gone-bucket", "p", tmp_path, redis_url, **extra) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "ARTICLEFORGE_STORAGE_URL" in ready.text and "gone-bucket" in ready.text
        image = client.get(f"/v1/images/{IMAGE_ID}", headers={"Authorization": f"Bearer {KEY}"})
        assert image.status_code == 503
        error = image.json()["error"]
        assert error["type"] == "service_unavailable"
        assert "bucket 'gone-bucket' does not exist" in error["message"]
        assert "ARTICLEFORGE_STORAGE_URL" in error["message"]
        article = client.get(
            "/v1/articles/art_" + "0" * 24, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert article.status_code == 503 and "gone-bucket" in article.json()["error"]["message"]
