"""A real S3-compatible server for tests: moto's server mode, as a process of its own.

``python -m moto.server`` (the `moto[server]` package of the `dev` extra) listens on a free
loopback port and speaks the S3 REST API over HTTP: SigV4-signed requests from boto3, presigned
GET URLs, ListObjectsV2, conditional PUTs (``If-None-Match: *``). The gateway and workers reach
it exactly as they would MinIO or AWS, through ARTICLEFORGE_STORAGE_ENDPOINT_URL. Why moto: it
installs from PyPI in seconds and runs offline; MinIO is in none of the registries this project
installs from (PyPI, Debian, npm), and SeaweedFS or Garage would need a Go or Rust build.

What it does not do: it keeps objects in memory, and it checks signatures only when started
with ``auth=True`` (moto's INITIAL_NO_AUTH_ACTION_COUNT), where it refuses unknown access keys
and, being moto, cannot verify presigned URLs. Tests that need a refusal start such a server.
"""

from __future__ import annotations

import re
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.processes import free_port, running

ACCESS_KEY = "AKIATESTARTICLEFORGE"
SECRET_KEY = "articleforge-test-secret-key"
REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint: str
    log: Path

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(s3={"addressing_style": "path"}),
        )

    def make_bucket(self, hint: str) -> str:
        """A new bucket named after ``hint`` (a module's name) with a random tail."""
        stem = re.sub(r"[^a-z0-9-]+", "-", hint.lower()).strip("-")[:40]
        name = f"{stem}-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        listing = self.client().get_paginator("list_objects_v2")
        pages = listing.paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def read(self, bucket: str, key: str) -> bytes:
        body: bytes = self.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def env(self, bucket: str, prefix: str = "af", **extra: str) -> dict[str, str]:
        """The ARTICLEFORGE_STORAGE_* settings of a gateway or worker that keeps its files in
        ``bucket`` under ``prefix``."""
        return {
            "ARTICLEFORGE_STORAGE_URL": f"s3://{bucket}/{prefix}",
            "ARTICLEFORGE_STORAGE_ENDPOINT_URL": self.endpoint,
            "ARTICLEFORGE_STORAGE_REGION": REGION,
            "ARTICLEFORGE_STORAGE_ACCESS_KEY_ID": ACCESS_KEY,
            "ARTICLEFORGE_STORAGE_SECRET_ACCESS_KEY": SECRET_KEY,
            "ARTICLEFORGE_STORAGE_ADDRESSING_STYLE": "path",
            **{f"ARTICLEFORGE_STORAGE_{k.upper()}": v for k, v in extra.items()},
        }


@contextmanager
def s3_server(log_dir: Path, auth: bool = False) -> Iterator[S3Server]:
    """moto's S3 server on a free port until the block ends. With ``auth``, the first request
    (a bucket's creation) goes unauthenticated and every later one must carry a known key."""
    port = free_port()
    log = log_dir / f"moto-{port}.log"
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": "1"} if auth else {}
    with running(
        ["-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        program=[sys.executable],
        env=env,
        ready_url=f"http://127.0.0.1:{port}/moto-api/",
        timeout=30,
        log_path=log,
    ):
        yield S3Server(f"http://127.0.0.1:{port}", log)
