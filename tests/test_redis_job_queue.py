"""RedisJobQueue against a real redis-server: order per recording, replacement, redelivery."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from redis.asyncio import Redis

from mediaserver.cluster.redis_connection import open_redis
from mediaserver.jobs.queue import Job
from mediaserver.jobs.redis_queue import RedisJobQueue
from mediaserver.jobs.state import JobKind

from redis_server import RedisServer

TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the module."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@asynccontextmanager
async def emptied(server: RedisServer) -> AsyncIterator[Redis]:
    """A client on an emptied database."""
    client = open_redis(server.url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


def job(call_id: str, kind: JobKind, job_id: str) -> Job:
    """A job of a recording."""
    return Job(job_id, call_id, kind, f"recordings/{call_id}_manifest.json")


async def started_queue(
    redis: Redis, name: str, visibility_timeout_s: float = 1.0
) -> RedisJobQueue:
    """A queue consumer, started."""
    queue = RedisJobQueue(
        redis, consumer=name, concurrency=2, visibility_timeout_s=visibility_timeout_s
    )
    await queue.start()
    return queue


async def test_jobs_of_one_recording_run_one_at_a_time_in_order_across_workers(
    redis_server: RedisServer,
) -> None:
    """Two workers, two recordings with two jobs each: a recording's jobs never overlap and
    start in the order they were queued; different recordings run side by side."""
    async with emptied(redis_server) as redis:
        first, second = await started_queue(redis, "w1"), await started_queue(redis, "w2")
        running: dict[str, str] = {}
        order: list[str] = []
        overlaps: list[str] = []
        done = asyncio.Event()

        async def handler(item: Job) -> None:
            if item.call_id in running:
                overlaps.append(item.job_id)
            running[item.call_id] = item.job_id
            order.append(item.job_id)
            await asyncio.sleep(0.2)
            del running[item.call_id]
            if len(order) == 4:
                done.set()

        for call_id in ("a", "b"):
            await first.enqueue(job(call_id, JobKind.ANALYSIS, f"{call_id}1"))
            await first.enqueue(job(call_id, JobKind.TRANSCRIPT, f"{call_id}2"))
        tasks = [asyncio.create_task(q.run(handler)) for q in (first, second)]
        await asyncio.wait_for(done.wait(), TIMEOUT_S)
        async with asyncio.timeout(TIMEOUT_S):  # the last job is acknowledged after it ran
            while (await first.read_counts()).unfinished:  # noqa: ASYNC110  # Redis's state
                await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert overlaps == []
        assert order.index("a1") < order.index("a2")
        assert order.index("b1") < order.index("b2")
        assert len(order) == 4
        await first.close()
        await second.close()


async def test_enqueueing_again_replaces_the_waiting_job(redis_server: RedisServer) -> None:
    """A call's transcript queued twice behind its analysis runs once, as queued last."""
    async with emptied(redis_server) as redis:
        queue = await started_queue(redis, "w1")
        await queue.enqueue(job("c", JobKind.ANALYSIS, "analysis"))
        await queue.enqueue(job("c", JobKind.TRANSCRIPT, "old"))
        await queue.enqueue(job("c", JobKind.TRANSCRIPT, "new"))
        ran: list[str] = []

        async def handler(item: Job) -> None:
            ran.append(item.job_id)

        task = asyncio.create_task(queue.run(handler))
        async with asyncio.timeout(TIMEOUT_S):
            while (await queue.read_counts()).unfinished:  # noqa: ASYNC110  # Redis has no event
                await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert ran == ["analysis", "new"]
        await queue.close()


async def test_a_failed_attempt_runs_again_after_the_visibility_timeout(
    redis_server: RedisServer,
) -> None:
    """A handler that raises leaves its job pending; another worker takes it over once the
    visibility timeout has passed, not before."""
    async with emptied(redis_server) as redis:
        first, second = await started_queue(redis, "w1"), await started_queue(redis, "w2")
        attempts: list[tuple[str, float]] = []
        finished = asyncio.Event()
        loop = asyncio.get_running_loop()

        async def failing(item: Job) -> None:
            attempts.append(("w1", loop.time()))
            raise RuntimeError("storage hiccup")

        async def working(item: Job) -> None:
            attempts.append(("w2", loop.time()))
            finished.set()

        await first.enqueue(job("d", JobKind.ANALYSIS, "j"))
        failing_task = asyncio.create_task(first.run(failing))
        async with asyncio.timeout(TIMEOUT_S):
            while not attempts:  # noqa: ASYNC110  # the handler appends
                await asyncio.sleep(0.01)
        failing_task.cancel()
        await asyncio.gather(failing_task, return_exceptions=True)
        working_task = asyncio.create_task(second.run(working))
        await asyncio.wait_for(finished.wait(), TIMEOUT_S)
        working_task.cancel()
        await asyncio.gather(working_task, return_exceptions=True)
        (_, failed_at), (worker, retried_at) = attempts
        assert worker == "w2"
        assert retried_at - failed_at >= 0.9  # the 1 s visibility timeout, less timer slack
        assert (await second.read_counts()).unfinished == 0
        await first.close()
        await second.close()


async def test_a_job_cut_short_by_a_shutdown_goes_to_another_worker_at_once(
    redis_server: RedisServer,
) -> None:
    """Cancelling a worker mid-job hands its job back: another worker starts it well before
    the visibility timeout."""
    async with emptied(redis_server) as redis:
        first = await started_queue(redis, "w1", visibility_timeout_s=30.0)
        second = await started_queue(redis, "w2", visibility_timeout_s=30.0)
        started = asyncio.Event()
        finished = asyncio.Event()

        async def stuck(item: Job) -> None:
            started.set()
            await asyncio.sleep(3600)

        async def working(item: Job) -> None:
            finished.set()

        await first.enqueue(job("e", JobKind.ANALYSIS, "j"))
        stuck_task = asyncio.create_task(first.run(stuck))
        await asyncio.wait_for(started.wait(), TIMEOUT_S)
        stuck_task.cancel()
        await asyncio.gather(stuck_task, return_exceptions=True)
        working_task = asyncio.create_task(second.run(working))
        await asyncio.wait_for(finished.wait(), 5.0)  # far less than the 30 s timeout
        working_task.cancel()
        await asyncio.gather(working_task, return_exceptions=True)
        await first.close()
        await second.close()


async def test_queued_jobs_survive_a_redis_restart(redis_server: RedisServer) -> None:
    """Two jobs of a recording queued, Redis restarted on its append-only file: a worker
    started afterwards runs both, in the order they were queued."""
    async with emptied(redis_server) as redis:
        producer = await started_queue(redis, "node")
        await producer.enqueue(job("r", JobKind.ANALYSIS, "r1"))
        await producer.enqueue(job("r", JobKind.TRANSCRIPT, "r2"))
        await producer.close()
        await asyncio.to_thread(redis_server.restart)
        worker = await started_queue(redis, "w1")
        ran: list[str] = []
        both = asyncio.Event()

        async def record(item: Job) -> None:
            ran.append(item.job_id)
            if len(ran) == 2:
                both.set()

        running = asyncio.create_task(worker.run(record))
        try:
            await asyncio.wait_for(both.wait(), TIMEOUT_S)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
        assert ran == ["r1", "r2"]
        assert (await worker.read_counts()).unfinished == 0
        await worker.close()


def test_the_fixture_keeps_its_files(redis_server: RedisServer, tmp_path: Path) -> None:
    """The server writes its append-only file where a restart finds it."""
    assert any(redis_server.directory.rglob("*.aof*"))
