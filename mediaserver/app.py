"""The aiohttp application: every shared resource started and stopped in pairs, in order."""

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator

import aiohttp
import structlog
from aiohttp import web

from mediaserver.api import (
    analysis,
    calls,
    console,
    console_session,
    health,
    openapi,
    recordings,
    whip,
)
from mediaserver.api.auth import build_auth_middleware
from mediaserver.api.console_session import CONSOLE_SESSIONS, ConsoleSessions
from mediaserver.api.errors import error_middleware
from mediaserver.api.keys import (
    DRAINING,
    EVENTS,
    HTTP_CLIENT,
    HUB,
    JOB_POOL,
    JOBS,
    LOOP_LAG,
    METRICS,
    PORTS,
    PROCESS_POOL,
    RECORDER,
    SETTINGS,
    STORE,
)
from mediaserver.calls import CallHub
from mediaserver.clock import SystemClock
from mediaserver.finalize import FinalizeOptions
from mediaserver.jobs.local import LocalJobQueue
from mediaserver.jobs.plan import build_analysis_config, build_job_plan, build_transcriber_factory
from mediaserver.jobs.runner import JobRunner
from mediaserver.jobs.scheduler import JobScheduler
from mediaserver.jobs.state_store import JobStateStore
from mediaserver.metrics import LoopLagMonitor, Metrics, Report
from mediaserver.recorder import Recorder
from mediaserver.recording.call import CallStatus
from mediaserver.recording.manifest import Manifest
from mediaserver.settings import Settings
from mediaserver.storage_backends.factory import open_store
from mediaserver.transports.port_allocator import PortAllocator
from mediaserver.webhooks import CallEvents, WebhookSender
from mediaserver.workers import create_process_pool, start_workers

log = structlog.get_logger(__name__)

JOB_NICENESS = 10


def create_app(settings: Settings) -> web.Application:
    """Build the application; resources start when it starts (AppRunner.setup)."""
    sessions = ConsoleSessions(
        settings.api_token, ttl_s=settings.console_session_ttl_s, clock=SystemClock()
    )
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[error_middleware, build_auth_middleware(settings.api_token, sessions)],  # type: ignore[list-item]
    )
    app[SETTINGS] = settings
    app[CONSOLE_SESSIONS] = sessions
    app[DRAINING] = {"draining": False}
    app[METRICS] = Metrics()
    app[PORTS] = PortAllocator(settings.rtp_port_min, settings.rtp_port_max)
    app.cleanup_ctx.extend(
        [
            _process_pool,
            _store,
            _webhooks,
            _job_pool,
            _jobs,
            _recorder,
            _http_client,
            _hub,
            _loop_lag,
            _stats_metrics,
        ]
    )
    health.add_routes(app)
    calls.add_routes(app)
    whip.add_routes(app)
    recordings.add_routes(app)
    analysis.add_routes(app)
    console_session.add_routes(app)
    console.add_routes(app)
    openapi.add_routes(app)
    return app


async def _process_pool(app: web.Application) -> AsyncIterator[None]:
    """Worker processes that build recordings."""
    settings = app[SETTINGS]
    pool = create_process_pool(
        settings.finalize_workers, log_format=settings.log_format, log_level=settings.log_level
    )
    app[PROCESS_POOL] = pool
    yield
    await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)


async def _store(app: web.Application) -> AsyncIterator[None]:
    """The configured storage backend."""
    store = await open_store(app[SETTINGS])
    app[STORE] = store
    yield
    await store.close()


async def _webhooks(app: web.Application) -> AsyncIterator[None]:
    """Signed event deliveries from a durable outbox: resumed at start, kept at stop."""
    settings = app[SETTINGS]
    if settings.webhook_url and not settings.webhook_secret:
        log.warning("webhooks.unsigned", reason="webhook_secret is not set")
    async with aiohttp.ClientSession() as session:
        sender = WebhookSender(
            directory=settings.jobs_path / "webhooks",
            session=session,
            secret=settings.webhook_secret,
            timeout_s=settings.webhook_timeout_s,
            max_attempts=settings.webhook_max_attempts,
            backoff_s=settings.webhook_backoff_s,
        )
        app[EVENTS] = CallEvents(sender, settings.webhook_url)
        await sender.start()
        app[METRICS].add_stats_source(lambda: _webhook_reports(sender))
        yield
        await sender.close()


def _webhook_reports(sender: WebhookSender) -> Iterator[Report]:
    """The deliveries' counters for Prometheus."""
    yield (
        "mediaserver_webhook_deliveries",
        "counter",
        "Webhook delivery attempts by result (failed: given up after every retry).",
        [
            ("", {"result": "delivered"}, sender.delivered),
            ("", {"result": "retried"}, sender.retried),
            ("", {"result": "failed"}, sender.failed),
        ],
    )
    yield (
        "mediaserver_webhook_pending",
        "gauge",
        "Webhook deliveries waiting for an attempt.",
        [("", {}, sender.pending())],
    )


async def _job_pool(app: web.Application) -> AsyncIterator[None]:
    """Worker processes for post-call jobs, niced below the server and the finalizers."""
    settings = app[SETTINGS]
    pool = create_process_pool(
        settings.job_workers,
        log_format=settings.log_format,
        log_level=settings.log_level,
        niceness=JOB_NICENESS,
    )
    await asyncio.to_thread(start_workers, pool, settings.job_workers)
    app[JOB_POOL] = pool
    yield
    await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)


