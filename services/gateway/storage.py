"""Where finished articles, images and the other kept files live: DATA_DIR, or any S3 bucket.

Everything that the gateway and the workers keep outside Redis goes through one small
interface, ``Blobs``, by key: a relative name such as ``images/img_….png``, the same under
DATA_DIR (``LocalBlobs``) and under the bucket's prefix (``S3Blobs``). The keys are

    articles/{id}.json          the finished article and its owner (store.py)
    images/{image_id}.png       the PNGs (store.py)
    sources/{id}.json           the loaded sources of a grounded article (store.py)
    revisions/{id}/{n}.json     every revision (revisions.py)
    publish/{id}/{target}.json  publish records (publish/job.py)
    webhook_secret, url_signing_secret   the generated secrets (``kept_secret``)

``ARTICLEFORGE_STORAGE_URL`` chooses the backend once per settings object (config.py).

Nothing half-written is ever read: a local write goes to a temporary file that is renamed into
place, and an S3 PUT replaces the whole object at once. A generated secret is created only if
absent (a hard link locally, ``If-None-Match: *`` on S3), so a gateway and workers that start
together agree on one. Failures of the store become ``StorageError``: a 503 for a request, the
reason of a failed stage for a job, with a sentence that names the setting to check.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from pydantic import SecretStr

from services.common.errors import NotReady

KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$")
CONTENT_TYPES = {".png": "image/png", ".json": "application/json"}
# A presigned URL signed with SigV4 is valid for at most 7 days.
PRESIGNED_MAX_SECONDS = 7 * 24 * 3600
NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class StorageError(NotReady):
    """The object store (or DATA_DIR) failed; the message says which setting to check."""

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "5"})


def check_key(key: str) -> str:
    if not KEY.match(key) or ".." in key.split("/"):
        raise ValueError(f"not a storage key: {key!r}")
    return key


class Blobs(Protocol):
    """Whole objects by key; ``get`` gives None for one that is absent."""

    def describe(self, key: str = "") -> str: ...
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes | None: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def create(self, key: str, data: bytes) -> bool: ...
    def check(self) -> str | None: ...
    def presigned_url(self, key: str, expires_in: int) -> str: ...


def kept_secret(blobs: Blobs, key: str, make: Callable[[], str]) -> str:
    """The secret kept under ``key``, made with ``make()`` and stored there on first use.

    The gateway and the workers may start together: the store's create-if-absent makes one of
    them the creator, and the others read what it wrote.
    """
    found = blobs.get(key)
    if found is None:
        secret = make()
        if blobs.create(key, (secret + "\n").encode()):
            return secret
    for _ in range(50):  # a file left empty by an older, non-atomic creator
        text = (found or b"").decode().strip()
        if text:
            return text
        time.sleep(0.02)
        found = blobs.get(key)
    raise StorageError(f"{blobs.describe(key)} is empty; delete it to generate a new secret")


def atomic_write(path: Path, data: bytes) -> None:
    """Writes ``path`` whole or not at all (a temporary file beside it, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


class LocalBlobs:
    """Files under one folder (ARTICLEFORGE_DATA_DIR), each written atomically, mode 0600."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self, key: str = "") -> str:
        return str(self.root / key) if key else f"ARTICLEFORGE_DATA_DIR ({self.root})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise StorageError(
                f"{self.describe(key)}: {exc.strerror or exc}; check ARTICLEFORGE_DATA_DIR "
                "(the folder must be writable by the service user)"
            ) from exc

    def put(self, key: str, data: bytes) -> None:
        with self._errors(key):
            atomic_write(self._path(key), data)

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        with self._errors(key):
            try:
                return path.read_bytes()
            except FileNotFoundError:
                return None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        with self._errors(key), contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def list(self, prefix: str) -> list[str]:
        """Keys that start with ``prefix``, which names a folder (``publish/art_…/``)."""
        folder = self.root / check_key(prefix.rstrip("/"))
        if not folder.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".")  # atomic_write's temporary files
        )

    def create(self, key: str, data: bytes) -> bool:
        """Writes ``key`` only if it is absent; False when it was there already. A hard link
        of a complete temporary file, so no reader ever sees it empty."""
        path = self._path(key)
        with self._errors(key):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in NO_HARD_LINKS:
                    raise
            finally:
                os.unlink(tmp)
            # A filesystem without hard links: an exclusive create (readers of the moment
            # between it and the write see it empty, and ``kept_secret`` waits that out).
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return True

    def check(self) -> str | None:
        return None  # the folder is made on first write; a failure names it then

    def presigned_url(self, key: str, expires_in: int) -> str:
        raise ValueError("presigned URLs need ARTICLEFORGE_STORAGE_URL=s3://...")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix"); ValueError saying what to
    write instead (the messages leave out the variable's name: pydantic puts it in front)."""
    parts = urlsplit(url.strip())
    if parts.scheme != "s3":
        raise ValueError(
            f"{url!r} is not an s3:// URL: give s3://bucket/prefix for an S3-compatible store "
            "(the endpoint goes in ARTICLEFORGE_STORAGE_ENDPOINT_URL), or leave it empty to "
            "keep the files in ARTICLEFORGE_DATA_DIR"
        )
    bucket = parts.netloc
    if not bucket:
        raise ValueError(f"{url!r} names no bucket: give s3://bucket or s3://bucket/prefix")
    if not BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(
            f"{bucket!r} is not a bucket name (3-63 lowercase letters, digits, dots and "
            "hyphens, starting and ending with a letter or digit)"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r} must not carry a query or fragment")
    prefix = parts.path.strip("/")
    if prefix and not KEY.match(prefix):
        raise ValueError(
            f"the prefix {prefix!r} may hold only letters, digits, `_`, `.`, `-` and `/`"
        )
    return bucket, prefix


class S3Blobs:
    """Objects in one bucket under one prefix, through boto3 (any S3-compatible store).

    boto3 is imported on first use, so a gateway on DATA_DIR never loads it. A client is made
    once per process: RQ forks a work horse per job, and a client's pooled connections must not
    be shared across a fork.
    """

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        addressing_style: str = "auto",
        timeout: float = 10.0,
        attempts: int = 3,
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.endpoint_url = endpoint_url
        self.public_endpoint_url = public_endpoint_url
        self.region = region
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.addressing_style = addressing_style
        self.timeout = timeout
        self.attempts = attempts
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._clients: dict[str | None, Any] = {}

    def describe(self, key: str = "") -> str:
        path = "/".join(p for p in (self.prefix, key) if p)
        return f"s3://{self.bucket}/{path}" if path else f"s3://{self.bucket}"

    def _key(self, key: str) -> str:
        check_key(key.rstrip("/"))
        return f"{self.prefix}/{key}" if self.prefix else key

    def _client(self, endpoint_url: str | None = None) -> Any:
        endpoint_url = endpoint_url or self.endpoint_url
        if self._pid != os.getpid():  # a forked child: the parent's clients and lock stay there
            self._pid, self._lock, self._clients = os.getpid(), threading.Lock(), {}
        with self._lock:
            client = self._clients.get(endpoint_url)
            if client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    connect_timeout=self.timeout,
                    read_timeout=self.timeout,
                    retries={"max_attempts": self.attempts, "mode": "standard"},
                    s3={"addressing_style": self.addressing_style},
                    signature_version="s3v4",
                    # boto3 1.36 sends CRC32 checksums on every PUT by default, which some
                    # S3-compatible stores refuse; only where the API requires them.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                )
                client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=endpoint_url,
                    region_name=self.region,
                    aws_access_key_id=self.access_key_id,
                    aws_secret_access_key=self.secret_access_key,
                    config=config,
                )
                self._clients[endpoint_url] = client
            return client

    def _where(self) -> str:
        return self.endpoint_url or "AWS S3"

    @contextlib.contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """botocore's exceptions as one StorageError that says what to change."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        what = f"{action} {self.describe(key)}"
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            # HEAD has no body, so a missing bucket is a bare 404 there.
            if code == "NoSuchBucket" or (status == 404 and exc.operation_name == "HeadBucket"):
                message = (
                    f"{what}: the bucket {self.bucket!r} does not exist at {self._where()}; "
                    "create it, or fix ARTICLEFORGE_STORAGE_URL (and "
                    "ARTICLEFORGE_STORAGE_ENDPOINT_URL)"
                )
            elif status == 403 or code in (
                "AccessDenied",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "InvalidToken",
                "ExpiredToken",
            ):
                message = (
                    f"{what}: access denied by {self._where()} ({code or status}); check "
                    "ARTICLEFORGE_STORAGE_ACCESS_KEY_ID and ARTICLEFORGE_STORAGE_SECRET_ACCESS_KEY "
                    "(or boto3's own credentials when they are unset) and the bucket's policy, "
                    "which must allow s3:GetObject, s3:PutObject, s3:DeleteObject and "
                    "s3:ListBucket"
                )
            else:
                detail = error.get("Message") or code or f"HTTP {status}"
                message = f"{what}: the object store answered {code or status}: {detail}"
            raise StorageError(message) from exc
        except NoCredentialsError as exc:
            raise StorageError(
                f"{what}: no credentials for the object store; set "
                "ARTICLEFORGE_STORAGE_ACCESS_KEY_ID and ARTICLEFORGE_STORAGE_SECRET_ACCESS_KEY, "
                "or give boto3 its own (AWS_* variables, ~/.aws, an instance role)"
            ) from exc
        except BotoCoreError as exc:  # no connection, timeouts, a bad endpoint
            raise StorageError(
                f"{what}: the object store at {self._where()} is unreachable ({exc}); check "
                "ARTICLEFORGE_STORAGE_ENDPOINT_URL and the network"
            ) from exc

    @staticmethod
    def _absent(exc: Exception) -> bool:
        response = getattr(exc, "response", None) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in ("NoSuchKey", "404", "NotFound") or (
            status == 404 and code != "NoSuchBucket"
        )

    def put(self, key: str, data: bytes) -> None:
        name = self._key(key)
        extra = {"ContentType": CONTENT_TYPES.get(Path(key).suffix, "application/octet-stream")}
        with self._errors("writing", key):
            self._client().put_object(Bucket=self.bucket, Key=name, Body=data, **extra)

    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        name = self._key(key)
        with self._errors("reading", key):
            try:
                reply = self._client().get_object(Bucket=self.bucket, Key=name)
            except ClientError as exc:
                if self._absent(exc):
                    return None
                raise
            body: bytes = reply["Body"].read()
            return body

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        name = self._key(key)
        with self._errors("looking for", key):
            try:
                self._client().head_object(Bucket=self.bucket, Key=name)
            except ClientError as exc:
                if self._absent(exc):
                    # HEAD has no body: a missing bucket answers a bare 404 too. Tell them apart.
                    self._client().head_bucket(Bucket=self.bucket)
                    return False
                raise
            return True

    def delete(self, key: str) -> None:
        name = self._key(key)
        with self._errors("deleting", key):
            self._client().delete_object(Bucket=self.bucket, Key=name)

    def list(self, prefix: str) -> list[str]:
        start = self._key(prefix)
        cut = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        with self._errors("listing", prefix):
            pages = self._client().get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.bucket, Prefix=start):
                keys += [item["Key"][cut:] for item in page.get("Contents", [])]
        return sorted(keys)

    def create(self, key: str, data: bytes) -> bool:
        """A conditional PUT (``If-None-Match: *``): False when the object exists already, or
        another writer's conditional PUT of it is in flight."""
        from botocore.exceptions import ClientError

        name = self._key(key)
        with self._errors("creating", key):
            try:
                self._client().put_object(Bucket=self.bucket, Key=name, Body=data, IfNoneMatch="*")
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return False
                raise
            return True

    def check(self) -> str | None:
        """None when the bucket answers (HEAD), else the reason, for /readyz."""
        try:
            with self._errors("reaching", ""):
                self._client().head_bucket(Bucket=self.bucket)
        except StorageError as exc:
            return exc.message
        return None

    def presigned_url(self, key: str, expires_in: int) -> str:
        """A GET URL of the object that needs no credentials until ``expires_in`` seconds from
        now; signed locally (no request), for ARTICLEFORGE_STORAGE_PUBLIC_ENDPOINT_URL when set."""
        name = self._key(key)
        client = self._client(self.public_endpoint_url)
        with self._errors("signing a URL of", key):
            url: str = client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": name},
                ExpiresIn=expires_in,
            )
        return url


