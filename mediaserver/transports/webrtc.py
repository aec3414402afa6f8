"""The WebRTC caller leg (aiortc): answers a WHIP offer, taps caller RTP, sends agent Opus."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import aioice.ice
import av
import structlog
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import OperationError
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcicetransport import parse_stun_turn_uri
from aiortc.rtp import RtpPacket
from aiortc.sdp import candidate_from_sdp

from mediaserver.clock import Clock, SystemClock
from mediaserver.errors import (
    MalformedSdpError,
    SettingsError,
    UnsupportedSdpError,
    WebRtcSetupError,
)
from mediaserver.excerpt import excerpt
from mediaserver.recording.call import EndReason
from mediaserver.recording.channel import Codec
from mediaserver.rtp.media_packet import MediaPacket
from mediaserver.transports.link import CallerMediaSink
from mediaserver.transports.rtp_tap import AiortcReceivePath, tap_receiver

log = structlog.get_logger(__name__)

# RFC 7587 §4.1: Opus RTP timestamps count 48 kHz samples whatever the audio bandwidth.
OPUS_CLOCK_RATE_HZ = 48000
_OPUS_TIME_BASE = Fraction(1, OPUS_CLOCK_RATE_HZ)
# Packets the pacer handed over that aiortc's sender has not taken yet. It takes each one at
# once, so more than a few means its task is starved; the oldest is then dropped, unsent and
# unrecorded, rather than played late.
DEFAULT_MAX_QUEUED_PACKETS = 3
# An offer or trickle fragment carries a handful of candidates per network interface; aiortc
# checks each new one against all it has, so thousands would stall the event loop for seconds.
MAX_ICE_CANDIDATES = 64


@dataclass(frozen=True, slots=True)
class IceServer:
    """A STUN or TURN server (W3C RTCIceServer), checked when it is made."""

    url: str
    username: str | None = None
    credential: str | None = None

    def __post_init__(self) -> None:
        try:
            parse_stun_turn_uri(self.url)
        except ValueError as error:
            raise SettingsError(f"ICE server URL {self.url!r} is not valid: {error}") from None


@dataclass(frozen=True, slots=True)
class OfferedAudio:
    """What the answer needs from the offer's first audio m-line."""

    mid: str | None
    opus_payload_type: int


def parse_offered_audio(offer_sdp: str) -> OfferedAudio:
    """Find the first audio m-line of an SDP offer and the payload type it gives Opus."""
    lines = [line for line in offer_sdp.replace("\r\n", "\n").split("\n") if line]
    check_candidate_count(lines)
    # RFC 8866 §5: a session description starts with its protocol version, always 0.
    if not lines or lines[0] != "v=0":
        raise MalformedSdpError("SDP does not start with v=0")
    audio_lines: list[str] | None = None
    for line in lines:
        if line.startswith("m="):
            if audio_lines is not None:
                break
            # RFC 8866 §5.14: m=<media> <port> <proto> <fmt> ...
            fields = line[2:].split()
            if len(fields) < 4:
                raise MalformedSdpError(
                    f"SDP media line {excerpt(line)} has fewer than four fields"
                )
            if fields[0] == "audio":
                audio_lines = []
        elif audio_lines is not None:
            audio_lines.append(line)
    if audio_lines is None:
        raise UnsupportedSdpError("SDP offer has no audio m-line")
    mid = next((line[len("a=mid:") :] for line in audio_lines if line.startswith("a=mid:")), None)
    opus_payload_type: int | None = None
    for line in audio_lines:
        # RFC 8866 §6.6: a=rtpmap:<payload type> <encoding name>/<clock rate>[/<channels>];
        # RFC 7587 §7: Opus is always opus/48000/2, whatever the audio's channels and rate.
        if not line.startswith("a=rtpmap:"):
            continue
        payload_type, _, encoding = line[len("a=rtpmap:") :].partition(" ")
        if encoding.strip().lower() == "opus/48000/2":
            if not payload_type.isdigit():
                raise MalformedSdpError(f"SDP rtpmap {excerpt(line)} has no numeric payload type")
            opus_payload_type = int(payload_type)
            break
    if opus_payload_type is None:
        raise UnsupportedSdpError("SDP offer's audio m-line does not offer Opus (opus/48000/2)")
    # RFC 8842 §5.1: every DTLS-SRTP offer carries the certificate fingerprint; aiortc would
    # accept the offer without one and fail only in the handshake.
    if not any(line.startswith("a=fingerprint:") for line in lines):
        raise MalformedSdpError("SDP offer has no a=fingerprint")
    return OfferedAudio(mid=mid, opus_payload_type=opus_payload_type)


