"""RedisJobQueue: the JobQueue on Redis Streams, run by any number of `mediaserver worker`s."""

# Why Redis Streams through redis-py rather than a task framework (Taskiq, Celery): the queue's
# contract (queue.py) is small and exact, and Streams consumer groups give each part of it as one
# command: XADD is durable once Redis answers (with AOF), XREADGROUP hands an entry to one worker
# and keeps it pending until XACK, XAUTOCLAIM hands entries whose worker went quiet for the
# visibility timeout to another. A framework would add its own worker process, serializer and
# retry policy around that, and still leave the two rules below to us. redis-py is already the
# registry's client.
#
# Keys (prefix "mediaserver:jobs:"):
#   stream             entries {"job": <job id>}, consumer group "workers";
#   payload            hash: job id -> the job's JSON, until the job has finished;
#   latest             hash: "<call id>:<kind>" -> the newest job id of that call and kind;
#   recording:<call>   list: the call's unfinished job ids in the order they were queued.
# Jobs of one recording never run at once and start in order: only the head of a recording's
# list is ever in the stream; finishing it (a Lua script, so atomically) adds the next one.
# Enqueueing a call and kind again drops the one still waiting behind (the head may be running).
# A worker renews its claim on a running entry every third of the visibility timeout; a worker
# that dies stops renewing, and after the timeout another takes the entry over. A handler that
# raises leaves its entry pending without renewal: it runs again after the visibility timeout.
# The background loops (counts, leases) end on a flag as well as on cancellation: a cancel that
# lands inside a redis-py command can be lost, and a loop that missed it would never end.

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from mediaserver.cluster.redis_connection import KEY_PREFIX, SOCKET_TIMEOUT_S
from mediaserver.jobs.queue import Job, JobHandler, parse_job
from mediaserver.metrics import Report

log = structlog.get_logger(__name__)

PREFIX = KEY_PREFIX + "jobs:"
STREAM_KEY = PREFIX + "stream"
PAYLOAD_KEY = PREFIX + "payload"
LATEST_KEY = PREFIX + "latest"
GROUP = "workers"
BLOCK_MS = 1000
RECONNECT_DELAY_S = 1.0
COUNTS_INTERVAL_S = 2.0
ENQUEUE_DEADLINE_S = 30.0  # a restarting Redis is waited for this long before enqueue fails

_ENQUEUE = """
local old = redis.call('HGET', KEYS[3], ARGV[3])
if old and redis.call('LINDEX', KEYS[4], 0) ~= old then
  if redis.call('LREM', KEYS[4], 0, old) > 0 then redis.call('HDEL', KEYS[2], old) end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[1])
if redis.call('RPUSH', KEYS[4], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[1], '*', 'job', ARGV[1])
end
return 1
"""
_FINISH = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('LREM', KEYS[4], 1, ARGV[3])
redis.call('HDEL', KEYS[2], ARGV[3])
if redis.call('HGET', KEYS[3], ARGV[4]) == ARGV[3] then redis.call('HDEL', KEYS[3], ARGV[4]) end
local next_id = redis.call('LINDEX', KEYS[4], 0)
if next_id then redis.call('XADD', KEYS[1], '*', 'job', next_id) end
return 1
"""
_GIVE_BACK = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[1], '*', 'job', ARGV[3])
return 1
"""


def recording_key(call_id: str) -> str:
    """The list of a recording's unfinished jobs."""
    return f"{PREFIX}recording:{call_id}"


def latest_field(job: Job) -> str:
    """The field naming the newest job of a call and kind."""
    return f"{job.call_id}:{job.kind.value}"


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """How many jobs wait, and where, as last read from Redis."""

    unfinished: int  # queued or running
    runnable: int  # in the stream, waiting for a worker
    running: int  # handed to a worker, not finished


@dataclass(frozen=True, slots=True)
class _Delivery:
    """A stream entry handed to this worker."""

    entry_id: str
    job_id: str


