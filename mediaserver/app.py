"""The aiohttp application: every shared resource started and stopped in pairs, in order."""

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from mediaserver.access.sign_in_limiter import SignInLimiter
from mediaserver.admission import AdmissionLimits, LoadMonitor
from mediaserver.api import (
    analysis,
    audit,
    calls,
    console,
    console_session,
    health,
    lifecycle,
    nodes,
    openapi,
    recordings,
    rtp_legs,
    whip,
    whoami,
)
from mediaserver.api.auth import build_auth_middleware
from mediaserver.api.cluster_routing import cluster_middleware
from mediaserver.api.console_session import CONSOLE_SESSIONS, ConsoleSessions
from mediaserver.api.errors import error_middleware
from mediaserver.api.keys import (
    AUDIT,
    EVENTS,
    FINALIZER,
    GCS_MIRROR,
    HTTP_CLIENT,
    HUB,
    JOB_POOL,
    JOBS,
    KEYRING,
    LOAD,
    LOOP_LAG,
    METRICS,
    PORTS,
    PROCESS_POOL,
    RECORDER,
    RECORDING_INDEX,
    REDIS,
    SETTINGS,
    STORE,
    TOKENS,
)
from mediaserver.api.token_registry import TokenRegistry
from mediaserver.audit.audit_log import AuditLog, AuditSink, build_node_name
from mediaserver.audit.file_sink import FileAuditSink
from mediaserver.audit.store_sink import StoreAuditSink
from mediaserver.calls import CallHub
from mediaserver.clock import Clock, SystemClock
from mediaserver.cluster_app import cluster_context, redis_context
from mediaserver.finalize import FinalizeOptions
from mediaserver.finalizer import Finalizer
from mediaserver.jobs.factory import build_job_queue, build_recording_locks
from mediaserver.jobs.plan import build_analysis_config, build_job_plan, build_transcriber_factory
from mediaserver.jobs.redis_queue import RedisJobQueue, queue_reports
from mediaserver.jobs.runner import JobRunner
from mediaserver.jobs.scheduler import JobPlan, JobScheduler
from mediaserver.jobs.state_store import JobStateStore
from mediaserver.lifecycle.deletion import RecordingDeleter
from mediaserver.lifecycle.gcs_mirror import GcsLifecycleMirror
from mediaserver.lifecycle.retention import RecordingRetention
from mediaserver.metrics import GcPauseMonitor, LoopLagMonitor, Metrics, Report
from mediaserver.recorder import Recorder
from mediaserver.recording.call import CallStatus
from mediaserver.recording.manifest import Manifest
from mediaserver.recording.spool import Spool
from mediaserver.settings import Settings
from mediaserver.storage_backends.factory import find_backend, load_keyring, open_store
from mediaserver.storage_backends.gcs import GcsStore
from mediaserver.sweeper import Sweeper
from mediaserver.transports.port_allocator import PortAllocator
from mediaserver.webhooks import CallEvents, WebhookSender, open_sender
from mediaserver.workers import create_process_pool, start_workers

log = structlog.get_logger(__name__)

JOB_NICENESS = 10


def create_app(settings: Settings, *, clock: Clock | None = None) -> web.Application:
    """Build the application; resources start when it starts (AppRunner.setup)."""
    tokens = TokenRegistry(
        settings.api_token, Path(settings.api_tokens_path) if settings.api_tokens_path else None
    )
    sessions = ConsoleSessions(
        lambda: tokens.table,
        secret=settings.api_token,
        ttl_s=settings.console_session_ttl_s,
        clock=SystemClock(),
        limiter=SignInLimiter(
            max_failures=settings.console_sign_in_max_failures,
            window_s=settings.console_sign_in_window_s,
        ),
    )
    # Audit outermost: it sees every answer, errors included, as the client gets it.
    middlewares = [
        audit.audit_middleware,
        error_middleware,
        build_auth_middleware(tokens, sessions),
    ]
    if settings.redis_url:  # several nodes: new calls placed, a call's requests sent to its node
        middlewares.append(cluster_middleware)
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=middlewares,  # type: ignore[arg-type]
    )
    app[SETTINGS] = settings
    app[TOKENS] = tokens
    app[CONSOLE_SESSIONS] = sessions
    app[METRICS] = Metrics()
    app[PORTS] = PortAllocator(settings.rtp_port_min, settings.rtp_port_max)
    chosen_clock = clock or SystemClock()
    app.cleanup_ctx.extend(
        [
            _process_pool,
            _store,
            _webhooks,
            _audit(chosen_clock),
            redis_context,
            _job_pool,
            _jobs,
            _finalizer,
            _recorder(chosen_clock),
            _http_client,
            _loop_lag,
            _load(chosen_clock),
            _hub(chosen_clock),
            cluster_context,
            _sweeper(chosen_clock),
            _stats_metrics,
        ]
    )
    health.add_routes(app)
    calls.add_routes(app)
    rtp_legs.add_routes(app)
    whip.add_routes(app)
    recordings.add_routes(app)
    analysis.add_routes(app)
    console_session.add_routes(app)
    console.add_routes(app)
    openapi.add_routes(app)
    audit.add_routes(app)
    whoami.add_routes(app)
    lifecycle.add_routes(app)
    nodes.add_routes(app)
    return app


