"""The plain-RTP caller leg: one UDP port, symmetric RTP, RTCP multiplexed on the same port."""

from __future__ import annotations

import asyncio
import errno
import secrets
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import structlog

from mediaserver.errors import CallStateError, RtpParseError
from mediaserver.recording.channel import Codec
from mediaserver.rtp.packet import RTP_VERSION, is_rtcp, parse_rtp_header
from mediaserver.rtp.rtcp import RtcpBye, build_rtcp_bye, parse_rtcp_compound
from mediaserver.transports.link import CallerMediaSink
from mediaserver.transports.port_allocator import PortAllocator

log = structlog.get_logger(__name__)

# RFC 7587 §4.1 leaves Opus a dynamic payload type; 111 is what browsers and bridges offer.
OPUS_DYNAMIC_PAYLOAD_TYPE = 111
# An RTP audio packet fits one Ethernet frame; a bigger datagram is not caller audio. CPython's
# selector loop would otherwise read every datagram into a 256 KiB buffer, two page faults each.
DEFAULT_MAX_DATAGRAM_BYTES = 2048
# RFC 3550 §5.1: V=2, no padding, no extension, no CSRC | M(1) PT(7) | sequence | timestamp | SSRC.
_RTP_HEADER = struct.Struct("!BBHII")
_FIRST_OCTET = RTP_VERSION << 6
_MARKER_BIT = 0x80
_SEQUENCE_MASK = 0xFFFF
_TIMESTAMP_MASK = 0xFFFFFFFF
# RFC 3551 §4.1: the first packet after a silence in which nothing was sent carries the marker.
# A pacer hiccup shorter than this is jitter, not a silence.
_SEND_GAP_NS = 60_000_000
_NS_PER_S = 1_000_000_000


class DropReason(StrEnum):
    """Why a received datagram did not reach the sink."""

    MALFORMED = "malformed"
    WRONG_SOURCE = "wrong_source"
    WRONG_PAYLOAD_TYPE = "wrong_payload_type"
    RTCP = "rtcp"
    AFTER_END = "after_end"


class EndReason(StrEnum):
    """Why the transport ended the caller leg on its own."""

    RTCP_BYE = "rtcp_bye"
    MEDIA_TIMEOUT = "media_timeout"


@dataclass(frozen=True, slots=True)
class RtpTransportStats:
    """Counters of one plain-RTP leg; `packets_in` counts only packets handed to the sink."""

    port: int | None
    peer: tuple[Any, ...] | None
    packets_in: int
    bytes_in: int
    packets_out: int
    bytes_out: int
    dropped_in: Mapping[DropReason, int]
    unsent: int  # send_audio calls while no peer was known, or after close
    send_errors: int  # ICMP errors the socket reported (e.g. the peer's port is closed)