async def _jobs(app: web.Application) -> AsyncIterator[None]:
    """The job queue and the jobs it runs: resumed at start, left queued at stop."""
    settings = app[SETTINGS]
    scratch = settings.jobs_path / "scratch"
    await asyncio.to_thread(shutil.rmtree, scratch, True)  # what jobs cut short left behind
    states = JobStateStore(app[STORE], scratch)
    runner = JobRunner(
        states=states,
        executor=app[JOB_POOL],
        analysis=build_analysis_config(settings),
        transcribers=build_transcriber_factory(settings, app[JOB_POOL]),
        on_event=app[EVENTS].job_finished,
    )
    scheduler = JobScheduler(
        queue=LocalJobQueue(settings.jobs_path / "queue", concurrency=settings.job_workers),
        states=states,
        plan=build_job_plan(settings),
        handler=runner,
    )
    app[JOBS] = scheduler
    await scheduler.start()
    app[METRICS].add_stats_source(lambda: _job_reports(scheduler, runner))
    yield
    await scheduler.close(timeout_s=settings.drain_timeout_s)


def _job_reports(scheduler: JobScheduler, runner: JobRunner) -> Iterator[Report]:
    """The jobs' counters for Prometheus."""
    yield (
        "mediaserver_jobs_pending",
        "gauge",
        "Post-call jobs queued or running in this process.",
        [("", {}, scheduler.queue.depth())],
    )
    yield (
        "mediaserver_jobs",
        "counter",
        "Post-call jobs finished, by kind and result.",
        [("", {"kind": k.value, "result": "completed"}, n) for k, n in runner.completed.items()]
        + [("", {"kind": k.value, "result": "failed"}, n) for k, n in runner.failed.items()],
    )


async def _recorder(app: web.Application) -> AsyncIterator[None]:
    """The recorder: recovers leftovers at start, drains finalizations at stop."""
    settings = app[SETTINGS]
    recorder = Recorder(
        spool_root=settings.spool_path,
        store=app[STORE],
        executor=app[PROCESS_POOL],
        options=FinalizeOptions(
            stereo_mode=settings.stereo_mode,
            stereo_bitrate_bps=settings.stereo_bitrate_bps,
            stereo_complexity=settings.stereo_complexity,
        ),
        retention_s=settings.retention_s,
        sweep_interval_s=settings.sweep_interval_s,
        flush_interval_s=settings.flush_interval_s,
        enabled=settings.recording_enabled,
    )
    metrics = app[METRICS]

    jobs = app[JOBS]
    events = app[EVENTS]

    def observe(manifest: Manifest, elapsed_s: float) -> None:
        if manifest.status is CallStatus.UPLOAD_FAILED:
            events.recording_failed(manifest)
            return
        metrics.finalize_seconds.observe(elapsed_s)
        events.recording_stored(manifest)
        jobs.on_stored(manifest)

    recorder.on_stored = observe
    app[RECORDER] = recorder
    await recorder.start()
    yield
    await recorder.close(drain_timeout_s=settings.drain_timeout_s)


async def _http_client(app: web.Application) -> AsyncIterator[None]:
    """One client session for dialling out to agents."""
    async with aiohttp.ClientSession() as session:
        app[HTTP_CLIENT] = session
        yield


async def _hub(app: web.Application) -> AsyncIterator[None]:
    """Live calls and their pacer; closing ends every call (graceful drain)."""
    settings = app[SETTINGS]
    hub = CallHub(app[RECORDER], end_call_on_agent_exit=settings.end_call_on_agent_exit)
    app[HUB] = hub
    await hub.start()
    yield
    app[DRAINING]["draining"] = True
    await hub.close(drain_timeout_s=settings.drain_timeout_s)


async def _loop_lag(app: web.Application) -> AsyncIterator[None]:
    """Measure event-loop lag for the metrics."""
    monitor = LoopLagMonitor(app[METRICS].loop_lag)
    app[LOOP_LAG] = monitor
    task = asyncio.create_task(monitor.run(), name="metrics.loop_lag")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _stats_metrics(app: web.Application) -> AsyncIterator[None]:
    """Expose the recorder's and the calls' counters to Prometheus."""

    def read() -> Iterator[Report]:
        stats = app[RECORDER].stats()
        hub = app[HUB]
        yield (
            "mediaserver_live_calls",
            "gauge",
            "Calls in progress.",
            [("", {}, len(hub.sessions()))],
        )
        yield (
            "mediaserver_packets_recorded",
            "counter",
            "Packets journalled, both directions.",
            [("", {}, stats.packets_recorded)],
        )
        yield (
            "mediaserver_packets_dropped",
            "counter",
            "Packets dropped before the journal, by reason.",
            [("", {"reason": "malformed"}, stats.packets_malformed)]
            + [("", {"reason": r}, n) for r, n in hub.drop_counts().items()],
        )
        yield (
            "mediaserver_calls_finalized",
            "counter",
            "Calls whose recording was built, by how they ended.",
            [
                ("", {"how": "ended"}, stats.calls_finalized),
                ("", {"how": "expired"}, stats.calls_expired),
                ("", {"how": "recovered"}, stats.calls_recovered),
            ],
        )
        yield (
            "mediaserver_uploads",
            "counter",
            "Recordings handed to the store, by result (failed: after every retry).",
            [
                ("", {"result": "stored"}, stats.uploads_stored),
                ("", {"result": "failed"}, stats.uploads_failed),
            ],
        )
        yield (
            "mediaserver_caller_packets",
            "counter",
            "RTP packets received from callers (in) and agent frames sent to them (out).",
            [("", {"direction": d}, n) for d, n in hub.packet_counts().items()],
        )
        yield (
            "mediaserver_pacer_late_ticks",
            "counter",
            "Times the 20 ms playout pacer fell more than a frame behind.",
            [("", {}, hub.pacer_late_ticks)],
        )

    app[METRICS].add_stats_source(read)
    yield
