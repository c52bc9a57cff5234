"""The RQ worker of the article pipeline: RQ's own recovery machinery, tuned to seconds.

RQ already knows how to survive a dead worker: a busy worker heartbeats its job, a job whose
heartbeat lapses is "abandoned", and the next maintenance pass of any worker re-queues it when
the job carries a ``Retry`` (the stage jobs do, see ``jobs.enqueue_article``). Out of the box
that takes minutes: RQ adds a fixed 60 s to every heartbeat, runs maintenance every 10 minutes,
and an idle worker blocks in BLPOP for 405 s before it even checks. ``ArticleWorker`` turns
those three knobs into settings: a dead worker's job is abandoned at most

    job_monitoring_interval + heartbeat_grace  (5 + 15 = 20 s)

after the kill, and queued again by the next maintenance pass of any worker: every
maintenance_interval (5 s) on an idle worker, at the end of its job on a busy one (RQ runs
maintenance between jobs only). Measured: running again 20-35 s after the kill.

``ArticleQueue`` works around RQ 3.0's ready-registry race (see ``enqueue_ready_jobs_by_queue``);
tests/gateway/test_rq_race.py reproduces it. One gap RQ leaves open is closed by the small
supervisor ``requeue_lost_jobs``, another by ``on_horse_killed``: a work horse killed on its
last retry gets its job's own failure callback, which RQ would not call.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import time
from multiprocessing import get_context
from multiprocessing.process import BaseProcess
from typing import Any

from redis import Redis
from rq import Queue, SimpleWorker, Worker
from rq.exceptions import AbandonedJobError, InvalidJobOperation
from rq.job import Job, JobStatus
from rq.registry import ReadyJobRegistry
from rq.worker_pool import WorkerPool

from services.gateway.batches import dispatch as batches
from services.gateway.config import GatewaySettings
from services.gateway.editorial import EDITING, expire_reviews
from services.gateway.job_base import redis_connection, settings
from services.gateway.publish.job import PUBLISHING, job_id, lock_key
from services.gateway.store import ArticleStore

logger = logging.getLogger(__name__)

REDRIVE_ATTEMPTS = 20
# A worker registers a job it popped within milliseconds; one still unregistered after this
# long was popped by a worker that died.
LOST_AFTER_SECONDS = 10.0
SUPERVISOR_LOCK = "af:supervisor:lock"
# A worker holds a queue's maintenance lock while it cleans (milliseconds). RQ keeps it 899 s,
# so a worker killed while cleaning would stop abandoned-job detection for 15 minutes.
MAINTENANCE_LOCK_SECONDS = 30


class ArticleQueue(Queue):
    def enqueue_ready_jobs_by_queue(self, job_ids_by_queue_name: dict[str, list[str]]) -> None:
        """Moves the dependents this worker just made ready onto their queues, and keeps at it.

        RQ 3.0 enqueues each ready job in a transaction that WATCHes the whole ready registry of
        its queue; when another worker adds or removes any job there at the same moment, the
        transaction aborts, RQ logs "Ready job ... changed while enqueueing; skipping for now"
        and leaves the job to the next maintenance pass (10 minutes by default). With a few
        workers finishing stages together that loses half the dependents. ``enqueue_jobs`` is
        safe to repeat (it claims each id under WATCH, so nothing is queued twice), so we call
        it again for the ids still in the registry. Anything left after that is swept by the
        short maintenance interval of ``ArticleWorker``.
        """
        for name, ids in job_ids_by_queue_name.items():
            registry = ReadyJobRegistry(
                name=name,
                connection=self.connection,
                job_class=self.job_class,
                serializer=self.serializer,
            )
            pending = list(ids)
            for _ in range(REDRIVE_ATTEMPTS):
                try:
                    registry.enqueue_jobs(pending)
                except Exception:  # RQ's own handler logs and leaves them for cleanup, too
                    logger.exception("queue %s: enqueueing ready jobs %s failed", name, pending)
                    break
                pending = [i for i in pending if self.connection.zscore(registry.key, i)]
                if not pending:
                    break
            if pending:
                logger.warning("queue %s: ready jobs %s left for maintenance", name, pending)

    def acquire_maintenance_lock(self) -> bool:
        return bool(
            self.connection.set(self.registry_cleaning_key, 1, nx=True, ex=MAINTENANCE_LOCK_SECONDS)
        )


# How long the worker's command thread (stop/kill commands over Redis pub/sub) blocks in one read.
COMMAND_POLL_SECONDS = 1.0


class PromptStop:
    """A worker that stops in about a second, not up to a minute.

    RQ 3.0 reads its command channel in a thread that blocks up to 60 s per read, and stops it
    by unsubscribing first so that Redis's reply wakes the read. When the thread takes that
    reply and re-enters the read before its stop flag is set (likely on a busy machine),
    redis-py 8's ``PubSubWorkerThread.stop()`` joins it until the 60 s read times out: every
    worker shutdown, and every burst worker's end, can hang a minute
    (tests/gateway/test_worker_stop.py reproduces it). Short reads bound that wait.
    """

    pubsub: Any
    pubsub_thread: Any
    pubsub_channel_name: str
    name: str

    def subscribe(self) -> None:
        logger.debug("worker %s: subscribing to %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()  # type: ignore[attr-defined]
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})  # type: ignore[attr-defined]
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=COMMAND_POLL_SECONDS,
            daemon=True,
            exception_handler=self._pubsub_exception_handler,  # type: ignore[attr-defined]
        )


class InProcessWorker(PromptStop, SimpleWorker):
    """RQ's ``SimpleWorker`` (jobs run in this process, no fork) that stops promptly: what the
    tests drain queues with."""


class RoutineMaintenanceAtDebug(logging.Filter):
    """Turns RQ's announcement of each maintenance pass into a DEBUG line.

    RQ logs every pass at INFO: one line per queue and one for the groups, three lines every
    ``maintenance_interval`` (5 s) per worker, which buried the jobs in the `up` console. What
    a pass finds is logged apart from these (an abandoned job by ``rq.registry``, a lost one by
    ``requeue_lost_jobs``, both as warnings), so only the routine lines go down a level.
    """

    # RQ 3.0's own format strings (rq/worker/base.py, clean_registries and
    # clean_group_registries); tests/gateway/test_worker_logging.py notices when they change.
    ROUTINE = frozenset(
        {"Worker %s: cleaning registries for queue: %s", "Worker %s: cleaning group registries"}
    )

    def filter(self, record: logging.LogRecord) -> bool:
        routine = isinstance(record.msg, str) and record.msg in self.ROUTINE
        if record.levelno != logging.INFO or not routine:
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


ROUTINE_MAINTENANCE_AT_DEBUG = RoutineMaintenanceAtDebug()


class ArticleWorker(PromptStop, Worker):
    """An RQ ``Worker`` whose heartbeat, abandoned-job detection and maintenance run in seconds,
    and whose maintenance passes keep off the console unless they find something."""

    def __init__(self, *args: Any, heartbeat_grace: int = 15, **kwargs: Any) -> None:
        kwargs.setdefault("queue_class", ArticleQueue)
        super().__init__(*args, **kwargs)
        self.heartbeat_grace = heartbeat_grace
        self.log.addFilter(ROUTINE_MAINTENANCE_AT_DEBUG)  # once: the logger keeps one of each

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # RQ: min(time left, monitoring interval) + 60. The 60 s is how long a job outlives its
        # worker before anyone may call it abandoned; the grace setting replaces it.
        interval = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            interval = int(min(job.timeout - working_time, interval))
        return max(1, interval) + self.heartbeat_grace

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: Any = None,
        exc_string: str = "",
        execution: Any = None,
    ) -> None:
        # RQ files a job stopped on request (`stop_jobs`: a cancel, or the rest of an article
        # whose stage failed) as failed. It failed at nothing: keep it with the cancelled jobs,
        # so the failed registry and `articleforge_gateway_failed_jobs` hold real failures only.
        stopped = self._stopped_job_id == job.id
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)
        if stopped:
            try:
                job.cancel()  # leaves the failed registry for the cancelled one
            except InvalidJobOperation:
                pass
            logger.info("job %s: stopped on request, filed as cancelled", job.id)

    @property
    def dequeue_timeout(self) -> int:
        # An idle worker only runs maintenance between BLPOPs; RQ blocks for worker_ttl - 15 s.
        return max(1, min(super().dequeue_timeout, int(self.maintenance_interval)))

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        lock = max(1, int(self.maintenance_interval) - 1)
        if self.connection.set(SUPERVISOR_LOCK, self.name, nx=True, ex=lock):
            requeue_lost_jobs(self.connection)
            expire_reviews(self.connection)
            batches.sweep(self.connection)


def on_horse_killed(job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
    """The work horse died under a live worker (OOM killer, SIGKILL). RQ queues the job again if
    it has retries left, but calls no failure callback when it has none; so the job's own
    callback (``on_failure``: the stage's, the regeneration's, the publish's) hears of it here,
    as of any lost worker. A job without one (a webhook) just ends failed."""
    if job.retries_left:
        logger.warning(
            "article %s: stage %s lost its work horse (%s); running it again",
            job.meta.get("article_id"),
            job.meta.get("stage"),
            ret_val,
        )
        return
    callback = job.failure_callback
    if callback is not None:
        callback(job, job.connection, AbandonedJobError, AbandonedJobError(), None)


def editing_job_ids(connection: Redis) -> list[str]:
    """The regeneration jobs under way (``services.gateway.editorial``): finished articles are
    no longer in ArticleStore.ACTIVE, yet theirs can be lost the same way."""
    redis: Any = connection
    editing = [a.decode() for a in redis.smembers(EDITING)]
    pipe = connection.pipeline(transaction=False)
    for article_id in editing:
        pipe.hget(ArticleStore.key(article_id), "edit_busy")
    claims = zip(editing, pipe.execute(), strict=True)
    return [f"{a}-edit-{raw.decode().split(':')[0]}" for a, raw in claims if raw]


def publishing_job_ids(connection: Redis) -> list[str]:
    """The publish jobs queued or running (``services.gateway.publish.job``): their articles
    are finished, yet a publish job can be lost the same way. An entry whose publish slot has
    expired (its job long gone) is dropped."""
    redis: Any = connection
    entries = [e.decode().rsplit(":", 1) for e in redis.smembers(PUBLISHING)]
    pipe = connection.pipeline(transaction=False)
    for article_id, target in entries:
        pipe.exists(lock_key(article_id, target))
    held = pipe.execute()
    stale = [f"{a}:{t}" for (a, t), live in zip(entries, held, strict=True) if not live]
    if stale:
        redis.srem(PUBLISHING, *stale)
    return [job_id(a, t) for (a, t), live in zip(entries, held, strict=True) if live]


def requeue_lost_jobs(connection: Redis, lost_after: float = LOST_AFTER_SECONDS) -> list[str]:
    """Puts back on its queue a stage job that a dead worker had popped but not yet registered.

    Why RQ cannot: a worker on several queues (ours listen on `articles,images`) dequeues with
    BLPOP, and only then adds the job to the started registry, where abandoned-job handling would
    find it. A worker that dies in between leaves a job that is `queued` but on no queue and in
    no registry, forever. RQ's own guard, the intermediate queue (BLMOVE), exists only for
    workers on a single queue, and waits a minute. So, in each maintenance pass (one worker at a
    time), the jobs of active articles, of regenerations and of publishes that are `queued` yet
    on no queue list are noted, and pushed back at the front once they have stayed so for
    ``lost_after`` seconds. Marks are
    keyed by the job's enqueue time, so a later enqueue of the same job starts afresh.
    """
    redis: Any = connection  # redis-py's annotations mix sync/async and bytes/str replies
    active = [a.decode() for a in redis.smembers(ArticleStore.ACTIVE)]
    pipe = connection.pipeline(transaction=False)
    for article_id in active:
        pipe.hget(ArticleStore.key(article_id), "jobs")
    job_ids = [j for raw in pipe.execute() if raw for j in json.loads(raw)]
    job_ids += editing_job_ids(connection) + publishing_job_ids(connection)
    requeued = []
    for job in Job.fetch_many(job_ids, connection=connection):
        if job is None or job.get_status(refresh=False) != JobStatus.QUEUED:
            continue
        queue = ArticleQueue(job.origin, connection=connection)
        if job.enqueued_at is None or any(
            # on its queue, or in the intermediate one that RQ itself cleans up
            connection.lpos(key, job.id) is not None
            for key in (queue.key, queue.intermediate_queue_key)
        ):
            continue
        mark = f"af:lost:{job.id}:{job.enqueued_at.timestamp()}"
        if connection.set(mark, time.time(), nx=True, ex=3600):
            continue  # first seen: its worker may be registering it right now
        if time.time() - float(connection.get(mark) or 0) < lost_after:
            continue
        if connection.delete(mark):  # one pass puts it back, not two
            queue.push_job_id(job.id, at_front=True)
            requeued.append(job.id)
            logger.warning("job %s: popped by a worker that died; queued again", job.id)
    return requeued


def article_worker(
    queues: list[str],
    connection: Redis,
    config: GatewaySettings,
    name: str | None = None,
    worker_class: type[ArticleWorker] = ArticleWorker,
) -> ArticleWorker:
    return worker_class(
        [ArticleQueue(q, connection=connection) for q in queues],
        connection=connection,
        name=name,
        job_monitoring_interval=config.worker_job_monitoring_interval_seconds,
        maintenance_interval=config.worker_maintenance_interval_seconds,
        heartbeat_grace=config.worker_heartbeat_grace_seconds,
        work_horse_killed_handler=on_horse_killed,
    )


# Linux's prctl(PR_SET_PDEATHSIG): the kernel signals a process when its parent dies.
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """A pool worker goes when its pool goes, SIGKILL included: else a killed pool would leave
    its workers running beside the pool that replaces it. (Elsewhere than Linux the worker
    checks its parent at each maintenance pass instead: ``PoolWorker``.)"""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class PoolWorker(ArticleWorker):
    """One worker of an ``ArticlePool``: stops (after its job) once its pool is gone."""

    pool_pid: int = 0

    def run_maintenance_tasks(self) -> None:
        if self.pool_pid and os.getppid() != self.pool_pid:
            logger.warning("worker %s: its pool %d is gone; stopping", self.name, self.pool_pid)
            self.request_stop(signal.SIGTERM, None)
            return
        super().run_maintenance_tasks()


def _run_pool_worker(
    name: str, queues: list[str], pool_pid: int, burst: bool, logging_level: str
) -> None:
    _die_with_parent()
    if os.getppid() != pool_pid:  # the pool died before the line above took effect
        return
    config = settings()
    # A connection of its own: sockets inherited across a fork are not shared safely.
    connection = redis_connection(config)
    worker = article_worker(queues, connection, config, name=name, worker_class=PoolWorker)
    assert isinstance(worker, PoolWorker)
    worker.pool_pid = pool_pid
    worker.work(burst=burst, with_scheduler=True, logging_level=logging_level)


class ArticlePool(WorkerPool):
    """RQ's ``WorkerPool`` of ``PoolWorker``s, built as ``article_worker`` builds one, named
    ``{pool}.{n}`` so that logs and RQ's worker registry say which pool each belongs to.

    RQ's pool forks each worker from this process (so the workers share its imports), starts
    a new one when one dies, and on SIGTERM or SIGINT asks each to finish its job and stop."""

    def __init__(self, queues: list[str], connection: Redis, size: int, name: str) -> None:
        super().__init__(queues, connection=connection, num_workers=size)
        self.name = name
        self._started = 0

    def get_worker_process(
        self, name: str, burst: bool, _sleep: float = 0, logging_level: str = "INFO"
    ) -> BaseProcess:
        self._started += 1
        return get_context("fork").Process(
            target=_run_pool_worker,
            args=(
                f"{self.name}.{self._started}",
                self._queue_names,
                os.getpid(),
                burst,
                logging_level,
            ),
            name=f"{self.name}.{self._started}",
        )
