"""Run the application: AppRunner + TCPSite, graceful drain on SIGTERM/SIGINT."""

import asyncio
import ipaddress
import signal
from dataclasses import dataclass

import structlog
from aiohttp import web

from mediaserver.api.keys import DRAINING
from mediaserver.app import create_app
from mediaserver.errors import SettingsError
from mediaserver.settings import Settings

log = structlog.get_logger(__name__)


def check_exposure(settings: Settings) -> None:
    """Refuse to listen beyond loopback without an API token."""
    if settings.api_token:
        return
    host = settings.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SettingsError(
            f"refusing to listen on {host} without an API token:"
            " set api_token (MEDIASERVER_API_TOKEN) or listen on 127.0.0.1"
        )


@dataclass(slots=True)
class RunningServer:
    """A started server: its runner and the port it listens on."""

    runner: web.AppRunner
    port: int

    @property
    def app(self) -> web.Application:
        """The application."""
        return self.runner.app

    async def stop(self) -> None:
        """Stop accepting calls, drain live ones, release every resource."""
        self.app[DRAINING]["draining"] = True
        await self.runner.cleanup()


async def start_server(settings: Settings) -> RunningServer:
    """Start the application on the configured host and port (0 picks a free port)."""
    check_exposure(settings)
    runner = web.AppRunner(create_app(settings), handle_signals=False, access_log=None)
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
    server = await start_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    paths = {resource.canonical for resource in server.app.router.resources()}
    print(build_welcome(settings.host, server.port, paths), flush=True)
    await stop.wait()
    log.info("server.draining", timeout_s=settings.drain_timeout_s)
    await server.stop()
    log.info("server.stopped")
