"""HTTP connection hygiene: a cap on open connections and a deadline for a request's headers."""

import asyncio
import errno
import resource
import time
from collections.abc import Callable
from typing import Any, cast

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

_END_OF_HEADERS = b"\r\n\r\n"
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nConnection: close\r\n"
    b"Content-Type: application/json\r\nContent-Length: 79\r\n\r\n"
    b'{"error": {"code": "too_many_connections", "message": "too many connections"}}\n'
)
_FD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_FD_LOG_INTERVAL_S = 10.0


class ConnectionGuard:
    """Counts open connections; refuses beyond a cap; closes ones that never send headers."""

    # aiohttp waits for a request's headers as long as the client likes (a slow client holds a
    # connection and a file descriptor forever), and takes any number of connections. Calls need
    # descriptors too (a socket per RTP leg, files per journal): a connection whose descriptor
    # lands within `fd_reserve` of the process's limit is refused, so HTTP can never take the
    # last ones (Linux hands out the lowest free number, so it says how many are in use).

    def __init__(
        self,
        *,
        max_connections: int,
        header_timeout_s: float,
        fd_limit: int | None = None,
        fd_reserve: int = 64,
        log_interval_s: float = _FD_LOG_INTERVAL_S,
    ) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.fd_limit = fd_limit if fd_limit is not None else soft_limit
        self.fd_reserve = fd_reserve
        self.open = 0
        self.refused = 0
        self.refused_for_descriptors = 0
        self.header_timeouts = 0
        self._log_interval_s = log_interval_s
        self._last_logged = -log_interval_s

    def admits(self, transport: asyncio.BaseTransport) -> bool:
        """Whether a new connection may be served; counts and logs a refusal."""
        sock = transport.get_extra_info("socket")
        descriptor = sock.fileno() if sock is not None else -1
        if descriptor >= self.fd_limit - self.fd_reserve:
            self.refused += 1
            self.refused_for_descriptors += 1
            now = time.monotonic()
            if now - self._last_logged >= self._log_interval_s:
                self._last_logged = now
                log.error(
                    "server.out_of_file_descriptors",
                    descriptor=descriptor,
                    limit=self.fd_limit,
                    refused=self.refused_for_descriptors,
                    hint="raise the open-files limit (ulimit -n) or lower max_connections",
                )
            return False
        if self.open >= self.max_connections:
            self.refused += 1
            return False
        return True

    def wrap(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory that guards each connection `inner` would serve."""

        def factory() -> asyncio.Protocol:
            return _GuardedProtocol(inner(), self)

        return factory


class _GuardedProtocol(asyncio.Protocol):
    """Passes everything to aiohttp's handler, watching the first request's headers arrive."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Admit the connection under the cap, or answer 503 and close it."""
        self._transport = transport
        guard = self._guard
        if not guard.admits(transport):
            # A stream transport (uvloop's does not subclass asyncio.WriteTransport).
            cast(asyncio.Transport, transport).write(_REFUSAL)
            transport.close()
            return
        self._admitted = True
        guard.open += 1
        self._timer = asyncio.get_running_loop().call_later(
            guard.header_timeout_s, self._headers_too_slow
        )
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        """Hand data on; the deadline ends with the first request's blank line."""
        if not self._admitted:
            return
        if self._timer is not None:
            seen = self._tail + data
            if _END_OF_HEADERS in seen:
                self._timer.cancel()
                self._timer = None
                self._read_directly()
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def _read_directly(self) -> None:
        """The deadline is met: the transport hands later reads to aiohttp's handler itself."""
        # An agent's WebSocket carries ~25 messages a second for the whole call: a call less
        # each. Only reads bypass the guard; the end of the connection still comes here.
        self.data_received = self._inner.data_received  # type: ignore[method-assign]
        if self._transport is not None:
            self._transport.set_protocol(self)  # uvloop looks data_received up only here

    def eof_received(self) -> bool | None:
        """Hand the end of input on."""
        return self._inner.eof_received() if self._admitted else None

    def pause_writing(self) -> None:
        """Hand flow control on."""
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        """Hand flow control on."""
        if self._admitted:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        """Release the connection's place."""
        if not self._admitted:
            return
        self._admitted = False
        self._guard.open -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._inner.connection_lost(exc)

    def _headers_too_slow(self) -> None:
        """No complete request headers in time: close (aiohttp would wait for ever)."""
        self._timer = None
        self._guard.header_timeouts += 1
        if self._transport is not None:
            self._transport.close()


class GuardedAppRunner(web.AppRunner):
    """An AppRunner whose sites serve through a ConnectionGuard."""

    def __init__(self, app: web.Application, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard
        self._guarded: Callable[[], asyncio.Protocol] | None = None

    @property
    def server(self) -> Any:
        """The protocol factory sites listen with: aiohttp's, behind the guard."""
        inner = super().server
        if inner is None:
            return None
        if self._guarded is None:
            self._guarded = self.guard.wrap(inner)
        return self._guarded


class DescriptorExhaustionLog:
    """An event-loop exception handler: accept() out of descriptors becomes one log line."""

    # asyncio logs "socket.accept() out of system resource" with a traceback for every failed
    # accept (it retries each second per listener): one warning per interval says it instead.

    def __init__(self, interval_s: float = _FD_LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.count = 0
        self._last_logged = 0.0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Handle the loop's exception context."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _FD_ERRNOS:
            self.count += 1
            now = time.monotonic()
            if now - self._last_logged >= self.interval_s:
                self._last_logged = now
                log.error(
                    "server.out_of_file_descriptors",
                    error=exc.strerror,
                    failed_accepts=self.count,
                    hint="raise the open-files limit (ulimit -n) or lower max_connections",
                )
            return
        loop.default_exception_handler(context)
