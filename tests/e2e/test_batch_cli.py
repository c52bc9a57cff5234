"""`articleforge batch topics.csv` against the real processes (tests/e2e/stack.py: text, image and
gateway servers and a worker pool on the tiny models): a CSV runs to success with the progress
followed and exit 0; `--no-wait` prints the id of a batch that exists as asked; a CSV or a target
the gateway refuses exits 2 naming the field; Ctrl-C stops following and leaves the batch
running; and no gateway at `--url` says how to start one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.stack import Stack, stack
from tests.processes import articleforge_command, default_sigint, free_port, until

pytestmark = pytest.mark.e2e

KEY = "sk-cli-batch"
# Small articles, so the pool finishes each in a second or two: one section, no images.
SMALL = "topic,sections,words,images\n"


def csv_file(tmp_path: Path, *topics: str) -> Path:
    path = tmp_path / "topics.csv"
    path.write_text(SMALL + "".join(f"{topic},1,100,0\n" for topic in topics))
    return path


@pytest.fixture(scope="module")
def batch_stack(
    cache_dir: Path, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[Stack]:
    env = {"ARTICLEFORGE_API_KEYS": KEY, "OMP_NUM_THREADS": "1"}
    with stack(cache_dir, tmp_path_factory.mktemp("batch-cli"), redis_url, 2, env) as s:
        yield s


def cli(stack: Stack, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`articleforge batch ARGS` pointed at the stack, with its key as the gateway setting
    (the command's default `--api-key`)."""
    env = {**os.environ, "ARTICLEFORGE_API_KEYS": KEY}
    return subprocess.run(
        [*articleforge_command(), "batch", *args, "--url", stack.gateway],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def client(stack: Stack) -> httpx.Client:
    return httpx.Client(
        base_url=stack.gateway, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    )


def batch_of(stack: Stack, batch_id: str) -> dict[str, Any]:
    with client(stack) as c:
        reply = c.get(f"/v1/batches/{batch_id}")
        assert reply.status_code == 200, reply.text
        return dict(reply.json())


def test_a_batch_runs_to_success_and_exits_0(batch_stack: Stack, tmp_path: Path) -> None:
    topics = ("Rain barrels", "Worm composting", "Seed saving")
    result = cli(batch_stack, str(csv_file(tmp_path, *topics)), "--name", "Garden week")
    assert result.returncode == 0, result.stderr[-3000:]
    [batch_id] = result.stdout.split()
    status = batch_of(batch_stack, batch_id)
    assert status["status"] == "succeeded" and status["name"] == "Garden week"
    assert [item["topic"] for item in status["items"]] == list(topics)
    assert f"batch {batch_id} succeeded: 3 succeeded" in result.stderr, result.stderr
    assert "3/3" in result.stderr, result.stderr  # the progress bar's ended of total


def test_no_wait_prints_the_id_of_the_batch_as_asked(batch_stack: Stack, tmp_path: Path) -> None:
    path = csv_file(tmp_path, "Cold frames", "Hot beds")
    argv = [
        str(path),
        "--no-wait",
        "--name",
        "Frames",
        "--defaults",
        json.dumps({"language": "de"}),
        "--idempotency-key",
        "frames-1",
    ]
    result = cli(batch_stack, *argv)
    assert result.returncode == 0, result.stderr[-3000:]
    [batch_id] = result.stdout.split()
    status = batch_of(batch_stack, batch_id)
    assert (status["name"], status["counts"]["total"]) == ("Frames", 2)
    with client(batch_stack) as c:
        first = c.get(f"/v1/articles/{status['items'][0]['article_id']}").json()
    assert first["batch"]["id"] == batch_id

    # The same key and body: the same batch, said so.
    again = cli(batch_stack, *argv)
    assert again.returncode == 0 and again.stdout.split() == [batch_id], again.stderr
    assert "already sent with this --idempotency-key" in again.stderr


def test_a_refused_csv_exits_2_naming_the_field(batch_stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("topic,words\nHeat pumps,400\nSolar roofs,lots\n")
    result = cli(batch_stack, str(path))
    assert result.returncode == 2, result.stderr
    assert not result.stdout
    assert "(422) `items.1.target_words`" in result.stderr, result.stderr
    assert "CSV line 3, column `words`" in result.stderr, result.stderr

    # A target this gateway has no settings for: its 400, naming the field.
    result = cli(batch_stack, str(csv_file(tmp_path, "Solar roofs")), "--target", "ghost")
    assert result.returncode == 2, result.stderr
    assert "(400) `items.0.publish.target`" in result.stderr, result.stderr

    # Calendar options without the calendar's start: refused before anything is sent.
    result = cli(batch_stack, str(csv_file(tmp_path, "Solar roofs")), "--times", "09:00")
    assert result.returncode == 2 and "give --start too" in result.stderr, result.stderr


def test_ctrl_c_stops_following_and_the_batch_goes_on(batch_stack: Stack, tmp_path: Path) -> None:
    path = csv_file(tmp_path, *(f"Balcony plant {k}" for k in range(12)))
    env = {**os.environ, "ARTICLEFORGE_API_KEYS": KEY}
    proc = subprocess.Popen(
        [*articleforge_command(), "batch", str(path), "--url", batch_stack.gateway],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    assert proc.stdout is not None
    batch_id = proc.stdout.readline().strip()  # printed once the gateway took the batch
    assert batch_id.startswith("bat_"), proc.communicate(timeout=30)
    time.sleep(1)  # following by now (a look a second); 12 items take the pool far longer
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert f"stopped following batch {batch_id}; it goes on" in err, err
    assert f"curl -X DELETE {batch_stack.gateway}/v1/batches/{batch_id}" in err, err
    assert batch_of(batch_stack, batch_id)["status"] == "running"
    with client(batch_stack) as c:  # free the pool for the other tests
        assert c.delete(f"/v1/batches/{batch_id}").status_code == 200
    until(
        "the batch to be cancelled",
        lambda: batch_of(batch_stack, batch_id)["status"] == "cancelled",
    )


def test_no_gateway_at_the_url_says_how_to_start_one(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [*articleforge_command(), "batch", str(csv_file(tmp_path, "Solar")), "--url", nowhere],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert f"no gateway answers at {nowhere}" in result.stderr, result.stderr
    assert "`articleforge up`" in result.stderr, result.stderr
