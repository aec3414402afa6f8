"""One UDP port of the RTP range: non-blocking, read with kernel arrival stamps, drops counted."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import structlog

from mediaserver.clock import Clock
from mediaserver.errors import CallStateError
from mediaserver.transports.port_allocator import PortAllocator

log = structlog.get_logger(__name__)

_NS_PER_S = 1_000_000_000
# Linux socket options (asm-generic/socket.h; Python's socket module names neither): the
# kernel stamps each datagram with its arrival time (a struct timespec of CLOCK_REALTIME), and
# reports how many datagrams it dropped for a full receive buffer (a cumulative uint32).
SO_TIMESTAMPNS = 35
SO_RXQ_OVFL = 40
_TIMESPEC = struct.Struct("@qq")
_OVERFLOW_COUNT = struct.Struct("@I")
# A plain int: socket.MSG_TRUNC is an IntFlag member, whose `&` runs in Python (~1 µs a packet).
_MSG_TRUNC = int(socket.MSG_TRUNC)
_ANCILLARY_BYTES = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_OVERFLOW_COUNT.size)
# The kernel's receive buffer: ~2.5 s of one caller at 50 packets/s of up to 2 KiB, so a stalled
# loop loses nothing before the stall is long enough to show in every other metric.
RECEIVE_BUFFER_BYTES = 256 * 1024

Address = tuple[Any, ...]
# (datagram, source address, arrival on the monotonic clock in ns)
DatagramHandler = Callable[[bytes, Address, int], None]


class UdpPort:
    """A bound, non-blocking UDP socket whose datagrams arrive stamped by the kernel."""

    def __init__(
        self,
        *,
        host: str,
        ports: PortAllocator,
        on_datagram: DatagramHandler,
        clock: Clock,
        max_datagram_bytes: int,
    ) -> None:
        self.host = host
        self.port: int | None = None
        self.max_datagram_bytes = max_datagram_bytes
        self.kernel_timestamps = False
        self.kernel_drops = 0  # datagrams the kernel dropped for a full receive buffer
        self.truncated = 0  # datagrams longer than max_datagram_bytes
        self.errors = 0  # reads and sends the kernel refused (ICMP errors, full send buffer)
        self._ports = ports
        self._on_datagram = on_datagram
        self._clock = clock
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kernel_drops_seen = 0
        self._closed = False

    @property
    def is_open(self) -> bool:
        """Whether the socket is bound and not closed."""
        return self._sock is not None and not self._closed

    def open(self) -> int:
        """Bind a port of the range (skipping ones another process holds) and start reading."""
        if self._sock is not None or self._closed:
            raise CallStateError("the RTP port was already opened")
        sock, port = self._bind()
        self._sock, self.port = sock, port
        self.kernel_timestamps = _enable_kernel_stamps(sock)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._on_readable)
        return port

    def send(self, datagram: bytes, destination: Address) -> bool:
        """Send one datagram now; False (and counted) if the kernel refuses it."""
        sock = self._sock
        if sock is None or self._closed:
            return False
        try:
            sock.sendto(datagram, destination)
        except OSError:
            self.errors += 1
            return False
        return True

    def close(self) -> None:
        """Stop reading, close the socket and give the port back; idempotent."""
        if self._closed:
            return
        self._closed = True
        sock = self._sock
        if sock is None:
            return
        # Nothing is read after this line: the handler hears nothing from a closed port.
        if self._loop is not None:
            self._loop.remove_reader(sock.fileno())
        sock.close()
        if self.port is not None:
            self._ports.release(self.port)

    def _bind(self) -> tuple[socket.socket, int]:
        """A socket bound to a free port of the range; ports other processes hold are skipped."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        taken_elsewhere: list[int] = []
        try:
            while True:
                port = self._ports.allocate()
                sock = socket.socket(family, socket.SOCK_DGRAM)
                try:
                    sock.bind((self.host, port))
                except OSError as exc:
                    sock.close()
                    if exc.errno != errno.EADDRINUSE:
                        self._ports.release(port)
                        raise
                    # Held until the search ends, so the allocator hands out another port.
                    taken_elsewhere.append(port)
                    continue
                sock.setblocking(False)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
                return sock, port
        finally:
            for busy_port in taken_elsewhere:
                self._ports.release(busy_port)
            if taken_elsewhere:
                log.warning("rtp.ports_busy", ports=taken_elsewhere)

    def _on_readable(self) -> None:
        """Read one datagram and hand it on; the loop calls again while more are queued."""
        # One read a wake-up: at 50 packets/s a socket rarely holds two, and reading until it is
        # empty would cost a failing recvmsg (and its exception) for every packet.
        sock = self._sock
        if sock is None:
            return
        try:
            data, ancillary, flags, addr = sock.recvmsg(self.max_datagram_bytes, _ANCILLARY_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.errors += 1  # an ICMP error queued on the socket
            return
        now_ns = self._clock.monotonic_ns()
        arrival_ns = now_ns
        for level, kind, value in ancillary:
            if level != socket.SOL_SOCKET:
                continue
            if kind == SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
                seconds, nanoseconds = _TIMESPEC.unpack_from(value)
                # The kernel stamps arrivals on the wall clock; audio is placed on the monotonic
                # one. Never later than now: a stamp from a clock stepped meanwhile is ignored.
                offset_ns = time.time_ns() - now_ns
                arrival_ns = min(now_ns, seconds * _NS_PER_S + nanoseconds - offset_ns)
            elif kind == SO_RXQ_OVFL and len(value) >= _OVERFLOW_COUNT.size:
                self._note_kernel_drops(_OVERFLOW_COUNT.unpack_from(value)[0])
        if flags & _MSG_TRUNC:
            self.truncated += 1  # too big to be caller audio
            return
        self._on_datagram(data, addr, arrival_ns)

    def _note_kernel_drops(self, cumulative: int) -> None:
        """Count datagrams the kernel dropped for this socket since the last report."""
        if cumulative > self._kernel_drops_seen:
            dropped = cumulative - self._kernel_drops_seen
            self.kernel_drops += dropped
            log.warning("rtp.kernel_drops", port=self.port, dropped=dropped)
        self._kernel_drops_seen = cumulative


def _enable_kernel_stamps(sock: socket.socket) -> bool:
    """Ask the kernel for arrival stamps and drop counts; False where it has neither."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    return True
