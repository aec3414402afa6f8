"""Run the application: a guarded runner and site, graceful drain on SIGTERM/SIGINT."""

import asyncio
import gc
import ipaddress
import resource
import signal
from dataclasses import dataclass

import structlog
from aiohttp import web

from mediaserver.api.keys import FINALIZER, HUB, REGISTRY, SETTINGS
from mediaserver.app import create_app
from mediaserver.clock import Clock
from mediaserver.connection_guard import ConnectionGuard, DescriptorExhaustionLog, GuardedAppRunner
from mediaserver.errors import SettingsError
from mediaserver.settings import Settings

log = structlog.get_logger(__name__)


def check_exposure(settings: Settings) -> None:
    """Refuse to listen beyond loopback without an API token."""
    if settings.api_token or settings.api_tokens_path:
        return
    host = settings.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SettingsError(
            f"refusing to listen on {host} without an API token:"
            " set api_token (MEDIASERVER_API_TOKEN) or api_tokens_path, or listen on 127.0.0.1"
        )


def check_cluster(settings: Settings) -> None:
    """A node of several must say where the others send its calls' requests."""
    if settings.redis_url and not settings.public_url:
        raise SettingsError(
            "setting public_url is required with redis_url: other nodes redirect and relay"
            " requests for this node's calls to it (e.g. http://10.0.0.7:8080)"
        )


def raise_open_files_limit() -> int:
    """Lift the soft limit on open files to the hard one (each call holds a few); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


# Every live packet allocates a few tracked containers (its MediaPacket among them), so with
# CPython's default threshold of 700 the young generation is collected hundreds of times a
# second, and each full collection walks every object the process holds (aiortc, PyAV, numpy,
# pocketsphinx: ~1 M objects), pausing the event loop for 60-110 ms (measured in
# bench_agent_capacity.py). Objects alive once the server is up are frozen out of collection,
# and young collections come far less often.
GC_THRESHOLDS = (50_000, 20, 50)


def tune_garbage_collector() -> None:
    """Freeze what start-up allocated and space collections out; see GC_THRESHOLDS."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@dataclass(slots=True)
class RunningServer:
    """A started server: its runner and the port it listens on."""

    runner: GuardedAppRunner
    port: int

    @property
    def app(self) -> web.Application:
        """The application."""
        return self.runner.app

    async def stop(self) -> None:
        """Drain: take no call, let live ones finish (up to the drain timeout), then stop."""
        # The listener stays open meanwhile: health checks, the calls' own routes (WHIP DELETE,
        # the agents' sockets) and the recordings API go on working. /readyz says 503 at once.
        settings = self.app[SETTINGS]
        hub = self.app[HUB]
        hub.drain()
        registry = self.app.get(REGISTRY)
        if registry is not None:
            await registry.publish()  # marked draining now: other nodes stop placing calls here
        live = len(hub.sessions())
        log.info("server.draining", live_calls=live, timeout_s=settings.drain_timeout_s)
        if live and not await hub.wait_idle(settings.drain_timeout_s):
            log.warning("server.drain_timeout", live_calls=len(hub.sessions()))
        # Calls still live are ended cleanly here (agents get `stop`, sockets close normally),
        # before aiohttp's own shutdown would cut their connections.
        await hub.close(drain_timeout_s=settings.finalize_timeout_s)
        unfinished = await self.app[FINALIZER].close(drain_timeout_s=settings.finalize_timeout_s)
        if unfinished:
            log.warning("server.finalize_timeout", unfinished=unfinished)
        await self.runner.cleanup()


async def start_server(settings: Settings, *, clock: Clock | None = None) -> RunningServer:
    """Start the application on the configured host and port (0 picks a free port)."""
    check_exposure(settings)
    check_cluster(settings)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(DescriptorExhaustionLog())
    runner = GuardedAppRunner(
        create_app(settings, clock=clock),
        guard=ConnectionGuard(
            max_connections=settings.max_connections,
            header_timeout_s=settings.http_header_timeout_s,
        ),
        handle_signals=False,
        access_log=None,
        keepalive_timeout=settings.http_keepalive_timeout_s,
        # Long enough for the drain above; aiohttp's own shutdown only meets what is left.
        shutdown_timeout=5.0,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise SettingsError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
        ) from None
    port = runner.addresses[0][1]
    log.info("server.listening", host=settings.host, port=port, storage=settings.storage_type)
    return RunningServer(runner, port)


def build_welcome(host: str, port: int, paths: set[str]) -> str:
    """What `serve` prints at start: where it listens, and where a person should look first."""
    # The first line is what scripts wait for; the rest names pages on an address a browser on
    # this machine can open (a wildcard address is not one).
    local = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)
    if ":" in local and not local.startswith("["):
        local = f"[{local}]"
    base = f"http://{local}:{port}"
    lines = [f"mediaserver listening on http://{host}:{port}"]
    if "/" in paths:
        lines.append(f"  console: {base}/")
    if "/try" in paths:
        lines.append(f"  try it:  {base}/try  (call the server from your browser)")
    lines.append(f"  API:     {base}/v1/openapi.json describes it")
    return "\n".join(lines)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then drain gracefully."""
    open_files = raise_open_files_limit()
    if settings.max_connections > open_files // 2:
        log.warning(
            "server.open_files_low", open_files=open_files, max_connections=settings.max_connections
        )
    server = await start_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    paths = {resource.canonical for resource in server.app.router.resources()}
    tune_garbage_collector()
    print(build_welcome(settings.host, server.port, paths), flush=True)
    await stop.wait()
    await server.stop()
    log.info("server.stopped")