Context = Callable[[web.Application], AsyncIterator[None]]


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
    """The configured storage backend (on GCS, with the retention mirrored into the bucket)."""
    settings = app[SETTINGS]
    keyring = await asyncio.to_thread(load_keyring, settings)
    if keyring is not None:
        app[KEYRING] = keyring
    store = await open_store(settings, keyring)
    app[STORE] = store
    backend = find_backend(store)
    if settings.gcs_apply_lifecycle and isinstance(backend, GcsStore):
        mirror = GcsLifecycleMirror(backend)
        await mirror.apply_bucket_rules(settings.audit_retention_days)
        app[GCS_MIRROR] = mirror
    yield
    await store.close()


async def _webhooks(app: web.Application) -> AsyncIterator[None]:
    """Signed event deliveries from a durable outbox: resumed at start, kept at stop."""
    settings = app[SETTINGS]
    if settings.webhook_url and not settings.webhook_secret:
        log.warning("webhooks.unsigned", reason="webhook_secret is not set")
    async with aiohttp.ClientSession() as session:
        sender = open_sender(settings, session)
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


def _audit(clock: Clock) -> Context:
    """The audit log: day files on local disk, batch objects in a GCS bucket (README, "Audit")."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        sink: AuditSink
        if settings.storage_type == "gcs":
            sink = StoreAuditSink(app[STORE], settings.audit_path / "scratch")
        else:
            sink = FileAuditSink(settings.audit_path)
        audit_log = AuditLog(
            sink,
            clock=clock,
            node=build_node_name(),
            retention_days=settings.audit_retention_days,
        )
        app[AUDIT] = audit_log
        await audit_log.start()
        app[METRICS].add_stats_source(lambda: _audit_reports(audit_log))
        yield
        await audit_log.close()

    return context


def _audit_reports(audit_log: AuditLog) -> Iterator[Report]:
    """The audit log's counters for Prometheus."""
    yield (
        "mediaserver_audit_events",
        "counter",
        "Audit events written durably.",
        [("", {}, audit_log.events_written)],
    )
    yield (
        "mediaserver_audit_write_failures",
        "counter",
        "Audit batches that could not be written (their requests got 503 where still possible).",
        [("", {}, audit_log.write_failures)],
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
    redis = app.get(REDIS)
    scratch = settings.jobs_path / "scratch"
    if redis is None:  # this process alone runs jobs from jobs_path: clear what it cut short
        await asyncio.to_thread(shutil.rmtree, scratch, True)
    states = JobStateStore(app[STORE], scratch, locks=build_recording_locks(redis))
    runner = JobRunner(
        states=states,
        executor=app[JOB_POOL],
        analysis=build_analysis_config(settings),
        transcribers=build_transcriber_factory(settings, app[JOB_POOL]),
        on_event=app[EVENTS].job_finished,
        max_attempts=settings.job_max_attempts,
        on_duration=app[METRICS].observe_job,
    )
    scheduler = JobScheduler(
        queue=build_job_queue(settings, redis),
        states=states,
        plan=_job_plan(app),
        # With Redis, `mediaserver worker` processes run the jobs (serve --with-worker too).
        handler=runner if redis is None or settings.with_worker else None,
    )
    app[JOBS] = scheduler
    await scheduler.start()
    app[METRICS].add_stats_source(lambda: _job_reports(scheduler, runner))
    yield
    await scheduler.close()


def _job_plan(app: web.Application) -> JobPlan:
    """The jobs every stored recording gets: none where its audio cannot be decrypted."""
    keyring = app.get(KEYRING)
    if keyring is not None and not keyring.can_unwrap:
        log.warning(
            "jobs.not_planned",
            reason="encryption without encryption_private_key_path: this server cannot read"
            " the audio it stores, so it queues no analysis or transcript",
        )
        return ()
    return build_job_plan(app[SETTINGS])


def _job_reports(scheduler: JobScheduler, runner: JobRunner) -> Iterator[Report]:
    """The jobs' counters for Prometheus."""
    yield (
        "mediaserver_jobs_pending",
        "gauge",
        "Post-call jobs queued or running (in this process; with Redis, in every worker).",
        [("", {}, scheduler.queue.depth())],
    )
    if isinstance(scheduler.queue, RedisJobQueue):
        yield from queue_reports(scheduler.queue)
    yield (
        "mediaserver_jobs",
        "counter",
        "Post-call jobs finished, by kind and result.",
        [("", {"kind": k.value, "result": "completed"}, n) for k, n in runner.completed.items()]
        + [("", {"kind": k.value, "result": "failed"}, n) for k, n in runner.failed.items()],
    )


async def _finalizer(app: web.Application) -> AsyncIterator[None]:
    """Builds and stores ended calls; at stop, waits for them up to the finalize timeout."""
    settings = app[SETTINGS]
    metrics = app[METRICS]
    jobs = app[JOBS]
    events = app[EVENTS]

    def observe(manifest: Manifest, elapsed_s: float) -> None:
        if manifest.status is CallStatus.UPLOAD_FAILED:
            events.recording_failed(manifest)  # the files are kept; a retry stores them
            return
        metrics.finalize_seconds.observe(elapsed_s)
        if manifest.status in (CallStatus.STORED, CallStatus.RECOVERED, CallStatus.EMPTY):
            events.recording_stored(manifest)

    async def hand_off(manifest: Manifest) -> None:
        if manifest.status in (CallStatus.STORED, CallStatus.RECOVERED):
            await jobs.queue_planned(manifest)  # durable before the spool goes

    app[FINALIZER] = Finalizer(
        spool=Spool(settings.spool_path),
        store=app[STORE],
        executor=app[PROCESS_POOL],
        options=FinalizeOptions(
            stereo_mode=settings.stereo_mode,
            stereo_bitrate_bps=settings.stereo_bitrate_bps,
            stereo_complexity=settings.stereo_complexity,
        ),
        on_stored=observe,
        hand_off=hand_off,
        keyring=app.get(KEYRING),
    )
    yield
    await app[FINALIZER].close(drain_timeout_s=settings.finalize_timeout_s)


def _recorder(clock: Clock) -> Context:
    """The recorder: live calls' journals; recovers what a previous process left."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        finalizer = app[FINALIZER]
        recorder = Recorder(
            spool=finalizer.spool,
            on_call_ended=finalizer.submit,
            clock=clock,
            flush_interval_s=settings.flush_interval_s,
            enabled=settings.recording_enabled,
            keyring=app.get(KEYRING),
        )
        app[RECORDER] = recorder
        await recorder.start()
        await finalizer.recover(live=recorder.live_ids())
        yield
        await recorder.close()

    return context


async def _http_client(app: web.Application) -> AsyncIterator[None]:
    """One client session for dialling out to agents."""
    async with aiohttp.ClientSession() as session:
        app[HTTP_CLIENT] = session
        yield


async def _loop_lag(app: web.Application) -> AsyncIterator[None]:
    """Measure event-loop lag (and the collector's pauses) for the metrics and for admission."""
    monitor = LoopLagMonitor(app[METRICS].loop_lag)
    app[LOOP_LAG] = monitor
    with GcPauseMonitor(app[METRICS].gc_pause):
        async with _owned(monitor.run(), "metrics.loop_lag"):
            yield


def _load(clock: Clock) -> Context:
    """The load monitor that admits or refuses new calls."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        lag = app[LOOP_LAG]
        monitor = LoadMonitor(
            AdmissionLimits(
                max_calls=settings.max_calls,
                max_cpu_share=settings.max_cpu_share,
                max_loop_lag_ms=settings.max_loop_lag_ms,
                call_cpu_share=settings.call_cpu_share,
            ),
            clock=clock,
            # p95 over 10 s: a lone hiccup is not overload, a loop late one wake in twenty is.
            lag_ms=lambda: lag.percentile_s(0.95, window_s=10.0, min_samples=100) * 1000,
            # The hub starts after the monitor (it admits through it): read it when sampling.
            media_calls=lambda: app[HUB].media_calls() if HUB in app else 0,
        )
        app[LOAD] = monitor
        async with _owned(monitor.run(), "admission.load"):
            yield

    return context


def _hub(clock: Clock) -> Context:
    """Live calls and their pacer; closing ends every call still live."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        hub = CallHub(
            app[RECORDER],
            clock=clock,
            admission=app[LOAD].admit,
            end_call_on_agent_exit=settings.end_call_on_agent_exit,
            agent_complexity=settings.agent_opus_complexity,
            send_silence=settings.send_silence,
            caller_backlog_ms=settings.caller_backlog_ms,
            partial_frame_wait_ms=settings.partial_frame_wait_ms,
        )
        app[HUB] = hub
        app[METRICS].add_latency_histogram(
            "mediaserver_caller_to_agent_latency_seconds",
            "Time from a caller packet's arrival to its audio being sent to the agent.",
            hub.latency.caller_to_agent,
        )
        app[METRICS].add_latency_histogram(
            "mediaserver_agent_to_caller_latency_seconds",
            "Time from agent audio's arrival to the frame it completed being sent to the caller.",
            hub.latency.agent_to_caller,
        )
        await hub.start()
        yield
        await hub.close(drain_timeout_s=settings.finalize_timeout_s)

    return context


def _sweeper(clock: Clock) -> Context:
    """Expire idle calls and retry unfinished spools, every sweep interval."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]

        def forget(call_id: str) -> None:
            # Looked up when called: the index is built at start-up, after this context.
            app[RECORDING_INDEX].forget(call_id)

        retention = RecordingRetention(
            RecordingDeleter(app[JOBS].states, on_deleted=forget),
            default_days=lambda: settings.recording_retention_days,
            clock=clock,
            audit=app[AUDIT],
            mirror=app.get(GCS_MIRROR),
        )
        sweeper = Sweeper(
            app[HUB],
            app[FINALIZER],
            clock=clock,
            retention_s=settings.retention_s,
            interval_s=settings.sweep_interval_s,
            housekeeping=(retention.sweep, app[AUDIT].expire),
        )
        app[METRICS].add_stats_source(lambda: _retention_reports(retention))
        async with _owned(sweeper.run(), "recorder.sweep"):
            yield

    return context


def _retention_reports(retention: RecordingRetention) -> Iterator[Report]:
    """The retention sweep's counters for Prometheus."""
    yield (
        "mediaserver_retention_sweeps",
        "counter",
        "Retention sweeps of the stored recordings.",
        [("", {}, retention.sweeps)],
    )
    yield (
        "mediaserver_recordings_expired",
        "counter",
        "Recordings deleted by the retention sweep.",
        [("", {}, retention.recordings_expired)],
    )


@contextlib.asynccontextmanager
async def _owned(coroutine: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """Run a coroutine as a task for the duration of a block; cancel and await it after."""
    task = asyncio.create_task(coroutine, name=name)
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _stats_metrics(app: web.Application) -> AsyncIterator[None]:
    """Expose the recorder's, the finalizer's and the calls' counters to Prometheus."""

    def read() -> Iterator[Report]:
        recorder = app[RECORDER].stats()
        finalizer = app[FINALIZER].stats()
        hub = app[HUB]
        load = app[LOAD]
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
            [("", {}, recorder.packets_recorded)],
        )
        drops = hub.drop_counts()
        yield (
            "mediaserver_packets_dropped",
            "counter",
            "Packets and frames lost inside the server, by where and why.",
            [("", {"reason": reason}, count) for reason, count in sorted(drops.items())],
        )
        yield (
            "mediaserver_calls_refused",
            "counter",
            "New calls refused with 503, by reason.",
            [("", {"reason": reason}, count) for reason, count in sorted(load.refused.items())],
        )
        yield (
            "mediaserver_calls_finalized",
            "counter",
            "Calls whose recording was built, by how.",
            [
                ("", {"how": "ended"}, finalizer.built - finalizer.recovered),
                ("", {"how": "recovered"}, finalizer.recovered),
                ("", {"how": "failed"}, finalizer.build_failed),
            ],
        )
        yield (
            "mediaserver_uploads",
            "counter",
            "Recordings handed to the store, by result (failed: after every retry).",
            [
                ("", {"result": "stored"}, finalizer.uploads_stored),
                ("", {"result": "failed"}, finalizer.uploads_failed),
            ],
        )
        yield (
            "mediaserver_hand_offs_failed",
            "counter",
            "Stored recordings whose post-call jobs could not be queued (the spool is kept and"
            " recovered).",
            [("", {}, finalizer.hand_offs_failed)],
        )
        yield (
            "mediaserver_caller_packets",
            "counter",
            "RTP packets received from callers (in) and agent frames sent to them (out).",
            [("", {"direction": d}, n) for d, n in sorted(hub.packet_counts().items())],
        )
        yield (
            "mediaserver_pacer_late_ticks",
            "counter",
            "Times the 20 ms playout pacer woke more than a frame late.",
            [("", {}, hub.pacer_late_ticks)],
        )
        sample = load.load(len(hub.sessions()))
        yield (
            "mediaserver_cpu_share",
            "gauge",
            "CPU the server process used over the last seconds, as a share of one core.",
            [("", {}, sample.cpu_share)],
        )

    app[METRICS].add_stats_source(read)
    yield
