"""`mediaserver worker`: runs post-call jobs from the Redis queue, on any machine, any number."""

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
import structlog
from aiohttp import web

from mediaserver.cluster.redis_connection import open_redis
from mediaserver.errors import SettingsError
from mediaserver.jobs.plan import build_analysis_config, build_transcriber_factory
from mediaserver.jobs.redis_lock import RedisRecordingLocks
from mediaserver.jobs.redis_queue import RedisJobQueue, queue_reports
from mediaserver.jobs.runner import JobRunner
from mediaserver.jobs.state_store import JobStateStore
from mediaserver.metrics import Metrics, Report
from mediaserver.settings import Settings, resolve_node_id
from mediaserver.storage_backends.factory import open_store
from mediaserver.webhooks import CallEvents, open_sender
from mediaserver.workers import create_process_pool

log = structlog.get_logger(__name__)

JOB_NICENESS = 10  # as the server's job pool: below finalizers sharing the machine
METRICS_KEY = web.AppKey("metrics", Metrics)


async def run_worker(settings: Settings, *, host: str, port: int) -> None:
    """Take jobs until SIGTERM or SIGINT; a job cut short is handed back to the queue."""
    if not settings.redis_url:
        raise SettingsError("mediaserver worker needs redis_url: the queue it takes jobs from")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with AsyncExitStack() as stack:
        redis = open_redis(settings.redis_url)
        stack.push_async_callback(redis.aclose)
        store = await open_store(settings)
        stack.push_async_callback(store.close)
        pool = stack.enter_context(
            create_process_pool(
                settings.job_workers,
                log_format=settings.log_format,
                log_level=settings.log_level,
                niceness=JOB_NICENESS,
            )
        )
        metrics = Metrics()
        # Job events (analysis.completed, transcript.failed, ...) leave from the worker that ran
        # the job, through its own durable outbox, as they do from `serve`.
        session = await stack.enter_async_context(aiohttp.ClientSession())
        sender = open_sender(settings, session)
        await sender.start()
        stack.push_async_callback(sender.close)
        runner = JobRunner(
            states=JobStateStore(
                store, settings.jobs_path / "scratch", locks=RedisRecordingLocks(redis)
            ),
            executor=pool,
            analysis=build_analysis_config(settings),
            transcribers=build_transcriber_factory(settings, pool),
            on_event=CallEvents(sender, settings.webhook_url).job_finished,
            max_attempts=settings.job_max_attempts,
            on_duration=metrics.observe_job,
        )
        queue = RedisJobQueue(
            redis,
            consumer=resolve_node_id(settings),
            concurrency=settings.job_workers,
            visibility_timeout_s=settings.job_visibility_timeout_s,
        )
        await queue.start()
        stack.push_async_callback(queue.close)
        metrics.add_stats_source(lambda: _reports(queue, runner))
        listening = await stack.enter_async_context(_health_site(metrics, host, port))
        print(f"mediaserver worker listening on http://{host}:{listening}", flush=True)
        log.info("worker.started", consumer=queue.consumer, jobs_at_once=queue.concurrency)
        consumer = asyncio.create_task(queue.run(runner), name="jobs.run")
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({consumer, stopped}, return_when=asyncio.FIRST_COMPLETED)
        consumer.cancel()
        stopped.cancel()
        await asyncio.gather(consumer, stopped, return_exceptions=True)
        log.info("worker.stopped", consumer=queue.consumer)


def _reports(queue: RedisJobQueue, runner: JobRunner) -> Iterator[Report]:
    """The queue's depth and this worker's finished jobs, for Prometheus."""
    yield from queue_reports(queue)
    yield (
        "mediaserver_jobs",
        "counter",
        "Post-call jobs finished by this worker, by kind and result.",
        [("", {"kind": k.value, "result": "completed"}, n) for k, n in runner.completed.items()]
        + [("", {"kind": k.value, "result": "failed"}, n) for k, n in runner.failed.items()],
    )


async def _healthz(request: web.Request) -> web.Response:
    """The worker is alive."""
    return web.json_response({"status": "ok"})


async def _metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    body = request.app[METRICS_KEY].render()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


@asynccontextmanager
async def _health_site(metrics: Metrics, host: str, port: int) -> AsyncIterator[int]:
    """GET /healthz and /metrics on host:port (0 picks one); yields the port."""
    app = web.Application()
    app[METRICS_KEY] = metrics
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()