class StorageSettings(Protocol):
    """The settings ``open_blobs`` reads (GatewaySettings has them; config.py imports this
    module, not the other way round)."""

    @property
    def data_dir(self) -> Path: ...
    @property
    def storage_url(self) -> str: ...
    @property
    def storage_endpoint_url(self) -> str | None: ...
    @property
    def storage_public_endpoint_url(self) -> str | None: ...
    @property
    def storage_region(self) -> str | None: ...
    @property
    def storage_access_key_id(self) -> str | None: ...
    @property
    def storage_secret_access_key(self) -> SecretStr | None: ...
    @property
    def storage_addressing_style(self) -> str: ...
    @property
    def storage_timeout_seconds(self) -> float: ...
    @property
    def storage_attempts(self) -> int: ...


def open_blobs(config: StorageSettings) -> Blobs:
    """DATA_DIR when ARTICLEFORGE_STORAGE_URL is empty, else the bucket it names."""
    if not config.storage_url:
        return LocalBlobs(config.data_dir)
    secret = config.storage_secret_access_key
    return S3Blobs(
        config.storage_url,
        endpoint_url=config.storage_endpoint_url,
        public_endpoint_url=config.storage_public_endpoint_url,
        region=config.storage_region,
        access_key_id=config.storage_access_key_id,
        secret_access_key=secret.get_secret_value() if secret is not None else None,
        addressing_style=config.storage_addressing_style,
        timeout=config.storage_timeout_seconds,
        attempts=config.storage_attempts,
    )