class RtpCallerTransport(asyncio.DatagramProtocol):
    """A caller leg over plain RTP (a `CallerLink`), and the asyncio protocol of its own socket."""

    def __init__(
        self,
        *,
        codec: Codec,
        sink: CallerMediaSink,
        host: str,
        ports: PortAllocator,
        media_timeout_s: float = 30.0,
        expected_remote: tuple[str, int] | None = None,
        payload_type: int | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        max_datagram_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
    ) -> None:
        self.codec = codec
        self.payload_type = _default_payload_type(codec) if payload_type is None else payload_type
        self.host = host
        self.media_timeout_s = media_timeout_s
        self.max_datagram_bytes = max_datagram_bytes
        # RFC 3550 §5.1: SSRC, first sequence number and first timestamp are random.
        self.ssrc = secrets.randbits(32)
        self.port: int | None = None
        self._sink = sink
        self._ports = ports
        self._clock = clock
        self._expected = expected_remote
        self._peer: tuple[Any, ...] | None = None
        self._endpoint: asyncio.DatagramTransport | None = None
        self._connection_lost: asyncio.Future[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._ended = False
        self._closed = False
        self._last_valid_ns = 0
        self._last_ssrc: int | None = None
        self._sequence = secrets.randbits(16)
        self._timestamp = secrets.randbits(32)
        self._next_send_due_ns: int | None = None
        self._packets_in = 0
        self._bytes_in = 0
        self._packets_out = 0
        self._bytes_out = 0
        self._unsent = 0
        self._send_errors = 0
        self._dropped = dict.fromkeys(DropReason, 0)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> int:
        """Bind a port of the range (skipping ones another process holds) and start listening."""
        if self._endpoint is not None or self._closed:
            raise CallStateError("the RTP transport was already started")
        loop = asyncio.get_running_loop()
        taken_elsewhere: list[int] = []
        try:
            while True:
                port = self._ports.allocate()
                try:
                    endpoint, _ = await loop.create_datagram_endpoint(
                        lambda: self, local_addr=(self.host, port)
                    )
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        self._ports.release(port)
                        raise
                    # Held until the search ends, so the allocator hands out another port.
                    taken_elsewhere.append(port)
                    continue
                break
        finally:
            for busy_port in taken_elsewhere:
                self._ports.release(busy_port)
        if taken_elsewhere:
            log.warning("rtp.ports_busy", ports=taken_elsewhere)
        self._endpoint = endpoint
        self.port = port
        self._lower_read_size(endpoint)
        self._connection_lost = loop.create_future()
        self._last_valid_ns = self._clock()
        self._watchdog = asyncio.create_task(self._watch_media(), name=f"rtp.watchdog.{port}")
        log.info("rtp.leg_started", port=port, codec=self.codec.value, pt=self.payload_type)
        return port

    async def close(self) -> None:
        """Say BYE to the peer (if known), close the socket and give the port back; idempotent."""
        if self._closed:
            return
        self._closed = True
        endpoint = self._endpoint
        if endpoint is None:
            return
        # The socket stops reading here, before any await: nothing reaches the sink after close().
        destination = self._destination()
        if destination is not None:
            endpoint.sendto(build_rtcp_bye([self.ssrc]), destination)
        endpoint.close()
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        if self._connection_lost is not None:
            # The socket closes on a later loop iteration; the port is free only after that.
            await self._connection_lost
        if self.port is not None:
            self._ports.release(self.port)
        log.info("rtp.leg_closed", port=self.port, packets_in=self._packets_in)

    @property
    def peer(self) -> tuple[Any, ...] | None:
        """The caller's address: learnt from its first valid RTP packet."""
        return self._peer

    @property
    def stats(self) -> RtpTransportStats:
        """A snapshot of the leg's counters."""
        return RtpTransportStats(
            port=self.port,
            peer=self._peer,
            packets_in=self._packets_in,
            bytes_in=self._bytes_in,
            packets_out=self._packets_out,
            bytes_out=self._bytes_out,
            dropped_in=dict(self._dropped),
            unsent=self._unsent,
            send_errors=self._send_errors,
        )

    # -- receive (asyncio protocol callbacks) ---------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """Deliver one valid RTP packet of the peer to the sink; count anything else."""
        arrival_ns = self._clock()
        if addr != self._peer and not self._may_be_peer(addr):
            self._dropped[DropReason.WRONG_SOURCE] += 1
            return
        if self._ended:
            self._dropped[DropReason.AFTER_END] += 1
            return
        if len(data) > self.max_datagram_bytes:  # cut short by the read size
            self._dropped[DropReason.MALFORMED] += 1
            return
        if is_rtcp(data):
            self._on_rtcp(data)
            return
        try:
            header = parse_rtp_header(data)
        except RtpParseError:
            self._dropped[DropReason.MALFORMED] += 1
            return
        if header.payload_type != self.payload_type:
            self._dropped[DropReason.WRONG_PAYLOAD_TYPE] += 1
            return
        if self._peer is None:
            self._latch_peer(addr)
        self._last_valid_ns = arrival_ns
        self._last_ssrc = header.ssrc
        self._packets_in += 1
        self._bytes_in += len(data)
        self._sink.on_caller_packet(
            arrival_ns=arrival_ns,
            rtp_timestamp=header.timestamp,
            ssrc=header.ssrc,
            sequence=header.sequence,
            payload_type=header.payload_type,
            marker=header.marker,
            payload=data[header.payload_offset : header.payload_end],
        )

    def error_received(self, exc: Exception) -> None:
        """Count socket errors (ICMP port unreachable after the peer left); the leg goes on."""
        self._send_errors += 1

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is closed: the port may be handed out again."""
        if self._connection_lost is not None and not self._connection_lost.done():
            self._connection_lost.set_result(None)

    # -- send -----------------------------------------------------------------------------------

    def send_audio(self, payload: bytes, duration: int) -> None:
        """Send one encoded frame to the peer now; `duration` is in RTP clock units."""
        destination = self._destination()
        if destination is None or self._endpoint is None or self._closed:
            self._unsent += 1
            return
        now_ns = self._clock()
        second_octet = self.payload_type
        due_ns = self._next_send_due_ns
        if due_ns is None:
            second_octet |= _MARKER_BIT
        elif now_ns - due_ns > _SEND_GAP_NS:
            second_octet |= _MARKER_BIT
            # RFC 3550 §5.1: the sampling clock kept running through the silence.
            silence = (now_ns - due_ns) * self.codec.clock_rate_hz // _NS_PER_S
            self._timestamp = (self._timestamp + silence) & _TIMESTAMP_MASK
        packet = (
            _RTP_HEADER.pack(_FIRST_OCTET, second_octet, self._sequence, self._timestamp, self.ssrc)
            + payload
        )
        self._endpoint.sendto(packet, destination)
        self._next_send_due_ns = now_ns + duration * _NS_PER_S // self.codec.clock_rate_hz
        self._sequence = (self._sequence + 1) & _SEQUENCE_MASK
        self._timestamp = (self._timestamp + duration) & _TIMESTAMP_MASK
        self._packets_out += 1
        self._bytes_out += len(packet)

    # -- internals ------------------------------------------------------------------------------

    def _may_be_peer(self, addr: tuple[Any, ...]) -> bool:
        """Whether a datagram from a source other than the latched peer may come from the peer."""
        if self._peer is not None:
            return False
        # IPv6 sources carry flow info and scope id too: the expectation names host and port.
        return self._expected is None or addr[:2] == self._expected

    def _latch_peer(self, addr: tuple[Any, ...]) -> None:
        """Symmetric RTP (RFC 4961): only this source is heard, and replies go to it."""
        self._peer = addr
        log.info("rtp.peer_latched", port=self.port, peer=f"{addr[0]}:{addr[1]}")

    def _destination(self) -> tuple[Any, ...] | None:
        """Where to send: the latched peer, or the expected one before its first packet."""
        return self._peer if self._peer is not None else self._expected

    def _on_rtcp(self, data: bytes) -> None:
        """Count an RTCP packet of the peer; a BYE for the source being heard ends the leg."""
        try:
            packets = parse_rtcp_compound(data)
        except RtpParseError:
            self._dropped[DropReason.MALFORMED] += 1
            return
        self._dropped[DropReason.RTCP] += 1
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
        self._sink.on_caller_ended(reason.value)

    async def _watch_media(self) -> None:
        """End the leg after `media_timeout_s` without a valid packet; wakes about once a period."""
        timeout_ns = int(self.media_timeout_s * _NS_PER_S)
        while not self._ended:
            remaining_ns = self._last_valid_ns + timeout_ns - self._clock()
            if remaining_ns <= 0:
                self._end(EndReason.MEDIA_TIMEOUT)
                return
            await asyncio.sleep(remaining_ns / _NS_PER_S)

    def _lower_read_size(self, endpoint: asyncio.DatagramTransport) -> None:
        """Make CPython's selector transport read datagrams into a small buffer, not 256 KiB."""
        # `max_size` is the per-recvfrom read size of asyncio.selector_events'
        # _SelectorDatagramTransport (a class attribute since Python 3.4). uvloop has no such
        # attribute and needs none. One byte more than accepted tells a cut-short datagram.
        if isinstance(getattr(type(endpoint), "max_size", None), int):
            setattr(endpoint, "max_size", self.max_datagram_bytes + 1)  # noqa: B010 - not in stubs


def _default_payload_type(codec: Codec) -> int:
    """The codec's static payload type (RFC 3551 table 4), or Opus' customary dynamic one."""
    static = codec.static_payload_type
    return OPUS_DYNAMIC_PAYLOAD_TYPE if static is None else static
