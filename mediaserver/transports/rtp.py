"""The plain-RTP caller leg: one UDP port, symmetric RTP, RTCP multiplexed on the same port."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import structlog

from mediaserver.clock import Clock, SystemClock
from mediaserver.errors import CallStateError, RtpParseError
from mediaserver.recording.call import EndReason
from mediaserver.recording.channel import Codec
from mediaserver.rtp.media_packet import MediaPacket
from mediaserver.rtp.packet import RTP_VERSION, is_rtcp, parse_rtp_header
from mediaserver.rtp.rtcp import RtcpBye, build_rtcp_bye, parse_rtcp_compound
from mediaserver.transports.leg_payload_types import LegPayloadTypes
from mediaserver.transports.link import CallerMediaSink
from mediaserver.transports.peer_latch import PeerLatch
from mediaserver.transports.port_allocator import PortAllocator
from mediaserver.transports.udp_port import UdpPort

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
# RFC 4961 §4 has a symmetric-RTP endpoint follow its peer; a NAT that rebinds moves the peer to
# a new source port. The old source must be silent this long before a new one takes over.
DEFAULT_RELATCH_AFTER_S = 2.0


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
        self._types = LegPayloadTypes(
            audio=_default_payload_type(codec) if payload_type is None else payload_type,
            dtmf=dtmf_payload_type,
            clock_rate_hz=codec.clock_rate_hz,
        )
        self.payload_type = self._types.audio  # negotiated: the caller's and ours
        self.host = host
        self.media_timeout_s = media_timeout_s
        self._sink = sink
        self._clock: Clock = clock or SystemClock()
        self._udp = UdpPort(
            host=host,
            ports=ports,
            on_datagram=self.handle_datagram,
            clock=self._clock,
            max_datagram_bytes=max_datagram_bytes,
        )
        self._latch = PeerLatch(
            expected=expected_remote,
            offered=offered_remote,
            relatch_after_ns=int(relatch_after_s * _NS_PER_S),
            relatch_any_source=relatch_any_source,
        )
        self._watchdog: asyncio.Task[None] | None = None
        self._ended = False
        self._closed = False
        self._sent_ssrc: int | None = None
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.bytes_out = 0
        self.rtcp_in = 0
        self.unsent = 0  # send_audio calls while no peer was known, or after close
        self._dropped = dict.fromkeys(DropReason, 0)

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        """The local port, once started."""
        return self._udp.port

    @property
    def dtmf_payload_type(self) -> int | None:
        """The telephone-event payload type negotiated, if any."""
        return self._types.dtmf

    async def start(self) -> int:
        """Bind a port of the range (skipping ones another process holds) and start reading."""
        if self._closed or self._udp.port is not None:
            raise CallStateError("the RTP transport was already started")
        port = self._udp.open()
        self._latch.port = port
        self._latch.last_valid_ns = self._clock.monotonic_ns()
        self._watchdog = asyncio.create_task(self._watch_media(), name=f"rtp.watchdog.{port}")
        log.info(
            "rtp.leg_started",
            port=port,
            codec=self.codec.value,
            pt=self.payload_type,
            dtmf_pt=self.dtmf_payload_type,
        )
        return port

    async def close(self) -> None:
        """Say BYE to the peer (if known), close the socket and give the port back; idempotent."""
        if self._closed:
            return
        self._closed = True
        destination = self._latch.destination
        if destination is not None and self._sent_ssrc is not None:
            self._udp.send(build_rtcp_bye([self._sent_ssrc]), destination)
        # Before any await: nothing reaches the sink after close().
        self._udp.close()
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        log.info("rtp.leg_closed", port=self.port, packets_in=self.packets_in)

    @property
    def can_send(self) -> bool:
        """Whether the caller's address is known (latched, or given) and the leg is open."""
        return self._latch.destination is not None and self._udp.is_open and not self._closed

    @property
    def peer(self) -> tuple[Any, ...] | None:
        """The caller's address: learnt from its first valid RTP packet."""
        return self._latch.peer

    def describe(self) -> dict[str, Any]:
        """The leg's counters and addresses, for the API."""
        peer = self._latch.peer
        return {
            "transport": "rtp",
            "port": self.port,
            "peer": None if peer is None else f"{peer[0]}:{peer[1]}",
            "local": None if self.port is None else f"{self.host}:{self.port}",
            "payload_type": self.payload_type,
            "dtmf_payload_type": self.dtmf_payload_type,
            "kernel_timestamps": self._udp.kernel_timestamps,
            "packets_in": self.packets_in,
            "dtmf_packets_in": self._types.dtmf_packets_in,
            "relatches": self._latch.relatches,
            "unexpected_payload_types": {
                str(pt): count for pt, count in sorted(self._types.unexpected.items())
            },
            "bytes_in": self.bytes_in,
            "packets_out": self.packets_out,
            "bytes_out": self.bytes_out,
            "rtcp_in": self.rtcp_in,
            "unsent": self.unsent,
            "send_errors": self._udp.errors,
            "dropped_in": {reason.value: count for reason, count in self._all_drops().items()},
        }

    def drop_counts(self) -> Mapping[str, int]:
        """Datagrams dropped before the sink, by reason (kernel drops included)."""
        return {reason.value: count for reason, count in self._all_drops().items() if count}

    def _all_drops(self) -> dict[DropReason, int]:
        """The leg's own drop counts and its port's."""
        counts = dict(self._dropped)
        counts[DropReason.MALFORMED] += self._udp.truncated + self._types.malformed_events
        counts[DropReason.WRONG_PAYLOAD_TYPE] += sum(self._types.unexpected.values())
        counts[DropReason.KERNEL_RECEIVE_BUFFER] += self._udp.kernel_drops
        return counts

    # -- receive --------------------------------------------------------------------------------

    def handle_datagram(self, data: bytes, addr: tuple[Any, ...], arrival_ns: int) -> None:
        """One datagram as read from the socket: valid RTP of the peer to the sink, else counted."""
        latch = self._latch
        types = self._types
        if addr != latch.peer and not latch.may_be_peer(data, addr, arrival_ns, types.accepted):
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
        if payload_type == types.audio:
            packet = MediaPacket(
                arrival_ns,
                header.timestamp,
                header.sequence,
                header.ssrc,
                payload_type,
                header.marker,
                data[header.payload_offset : header.payload_end],
            )
        elif payload_type == types.dtmf:
            packet = None
        else:
            types.note_unexpected(payload_type, self.port)
            return
        if addr != latch.peer:
            latch.latch(addr)
        latch.heard(arrival_ns, header.ssrc)
        self.packets_in += 1
        self.bytes_in += len(data)
        if packet is not None:
            self._sink.on_caller_packet(packet)
            return
        payload = data[header.payload_offset : header.payload_end]
        for digit in types.telephone_event(header.timestamp, header.marker, payload):
            self._sink.on_caller_dtmf(digit, header.ssrc, arrival_ns)

    # -- send -----------------------------------------------------------------------------------

    def send_audio(self, packet: MediaPacket) -> None:
        """Send one agent packet now with its numbers, our SSRC and the leg's payload type."""
        destination = self._latch.destination
        if destination is None or self._closed:
            self.unsent += 1
            return
        second_octet = self.payload_type | (_MARKER_BIT if packet.marker else 0)
        datagram = (
            _RTP_HEADER.pack(
                _FIRST_OCTET, second_octet, packet.sequence, packet.rtp_timestamp, packet.ssrc
            )
            + packet.payload
        )
        if not self._udp.send(datagram, destination):
            return
        sent_ns = self._clock.monotonic_ns()
        self._sent_ssrc = packet.ssrc
        self.packets_out += 1
        self.bytes_out += len(datagram)
        self._sink.on_audio_sent(
            MediaPacket(
                sent_ns,
                packet.rtp_timestamp,
                packet.sequence,
                packet.ssrc,
                self.payload_type,
                packet.marker,
                packet.payload,
            )
        )

    # -- internals ------------------------------------------------------------------------------

    def _on_rtcp(self, data: bytes) -> None:
        """Count an RTCP packet of the peer; a BYE for the source being heard ends the leg."""
        try:
            packets = parse_rtcp_compound(data)
        except RtpParseError:
            self._dropped[DropReason.MALFORMED] += 1
            return
        self.rtcp_in += 1
        if not self._latch.anyone_known:
            return  # nobody is the peer yet: a BYE from anywhere must not end the call
        for packet in packets:
            # A bridge that changes SSRC may say BYE for the old one and keep talking.
            last_ssrc = self._latch.last_ssrc
            if isinstance(packet, RtcpBye) and (last_ssrc is None or last_ssrc in packet.ssrcs):
                self._end(EndReason.RTCP_BYE)
                return

    def _end(self, reason: EndReason) -> None:
        """Tell the sink the leg is over, exactly once."""
        if self._ended or self._closed:
            return
        self._ended = True
        log.info("rtp.leg_ended", port=self.port, reason=reason.value)
        for digit in self._types.flush():  # a digit whose end packets never came
            self._sink.on_caller_dtmf(digit, self._latch.last_ssrc or 0, self._latch.last_valid_ns)
        self._sink.on_caller_ended(reason)

    async def _watch_media(self) -> None:
        """End the leg after `media_timeout_s` without a valid packet; wakes about once a period."""
        timeout_ns = int(self.media_timeout_s * _NS_PER_S)
        while not self._ended:
            remaining_ns = self._latch.last_valid_ns + timeout_ns - self._clock.monotonic_ns()
            if remaining_ns <= 0:
                self._end(EndReason.MEDIA_TIMEOUT)
                return
            await self._clock.sleep(remaining_ns / _NS_PER_S)


def _default_payload_type(codec: Codec) -> int:
    """The codec's static payload type (RFC 3551 table 4), or Opus' customary dynamic one."""
    static = codec.static_payload_type
    return OPUS_DYNAMIC_PAYLOAD_TYPE if static is None else static
