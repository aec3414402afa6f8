"""A webhook receiver on loopback that checks each delivery's signature on its own."""

# The check is written here from the documented scheme, independently of the server's code:
#     X-Mediaserver-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, t + "." + body)>

import asyncio
import hashlib
import hmac
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

SECRET = "whsec-test-secret"


@dataclass(slots=True)
class Received:
    """One delivery: its event, headers, and whether the signature checked out."""

    event: dict[str, Any]
    headers: dict[str, str]
    signature_ok: bool


def check_signature(secret: str, header: str, body: bytes, now_s: float) -> bool:
    """True if the header signs `body` with `secret` within five minutes of `now_s`."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    if "t" not in parts or "v1" not in parts or abs(now_s - int(parts["t"])) > 300:
        return False
    expected = hmac.new(secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), parts["v1"])


def free_port() -> int:
    """A TCP port nobody listens on (yet)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(slots=True)
class WebhookReceiver:
    """Receives deliveries on a fixed port once started; answers 2xx."""

    port: int = field(default_factory=free_port)
    secret: str = SECRET
    received: list[Received] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Where to send events (valid before the receiver listens)."""
        return f"http://127.0.0.1:{self.port}/hooks"

    async def start(self) -> None:
        """Start listening."""
        app = web.Application()
        app.router.add_post("/hooks", self._receive)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        header = request.headers.get("X-Mediaserver-Signature", "")
        received = Received(
            json.loads(body),
            dict(request.headers),
            check_signature(self.secret, header, body, time.time()),
        )
        async with self.arrived:
            self.received.append(received)
            self.arrived.notify_all()
        return web.Response(status=204)

    def types(self, call_id: str | None = None) -> list[str]:
        """Event types received (for one call, if given), in arrival order."""
        return [r.event["type"] for r in self.received if call_id in (None, r.event["call_id"])]

    async def wait_for(self, event_type: str, call_id: str, timeout_s: float = 60.0) -> Received:
        """The first delivery of an event for a call (waits for it)."""
        return (await self.wait_for_all(event_type, call_id, 1, timeout_s))[0]

    async def wait_for_all(
        self, event_type: str, call_id: str, count: int, timeout_s: float = 60.0
    ) -> list[Received]:
        """The first `count` deliveries of an event for a call (waits for them)."""
        async with asyncio.timeout(timeout_s), self.arrived:
            while True:
                found = [
                    r
                    for r in self.received
                    if r.event["type"] == event_type and r.event["call_id"] == call_id
                ]
                if len(found) >= count:
                    return found[:count]
                await self.arrived.wait()