def check_candidate_count(lines: Sequence[str]) -> None:
    """Refuse SDP with more ICE candidates than any real client sends (RFC 8839 §5.1)."""
    count = sum(1 for line in lines if line.startswith("a=candidate:"))
    if count > MAX_ICE_CANDIDATES:
        raise MalformedSdpError(
            f"SDP has {count} ICE candidates; at most {MAX_ICE_CANDIDATES} are accepted"
        )


def build_passive_answer(answer_sdp: str, offer_sdp: str) -> str:
    """Make the answer take the DTLS server role (a=setup:passive) unless the offer took it."""
    # RFC 5763 §5: an actpass offer lets the answerer pick. As DTLS client aiortc offers only
    # ECDSA cipher suites and fails with RSA peers; as server it works with every client.
    if "a=setup:passive" in offer_sdp:
        return answer_sdp
    return answer_sdp.replace("a=setup:active", "a=setup:passive")


# The host addresses ICE gathers on in the current task; None means aioice's own choice.
_host_addresses: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "ice_host_addresses", default=None
)
_aioice_get_host_addresses = aioice.ice.get_host_addresses


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """aioice's host address lookup, overridden by the addresses set for the current task."""
    configured = _host_addresses.get()
    if configured is None:
        return _aioice_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    wanted_versions = {4} if use_ipv4 else set()
    wanted_versions |= {6} if use_ipv6 else set()
    return [a for a in configured if ipaddress.ip_address(a).version in wanted_versions]


@contextlib.contextmanager
def use_ice_host_addresses(addresses: Sequence[str]) -> Iterator[None]:
    """Within the block, ICE gathering in this task binds host candidates to `addresses` only."""
    # aioice has no parameter for it and leaves 127.0.0.1 out of what it finds; its one lookup
    # function is replaced once, by one that reads a context variable, so other tasks (and an
    # empty list) keep aioice's own behaviour.
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise SettingsError(f"ICE host address {address!r} is not an IP address") from None
    aioice.ice.get_host_addresses = _get_host_addresses
    token = _host_addresses.set(tuple(addresses) if addresses else None)
    try:
        yield
    finally:
        _host_addresses.reset(token)


class OutboundOpusTrack(MediaStreamTrack):
    """The agent's Opus packets, handed to aiortc's sender as the pacer plays them."""

    # aiortc's sender awaits recv() in a loop and packs the `av.Packet` it returns without
    # re-encoding. The track has no clock of its own: the hub's pacer is the only one, and a
    # tick with nothing to play sends nothing (the timestamps still move, as with DTX).

    kind = "audio"

    def __init__(
        self,
        *,
        on_sent: Callable[[MediaPacket], None],
        now_ns: Callable[[], int],
        max_queued_packets: int = DEFAULT_MAX_QUEUED_PACKETS,
    ) -> None:
        super().__init__()
        self._on_sent = on_sent
        self._now_ns = now_ns
        self._max_queued_packets = max_queued_packets
        self._queue: deque[MediaPacket] = deque()
        self._ready: asyncio.Future[None] | None = None
        self._timestamp_origin: int | None = None
        self.packets_out = 0
        self.queue_drops = 0

    def queue_packet(self, packet: MediaPacket) -> None:
        """Hand a packet to the sender; if it has fallen behind, the oldest waiting one goes."""
        if len(self._queue) >= self._max_queued_packets:
            self._queue.popleft()
            self.queue_drops += 1
        self._queue.append(packet)
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    async def recv(self) -> av.Packet[Any]:
        """The next packet the pacer played; reported as sent as aiortc takes it."""
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready = asyncio.get_running_loop().create_future()
            try:
                await self._ready
            finally:
                self._ready = None
        if self.readyState != "live":
            raise MediaStreamError
        packet = self._queue.popleft()
        if self._timestamp_origin is None:
            self._timestamp_origin = packet.rtp_timestamp
        frame = av.Packet(packet.payload)
        # aiortc adds its own random origin and numbers packets itself, one per frame: the
        # journal keeps the pacer's numbers, which differ from the wire's by constants only.
        frame.pts = (packet.rtp_timestamp - self._timestamp_origin) % (1 << 32)
        frame.time_base = _OPUS_TIME_BASE
        self.packets_out += 1
        self._on_sent(packet._replace(arrival_ns=self._now_ns()))
        return frame

    def stop(self) -> None:
        """End the track; a sender waiting in recv() is released."""
        super().stop()
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)