class RedisJobQueue:
    """Jobs in Redis; `run` takes them with `concurrency` tasks as consumer `consumer`."""

    def __init__(
        self,
        redis: Redis,
        *,
        consumer: str,
        concurrency: int = 2,
        visibility_timeout_s: float = 60.0,
    ) -> None:
        """Use `redis`; this process is the group's consumer named `consumer`."""
        if concurrency < 1:
            raise ValueError("a job queue needs at least one worker")
        self.redis = redis
        self.consumer = f"{consumer}-{os.getpid()}"
        self.concurrency = concurrency
        self.visibility_timeout_ms = int(visibility_timeout_s * 1000)
        self.counts = QueueCounts(0, 0, 0)
        self._enqueue = redis.register_script(_ENQUEUE)
        self._finish = redis.register_script(_FINISH)
        self._give_back = redis.register_script(_GIVE_BACK)
        self._counter: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._reachable = True
        self._stopping = False
        self._in_handler: set[asyncio.Task[None] | None] = set()

    async def start(self) -> None:
        """Create the stream and group if Redis has none; keep the counts fresh."""
        with contextlib.suppress(RedisError, OSError):  # Redis away: run() creates them later
            await self._ensure_group()
        self._counter = asyncio.create_task(self._count_forever(), name="jobs.counts")

    async def enqueue(self, job: Job) -> None:
        """Queue a job; returns once Redis holds it (durable as Redis's persistence is)."""
        keys = [STREAM_KEY, PAYLOAD_KEY, LATEST_KEY, recording_key(job.call_id)]
        args = [job.job_id, job.to_json(), latest_field(job)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ENQUEUE_DEADLINE_S
        while True:
            try:
                await self._enqueue(keys=keys, args=args)
                break
            except (RedisError, OSError) as exc:
                if isinstance(exc, ResponseError) or loop.time() > deadline:
                    raise
                self._note_reachable(False, exc)
                await asyncio.sleep(RECONNECT_DELAY_S)
        log.info("job.queued", call_id=job.call_id, kind=job.kind.value, job_id=job.job_id)

    async def run(self, handler: JobHandler) -> None:
        """Run jobs with `concurrency` tasks until cancelled."""
        workers = [
            asyncio.create_task(self._work(handler), name=f"jobs.worker.{index}")
            for index in range(self.concurrency)
        ]
        self._stopping = False
        try:
            await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            # Workers running a job are cancelled (the job goes back to the queue); idle ones
            # leave at their next poll, as cancelling a blocked stream read can wedge its client.
            self._stopping = True
            for worker in workers:
                if worker in self._in_handler:
                    worker.cancel()
            _, late = await asyncio.wait(workers, timeout=BLOCK_MS / 1000 + SOCKET_TIMEOUT_S)
            for worker in late:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    def depth(self) -> int:
        """Jobs queued or running, as last counted."""
        return self.counts.unfinished

    async def close(self) -> None:
        """Stop counting; leave the group if nothing is pending for this consumer."""
        self._closing.set()
        if self._counter is not None:
            self._counter.cancel()
            await asyncio.gather(self._counter, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            pending = await self.redis.xpending_range(
                STREAM_KEY, GROUP, min="-", max="+", count=1, consumername=self.consumer
            )
            if not pending:
                await self.redis.xgroup_delconsumer(STREAM_KEY, GROUP, self.consumer)

    async def read_counts(self) -> QueueCounts:
        """Count the jobs in Redis now."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hlen(PAYLOAD_KEY)
            pipe.xlen(STREAM_KEY)
            pipe.xpending(STREAM_KEY, GROUP)
            unfinished, in_stream, pending = await pipe.execute(raise_on_error=False)
        running = pending["pending"] if isinstance(pending, dict) else 0
        in_stream = in_stream if isinstance(in_stream, int) else 0
        return QueueCounts(int(unfinished), max(0, in_stream - running), running)

    # -- the worker side ------------------------------------------------------------------------

    async def _work(self, handler: JobHandler) -> None:
        """One worker task: take an entry, run its job, finish it; ride out Redis outages."""
        while not self._stopping:
            try:
                delivery = await self._next()
                self._note_reachable(True)
            except (RedisError, OSError) as exc:
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    with contextlib.suppress(RedisError, OSError):
                        await self._ensure_group()  # Redis came back empty
                    continue
                self._note_reachable(False, exc)
                await asyncio.sleep(RECONNECT_DELAY_S)
                continue
            if delivery is not None and self._stopping:
                await self._give_back(
                    keys=[STREAM_KEY], args=[GROUP, delivery.entry_id, delivery.job_id]
                )
            elif delivery is not None:
                self._in_handler.add(asyncio.current_task())
                try:
                    await self._handle(delivery, handler)
                finally:
                    self._in_handler.discard(asyncio.current_task())

    async def _next(self) -> _Delivery | None:
        """An entry whose worker went quiet, else a new one (waiting up to a second)."""
        _, claimed, _ = await self.redis.xautoclaim(
            STREAM_KEY, GROUP, self.consumer, self.visibility_timeout_ms, "0-0", count=1
        )
        for entry_id, fields in claimed:
            if fields:  # an entry deleted meanwhile comes back empty
                log.warning("job.reclaimed", entry_id=entry_id, job_id=fields.get("job"))
                return _Delivery(entry_id, fields["job"])
        replies: Any = await self.redis.xreadgroup(
            GROUP, self.consumer, {STREAM_KEY: ">"}, count=1, block=BLOCK_MS
        )
        for _, entries in replies or []:
            for entry_id, fields in entries:
                return _Delivery(entry_id, fields["job"])
        return None

    async def _handle(self, delivery: _Delivery, handler: JobHandler) -> None:
        """Run one delivered job under a renewed claim; finish it, or leave it for a retry."""
        payload = await self.redis.hget(PAYLOAD_KEY, delivery.job_id)
        if payload is None:  # finished by a worker that was presumed dead
            await self.redis.xack(STREAM_KEY, GROUP, delivery.entry_id)
            await self.redis.xdel(STREAM_KEY, delivery.entry_id)
            return
        try:
            job = parse_job(str(payload))
        except ValueError as exc:
            log.error("job.unreadable", job_id=delivery.job_id, error=str(exc))
            await self.redis.xack(STREAM_KEY, GROUP, delivery.entry_id)
            return
        released = asyncio.Event()
        lease = asyncio.create_task(
            self._renew(delivery, released), name=f"jobs.lease.{job.job_id}"
        )
        try:
            await handler(job)
        except asyncio.CancelledError:
            # Shutting down: hand the job to another worker now rather than after the timeout.
            with contextlib.suppress(RedisError, OSError):
                await self._give_back(
                    keys=[STREAM_KEY], args=[GROUP, delivery.entry_id, job.job_id]
                )
            raise
        except Exception as exc:
            # The handler asked for another attempt: the entry stays pending, unrenewed, and
            # is taken over once the visibility timeout has passed.
            log.info("job.retry_scheduled", call_id=job.call_id, error=repr(exc))
            return
        finally:
            released.set()
            lease.cancel()
            await asyncio.gather(lease, return_exceptions=True)
        await self._finish_entry(delivery, job)

    async def _finish_entry(self, delivery: _Delivery, job: Job) -> None:
        """Acknowledge a finished job and queue its recording's next one (until Redis answers)."""
        keys = [STREAM_KEY, PAYLOAD_KEY, LATEST_KEY, recording_key(job.call_id)]
        args = [GROUP, delivery.entry_id, job.job_id, latest_field(job)]
        while True:
            try:
                if not await self._finish(keys=keys, args=args):
                    log.info("job.finished_elsewhere", call_id=job.call_id, job_id=job.job_id)
                return
            except (RedisError, OSError) as exc:
                # The work is done; once Redis is back the entry must not be left to be redone.
                self._note_reachable(False, exc)
                await asyncio.sleep(RECONNECT_DELAY_S)

    async def _renew(self, delivery: _Delivery, released: asyncio.Event) -> None:
        """Keep claiming the entry for this worker, so that nobody takes it over, until released."""
        interval_s = self.visibility_timeout_ms / 3000
        while not await _set_within(released, interval_s):
            with contextlib.suppress(RedisError, OSError):
                await self.redis.xclaim(
                    STREAM_KEY, GROUP, self.consumer, 0, [delivery.entry_id], justid=True
                )

    async def _ensure_group(self) -> None:
        """Create the stream and its consumer group unless they exist."""
        try:
            await self.redis.xgroup_create(STREAM_KEY, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _count_forever(self) -> None:
        """Refresh the counts the metrics read, until the queue closes."""
        while not self._closing.is_set():
            with contextlib.suppress(RedisError, OSError):
                self.counts = await self.read_counts()
            await _set_within(self._closing, COUNTS_INTERVAL_S)

    def _note_reachable(self, reachable: bool, exc: BaseException | None = None) -> None:
        """Log when Redis goes away and when it is back, once each."""
        if reachable and not self._reachable:
            log.info("jobs.queue_restored", consumer=self.consumer)
        elif not reachable and self._reachable:
            log.warning("jobs.queue_unavailable", consumer=self.consumer, error=str(exc))
        self._reachable = reachable


async def _set_within(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for `event`; whether it is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
    return event.is_set()


def queue_reports(queue: RedisJobQueue) -> Iterator[Report]:
    """The shared queue's depth for Prometheus: what workers are scaled on."""
    counts = queue.counts
    yield (
        "mediaserver_jobs_queued",
        "gauge",
        "Post-call jobs waiting for a worker (scale workers on this).",
        [("", {}, counts.runnable)],
    )
    yield (
        "mediaserver_jobs_running",
        "gauge",
        "Post-call jobs a worker has taken and not finished.",
        [("", {}, counts.running)],
    )
