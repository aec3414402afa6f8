"""The plain-RTP caller leg: one UDP port, symmetric RTP, RTCP multiplexed on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import structlog

from mediaserver.clock import Clock, SystemClock
from mediaserver.errors import CallStateError, RtpParseError
from mediaserver.recording.call import EndReason
from mediaserver.recording.channel import Codec
from mediaserver.rtp.dtmf_detector import DtmfDetector
from mediaserver.rtp.media_packet import MediaPacket
from mediaserver.rtp.packet import RTP_VERSION, RtpHeader, is_rtcp, parse_rtp_header
from mediaserver.rtp.rtcp import RtcpBye, build_rtcp_bye, parse_rtcp_compound
from mediaserver.transports.link import CallerMediaSink
from mediaserver.transports.port_allocator import PortAllocator

log = structlog.get_logger(__name__)

# RFC 7587 §4.1 leaves Opus a dynamic payload type; 111 is what browsers and bridges offer.
OPUS_DYNAMIC_PAYLOAD_TYPE = 111
# An RTP audio packet fits one Ethernet frame; a bigger datagram is not caller audio.
DEFAULT_MAX_DATAGRAM_BYTES = 2048
# RFC 3550 §5.1: V=2, no padding, no extension, no CSRC | M(1) PT(7) | sequence | timestamp | SSRC.
_RTP_HEADER = struct.Struct("!BBHII")
_FIRST_OCTET = RTP_VERSION << 6
_MARKER_BIT = 0x80
_NS_PER_S = 1_000_000_000
# Linux socket options (asm-generic/socket.h; Python's socket module names neither): the
# kernel stamps each datagram with its arrival time (a struct timespec of CLOCK_REALTIME), and
# reports how many datagrams it dropped for a full receive buffer (a cumulative uint32).
SO_TIMESTAMPNS = 35
SO_RXQ_OVFL = 40
_TIMESPEC = struct.Struct("@qq")
_OVERFLOW_COUNT = struct.Struct("@I")
_ANCILLARY_BYTES = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_OVERFLOW_COUNT.size)
# RFC 4961 §4 has a symmetric-RTP endpoint follow its peer; a NAT that rebinds moves the peer to
# a new source port. The old source must be silent this long before a new one takes over.
DEFAULT_RELATCH_AFTER_S = 2.0
# The kernel's receive buffer: ~2.5 s of one caller at 50 packets/s of up to 2 KiB, so a stalled
# loop loses nothing before the stall is long enough to show in every other metric.
RECEIVE_BUFFER_BYTES = 256 * 1024


class DropReason(StrEnum):
    """Why a received datagram did not reach the sink."""

    MALFORMED = "malformed"
    WRONG_SOURCE = "wrong_source"
    WRONG_PAYLOAD_TYPE = "wrong_payload_type"
    AFTER_END = "after_end"
    KERNEL_RECEIVE_BUFFER = "kernel_receive_buffer"


class RtpCallerTransport:
    """A caller leg over plain RTP (a `CallerLink`) on its own non-blocking UDP socket."""

    def __init__(
        self,
        *,
        codec: Codec,
        sink: CallerMediaSink,
        host: str,
        ports: PortAllocator,
        media_timeout_s: float = 30.0,
        expected_remote: tuple[str, int] | None = None,
        offered_remote: tuple[str, int] | None = None,
        payload_type: int | None = None,
        dtmf_payload_type: int | None = None,
        relatch_after_s: float = DEFAULT_RELATCH_AFTER_S,
        relatch_any_source: bool = False,
        clock: Clock | None = None,
        max_datagram_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
    ) -> None:
        # `expected_remote` is the only source heard; `offered_remote` (an SDP offer's address)
        # only gets our audio until the first valid packet latches whoever sends it.
        self.codec = codec
        self.payload_type = _default_payload_type(codec) if payload_type is None else payload_type
        self.dtmf_payload_type = dtmf_payload_type
        self.relatch_after_ns = int(relatch_after_s * _NS_PER_S)
        self.relatch_any_source = relatch_any_source
        self.host = host
        self.media_timeout_s = media_timeout_s
        self.max_datagram_bytes = max_datagram_bytes
        self.port: int | None = None
        self._sink = sink
        self._ports = ports
        self._clock: Clock = clock or SystemClock()
        self._expected = expected_remote
        self._offered = offered_remote
        self._peer: tuple[Any, ...] | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._ended = False
        self._closed = False
        self._last_valid_ns = 0
        self._last_ssrc: int | None = None
        self._sent_ssrc: int | None = None
        self._kernel_timestamps = False
        self._kernel_drops_seen = 0
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.bytes_out = 0
        self.rtcp_in = 0
        self.unsent = 0  # send_audio calls while no peer was known, or after close
        self.send_errors = 0  # sends the kernel refused (buffer full, peer's port closed)
        self.relatches = 0  # times a new source took over from a silent latched one
        self.dtmf_packets_in = 0
        self._dtmf = DtmfDetector(codec.clock_rate_hz)
        self._dropped = dict.fromkeys(DropReason, 0)
        # Payload types received that the leg did not negotiate: how many of each (bounded).
        self.unexpected_payload_types: dict[int, int] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> int:
        """Bind a port of the range (skipping ones another process holds) and start reading."""
        if self._sock is not None or self._closed:
            raise CallStateError("the RTP transport was already started")
        sock, port = self._bind()
        self._sock, self.port = sock, port
        self._kernel_timestamps = _enable_kernel_stamps(sock)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._on_readable)
        self._last_valid_ns = self._clock.monotonic_ns()
        self._watchdog = asyncio.create_task(self._watch_media(), name=f"rtp.watchdog.{port}")
        log.info(
            "rtp.leg_started",
            port=port,
            codec=self.codec.value,
            pt=self.payload_type,
            dtmf_pt=self.dtmf_payload_type,
        )
        return port

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

    async def close(self) -> None:
        """Say BYE to the peer (if known), close the socket and give the port back; idempotent."""
        if self._closed:
            return
        self._closed = True
        sock = self._sock
        if sock is None:
            return
        # The socket stops being read here, before any await: nothing reaches the sink after.
        if self._loop is not None:
            self._loop.remove_reader(sock.fileno())
        destination = self._destination()
        if destination is not None and self._sent_ssrc is not None:
            try:
                sock.sendto(build_rtcp_bye([self._sent_ssrc]), destination)
            except OSError:
                self.send_errors += 1
        sock.close()
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        if self.port is not None:
            self._ports.release(self.port)
        log.info("rtp.leg_closed", port=self.port, packets_in=self.packets_in)

    @property
    def can_send(self) -> bool:
        """Whether the caller's address is known (latched, or given) and the leg is open."""
        return self._destination() is not None and self._sock is not None and not self._closed

    @property
    def peer(self) -> tuple[Any, ...] | None:
        """The caller's address: learnt from its first valid RTP packet."""
        return self._peer

    def describe(self) -> dict[str, Any]:
        """The leg's counters and addresses, for the API."""
        return {
            "transport": "rtp",
            "port": self.port,
            "peer": None if self._peer is None else f"{self._peer[0]}:{self._peer[1]}",
            "local": None if self.port is None else f"{self.host}:{self.port}",
            "payload_type": self.payload_type,
            "dtmf_payload_type": self.dtmf_payload_type,
            "kernel_timestamps": self._kernel_timestamps,
            "packets_in": self.packets_in,
            "dtmf_packets_in": self.dtmf_packets_in,
            "relatches": self.relatches,
            "unexpected_payload_types": {
                str(pt): count for pt, count in sorted(self.unexpected_payload_types.items())
            },
            "bytes_in": self.bytes_in,
            "packets_out": self.packets_out,
            "bytes_out": self.bytes_out,
            "rtcp_in": self.rtcp_in,
            "unsent": self.unsent,
            "send_errors": self.send_errors,
            "dropped_in": {reason.value: count for reason, count in self._dropped.items()},
        }

    def drop_counts(self) -> Mapping[str, int]:
        """Datagrams dropped before the sink, by reason (kernel drops included)."""
        return {reason.value: count for reason, count in self._dropped.items() if count}

    # -- receive --------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        """Read one datagram and handle it; the loop calls again while more are queued."""
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
            self.send_errors += 1  # an ICMP error queued on the socket
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
                offset_ns = time.time_ns() - time.monotonic_ns()
                arrival_ns = min(now_ns, seconds * _NS_PER_S + nanoseconds - offset_ns)
            elif kind == SO_RXQ_OVFL and len(value) >= _OVERFLOW_COUNT.size:
                self._note_kernel_drops(_OVERFLOW_COUNT.unpack_from(value)[0])
        if flags & socket.MSG_TRUNC:
            self._dropped[DropReason.MALFORMED] += 1  # too big to be caller audio
            return
        self.handle_datagram(data, addr, arrival_ns)

    def handle_datagram(self, data: bytes, addr: tuple[Any, ...], arrival_ns: int) -> None:
        """One datagram as read from the socket: valid RTP of the peer to the sink, else counted."""
        if addr != self._peer and not self._may_be_peer(data, addr, arrival_ns):
            self._dropped[DropReason.WRONG_SOURCE] += 1
            return
        if self._ended:
            self._dropped[DropReason.AFTER_END] += 1
            return
        if is_rtcp(data):
            self._on_rtcp(data)
            return
        try:
            header = parse_rtp_header(data)
        except RtpParseError:
            self._dropped[DropReason.MALFORMED] += 1
            return
        payload_type = header.payload_type
        if payload_type == self.payload_type:
            packet = MediaPacket(
                arrival_ns,
                header.timestamp,
                header.sequence,
                header.ssrc,
                payload_type,
                header.marker,
                data[header.payload_offset : header.payload_end],
            )
        elif payload_type == self.dtmf_payload_type:
            packet = None
        else:
            self._note_unexpected_payload_type(payload_type)
            return
        if addr != self._peer:
            self._latch_peer(addr)
        self._last_valid_ns = arrival_ns
        self._last_ssrc = header.ssrc
        self.packets_in += 1
        self.bytes_in += len(data)
        if packet is not None:
            self._sink.on_caller_packet(packet)
        else:
            self._on_telephone_event(
                data[header.payload_offset : header.payload_end], header, arrival_ns
            )

    def _on_telephone_event(self, payload: bytes, header: RtpHeader, arrival_ns: int) -> None:
        """Feed an RFC 4733 packet to the DTMF detector; completed digits go to the sink."""
        self.dtmf_packets_in += 1
        try:
            digits = self._dtmf.add(header.timestamp, header.marker, payload)
        except RtpParseError:
            self._dropped[DropReason.MALFORMED] += 1
            return
        for digit in digits:
            self._sink.on_caller_dtmf(digit, header.ssrc, arrival_ns)

    def _note_unexpected_payload_type(self, payload_type: int) -> None:
        """Count a packet of a payload type the leg did not negotiate; log each type once."""
        self._dropped[DropReason.WRONG_PAYLOAD_TYPE] += 1
        seen = self.unexpected_payload_types
        if payload_type in seen:
            seen[payload_type] += 1
            return
        seen[payload_type] = 1
        log.warning(
            "rtp.unexpected_payload_type",
            port=self.port,
            payload_type=payload_type,
            negotiated=self.payload_type,
            dtmf_payload_type=self.dtmf_payload_type,
        )

    def _note_kernel_drops(self, cumulative: int) -> None:
        """Count datagrams the kernel dropped for this socket since the last report."""
        if cumulative > self._kernel_drops_seen:
            dropped = cumulative - self._kernel_drops_seen
            self._dropped[DropReason.KERNEL_RECEIVE_BUFFER] += dropped
            log.warning("rtp.kernel_drops", port=self.port, dropped=dropped)
        self._kernel_drops_seen = cumulative

    # -- send -----------------------------------------------------------------------------------

    def send_audio(self, packet: MediaPacket) -> None:
        """Send one agent packet now with its numbers, our SSRC and the leg's payload type."""
        destination = self._destination()
        sock = self._sock
        if destination is None or sock is None or self._closed:
            self.unsent += 1
            return
        second_octet = self.payload_type | (_MARKER_BIT if packet.marker else 0)
        datagram = (
            _RTP_HEADER.pack(
                _FIRST_OCTET, second_octet, packet.sequence, packet.rtp_timestamp, packet.ssrc
            )
            + packet.payload
        )
        try:
            sock.sendto(datagram, destination)
        except OSError:
            self.send_errors += 1
            return
        sent_ns = self._clock.monotonic_ns()
        self._sent_ssrc = packet.ssrc
        self.packets_out += 1
        self.bytes_out += len(datagram)
        self._sink.on_audio_sent(
            packet._replace(arrival_ns=sent_ns, payload_type=self.payload_type)
        )

    # -- internals ------------------------------------------------------------------------------

    def _may_be_peer(self, data: bytes, addr: tuple[Any, ...], arrival_ns: int) -> bool:
        """Whether a datagram from another source than the latched peer may be the peer's."""
        if self._peer is None:
            # IPv6 sources carry flow info and scope id too: the expectation names host and port.
            return self._expected is None or addr[:2] == self._expected
        if self._expected is not None or arrival_ns - self._last_valid_ns < self.relatch_after_ns:
            return False  # never while the latched source is alive
        # The latched source has gone quiet: a NAT may have rebound the caller to a new port.
        if is_rtcp(data):
            return False
        try:
            header = parse_rtp_header(data)
        except RtpParseError:
            return False
        if header.payload_type not in (self.payload_type, self.dtmf_payload_type):
            return False
        return self.relatch_any_source or header.ssrc == self._last_ssrc

    def _latch_peer(self, addr: tuple[Any, ...]) -> None:
        """Symmetric RTP (RFC 4961): only this source is heard, and replies go to it."""
        previous, self._peer = self._peer, addr
        if previous is None:
            log.info("rtp.peer_latched", port=self.port, peer=f"{addr[0]}:{addr[1]}")
            return
        self.relatches += 1
        log.warning(
            "rtp.peer_relatched",
            port=self.port,
            previous=f"{previous[0]}:{previous[1]}",
            peer=f"{addr[0]}:{addr[1]}",
            relatches=self.relatches,
        )

    def _destination(self) -> tuple[Any, ...] | None:
        """Where to send: the latched peer, else the expected or offered one."""
        if self._peer is not None:
            return self._peer
        return self._expected if self._expected is not None else self._offered

    def _on_rtcp(self, data: bytes) -> None:
        """Count an RTCP packet of the peer; a BYE for the source being heard ends the leg."""
        try:
            packets = parse_rtcp_compound(data)
        except RtpParseError:
            self._dropped[DropReason.MALFORMED] += 1
            return
        self.rtcp_in += 1
        if self._peer is None and self._expected is None:
            return  # nobody is the peer yet: a BYE from anywhere must not end the call
        for packet in packets:
            # A bridge that changes SSRC may say BYE for the old one and keep talking.
            if isinstance(packet, RtcpBye) and (
                self._last_ssrc is None or self._last_ssrc in packet.ssrcs
            ):
                self._end(EndReason.RTCP_BYE)
                return

    def _end(self, reason: EndReason) -> None:
        """Tell the sink the leg is over, exactly once."""
        if self._ended or self._closed:
            return
        self._ended = True
        log.info("rtp.leg_ended", port=self.port, reason=reason.value)
        for digit in self._dtmf.flush():  # a digit whose end packets never came
            self._sink.on_caller_dtmf(digit, self._last_ssrc or 0, self._last_valid_ns)
        self._sink.on_caller_ended(reason)

    async def _watch_media(self) -> None:
        """End the leg after `media_timeout_s` without a valid packet; wakes about once a period."""
        timeout_ns = int(self.media_timeout_s * _NS_PER_S)
        while not self._ended:
            remaining_ns = self._last_valid_ns + timeout_ns - self._clock.monotonic_ns()
            if remaining_ns <= 0:
                self._end(EndReason.MEDIA_TIMEOUT)
                return
            await self._clock.sleep(remaining_ns / _NS_PER_S)


def _enable_kernel_stamps(sock: socket.socket) -> bool:
    """Ask the kernel for arrival stamps and drop counts; False where it has neither."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    return True


def _default_payload_type(codec: Codec) -> int:
    """The codec's static payload type (RFC 3551 table 4), or Opus' customary dynamic one."""
    static = codec.static_payload_type
    return OPUS_DYNAMIC_PAYLOAD_TYPE if static is None else static