class WebRtcCallerTransport:
    """A caller connected over WebRTC: Opus both ways, inbound packets handed on undecoded."""

    codec: Codec = Codec.OPUS

    def __init__(
        self,
        pc: RTCPeerConnection,
        *,
        sink: CallerMediaSink,
        opus_payload_type: int,
        clock: Clock,
        max_queued_packets: int = DEFAULT_MAX_QUEUED_PACKETS,
    ) -> None:
        self._pc = pc
        self._sink = sink
        self.payload_type = opus_payload_type
        self._clock = clock
        self.track = OutboundOpusTrack(
            on_sent=sink.on_audio_sent,
            now_ns=clock.monotonic_ns,
            max_queued_packets=max_queued_packets,
        )
        self.packets_in = 0
        self.foreign_packets_in = 0
        self._ended = False
        self._closing = False
        pc.add_listener("connectionstatechange", self._on_connection_state_change)

    @classmethod
    async def answer(
        cls,
        offer_sdp: str,
        *,
        sink: CallerMediaSink,
        ice_servers: Sequence[IceServer | str],
        ice_host_addresses: Sequence[str],
        max_queued_packets: int = DEFAULT_MAX_QUEUED_PACKETS,
        aiortc_receive_path: AiortcReceivePath = AiortcReceivePath.STATISTICS,
        clock: Clock | None = None,
    ) -> tuple[WebRtcCallerTransport, str]:
        """Answer a WHIP offer; return the transport and the answer with all its candidates."""
        # `ice_servers` are IceServers or bare STUN/TURN URLs.
        offered = parse_offered_audio(offer_sdp)
        servers = [s if isinstance(s, IceServer) else IceServer(s) for s in ice_servers]
        configuration = RTCConfiguration(
            iceServers=[
                RTCIceServer(urls=s.url, username=s.username, credential=s.credential)
                for s in servers
            ]
        )
        pc = RTCPeerConnection(configuration)
        try:
            transport = cls(
                pc,
                sink=sink,
                opus_payload_type=offered.opus_payload_type,
                clock=clock or SystemClock(),
                max_queued_packets=max_queued_packets,
            )
            # Created before the offer is applied, so the offer's first audio m-line binds to
            # it and negotiates Opus only.
            transceiver = pc.addTransceiver(transport.track, direction="sendrecv")
            transceiver.setCodecPreferences(_opus_capabilities())
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            except (ValueError, KeyError, IndexError, AssertionError) as error:
                detail = str(error) or "its descriptions do not fit together"
                raise MalformedSdpError(f"SDP offer was rejected: {detail}") from None
            except OperationError as error:
                # aiortc found no codec it shares with the offer's audio m-line.
                raise UnsupportedSdpError(f"SDP offer was rejected: {error}") from None
            _deactivate_other_transceivers(pc, transceiver)
            tap_receiver(transceiver.receiver, transport._on_rtp_packet, aiortc_receive_path)
            answer = await pc.createAnswer()
            passive_sdp = build_passive_answer(answer.sdp, offer_sdp)
            # aiortc gathers every candidate inside setLocalDescription (no trickle).
            with use_ice_host_addresses(ice_host_addresses):
                await pc.setLocalDescription(RTCSessionDescription(sdp=passive_sdp, type="answer"))
            answer_sdp = pc.localDescription.sdp
            if "a=candidate:" not in answer_sdp:
                raise WebRtcSetupError(
                    "ICE gathered no candidates: check the ICE host addresses and servers"
                )
        except BaseException:
            await pc.close()
            raise
        return transport, answer_sdp

    @property
    def can_send(self) -> bool:
        """Whether the peer connection is up, so aiortc's sender takes packets."""
        return self._pc.connectionState == "connected" and not self._closing

    def describe(self) -> dict[str, Any]:
        """The leg's counters, for the API."""
        return {
            "transport": "webrtc",
            "payload_type": self.payload_type,
            "connection_state": self._pc.connectionState,
            "packets_in": self.packets_in,
            "foreign_packets_in": self.foreign_packets_in,
            "packets_out": self.track.packets_out,
            "queue_drops": self.track.queue_drops,
        }

    def drop_counts(self) -> Mapping[str, int]:
        """Packets dropped at this leg, by reason."""
        counts = {
            "wrong_payload_type": self.foreign_packets_in,
            "send_queue_overflow": self.track.queue_drops,
        }
        return {reason: count for reason, count in counts.items() if count}

    def send_audio(self, packet: MediaPacket) -> None:
        """Hand one Opus packet to aiortc's sender; it is journalled when the sender takes it."""
        self.track.queue_packet(packet._replace(payload_type=self.payload_type))

    async def add_ice_candidates(self, fragment: str) -> None:
        """Add the remote candidates of an RFC 8840 SDP fragment (WHIP PATCH trickle)."""
        lines = fragment.replace("\r\n", "\n").split("\n")
        check_candidate_count(lines)
        mid: str | None = None
        remote_ufrags = _ice_ufrags(self._pc.remoteDescription.sdp)
        for line in lines:
            if line.startswith("a=ice-ufrag:") and line[len("a=ice-ufrag:") :] not in remote_ufrags:
                # RFC 8840 §4.4: new ICE credentials in a fragment ask for an ICE restart.
                raise UnsupportedSdpError("ICE restart is not supported")
            if line.startswith("a=mid:"):
                mid = line[len("a=mid:") :]
            elif line.startswith("a=candidate:"):
                try:
                    candidate = candidate_from_sdp(line[len("a=candidate:") :])
                except (ValueError, IndexError, AssertionError):
                    raise MalformedSdpError(
                        f"SDP fragment has a bad candidate: {excerpt(line)}"
                    ) from None
                candidate.sdpMid = mid
                candidate.sdpMLineIndex = 0 if mid is None else None
                await self._pc.addIceCandidate(candidate)
            elif line == "a=end-of-candidates":
                # RFC 8840 §4.1: no more candidates will come for this generation.
                await self._pc.addIceCandidate(None)

    async def close(self) -> None:
        """Close the peer connection and its sockets; calling it again does nothing."""
        # The owner asked for the end, so it is not reported back through the sink.
        self._closing = True
        self.track.stop()
        await self._pc.close()

    def _on_rtp_packet(self, packet: RtpPacket) -> None:
        if packet.payload_type != self.payload_type:
            self.foreign_packets_in += 1
            return
        self.packets_in += 1
        self._sink.on_caller_packet(
            MediaPacket(
                self._clock.monotonic_ns(),
                packet.timestamp,
                packet.sequence_number,
                packet.ssrc,
                packet.payload_type,
                bool(packet.marker),
                packet.payload,
            )
        )

    def _on_connection_state_change(self) -> None:
        state = self._pc.connectionState
        if self._ended or self._closing or state not in ("failed", "closed"):
            return
        self._ended = True
        log.info("webrtc.caller_ended", state=state, packets_in=self.packets_in)
        self._sink.on_caller_ended(EndReason.CALLER_HANGUP)


def _opus_capabilities() -> list[RTCRtpCodecCapability]:
    """aiortc's Opus codec capability, the only codec the answer may choose."""
    capabilities = RTCRtpSender.getCapabilities("audio")
    return [c for c in capabilities.codecs if c.mimeType.lower() == "audio/opus"]


def _ice_ufrags(sdp: str) -> set[str]:
    """The ICE username fragments an SDP gives (RFC 8839 §5.4)."""
    prefix = "a=ice-ufrag:"
    return {line[len(prefix) :] for line in sdp.splitlines() if line.startswith(prefix)}


def _deactivate_other_transceivers(pc: RTCPeerConnection, keep: RTCRtpTransceiver) -> None:
    """Answer every other audio or video m-line inactive, so nothing else is received."""
    for transceiver in pc.getTransceivers():
        if transceiver is not keep:
            transceiver.direction = "inactive"
