"""SDP offer/answer for a plain-RTP audio leg (RFC 3264): read the offer, choose, answer."""

# What a telephony bridge (a SIP trunk, a WhatsApp-style gateway, or ffmpeg's own `-sdp_file`)
# offers is read into an AudioOffer: the first audio m-line over plain RTP (RTP/AVP or RTP/AVPF),
# its address and port, its formats with their rtpmap/fmtp, telephone-event, ptime, rtcp-mux and
# direction. `negotiate` picks the codec by the server's preference and the telephone-event
# format at the same clock rate (RFC 4733: events share the RTP clock of the audio they go with,
# 48000 for Opus, 8000 for G.711; an event format at another rate is passed over).
# `build_answer` writes RFC 3264 §6's answer: every offered m-line in order, the chosen one with
# our address and port and the offer's own payload type numbers, the others rejected (port 0).
#
# The leg this describes multiplexes RTCP on its RTP port (RFC 5761 §4 splits them on the
# second octet), so payload types 64-95 cannot be used on it and are passed over.

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from mediaserver.errors import SdpNegotiationError, SdpParseError
from mediaserver.rtp.sdp import (
    Attribute,
    Connection,
    MediaDescription,
    Origin,
    SessionDescription,
)

PLAIN_RTP_PROTOS = frozenset({"RTP/AVP", "RTP/AVPF"})
DEFAULT_PREFERENCES = ("opus", "pcmu", "pcma")
DEFAULT_PTIME_MS = 20
TELEPHONE_EVENT = "telephone-event"
# RFC 4733 §3.2: events 0-15 are the DTMF digits 0-9, *, #, A-D; §7.1.1: no fmtp means 0-15.
DTMF_EVENTS = frozenset(range(16))
ANSWERED_EVENTS = "0-15"
# RFC 5761 §4: with RTCP on the RTP port, these payload types read as RTCP packet types.
_RTCP_CONFLICT_PAYLOAD_TYPES = range(64, 96)
# RFC 3551 §6 table 4: static payload types a=rtpmap may leave out (the audio ones still used).
STATIC_PAYLOAD_TYPES = {
    0: ("pcmu", 8000, 1),
    3: ("gsm", 8000, 1),
    4: ("g723", 8000, 1),
    8: ("pcma", 8000, 1),
    9: ("g722", 8000, 1),
    13: ("cn", 8000, 1),
    18: ("g729", 8000, 1),
}
# What this server takes, as the rtpmap it answers with (RFC 7587 §7: Opus is always
# opus/48000/2, whatever it carries; RFC 3551 §4.5.14: G.711 runs at 8000 Hz, mono).
SUPPORTED_RTPMAPS = {"opus": "opus/48000/2", "pcmu": "PCMU/8000", "pcma": "PCMA/8000"}
_SUPPORTED_CLOCKS = {"opus": (48000, (1, 2)), "pcmu": (8000, (1,)), "pcma": (8000, (1,))}
_RTPMAP = re.compile(r"([0-9]{1,3}) ([^/ ]+)/([0-9]{1,9})(?:/([0-9]{1,2}))?")
_PAYLOAD_TYPE = re.compile(r"[0-9]{1,3}")
_PORT = re.compile(r"[0-9]{1,5}")
_MILLISECONDS = re.compile(r"([0-9]{1,5})(?:\.[0-9]{1,6})?")
_EVENT_RANGE = re.compile(r"([0-9]{1,3})(?:-([0-9]{1,3}))?")
MAX_EVENT_RANGES = 64


class Direction(Enum):
    """A media stream's direction attribute (RFC 8866 §6.7), from its sender's point of view."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @property
    def answer(self) -> Direction:
        """The direction that answers this one (RFC 3264 §6.1)."""
        return _ANSWER_DIRECTIONS[self]


_ANSWER_DIRECTIONS = {
    Direction.SENDRECV: Direction.SENDRECV,
    Direction.SENDONLY: Direction.RECVONLY,
    Direction.RECVONLY: Direction.SENDONLY,
    Direction.INACTIVE: Direction.INACTIVE,
}
_DIRECTION_NAMES = {direction.value: direction for direction in Direction}


@dataclass(frozen=True, slots=True)
class RtpFormat:
    """One payload format an m-line offers: its number, rtpmap and fmtp parameters."""

    payload_type: int
    encoding: str  # lower case: encoding names are case-insensitive (RFC 4855 §3)
    clock_rate_hz: int
    channels: int = 1
    parameters: str | None = None  # the a=fmtp value after the payload type


@dataclass(frozen=True, slots=True)
class AudioOffer:
    """The audio m-line of an offer this server can answer, as plain values."""

    media_index: int  # its position among the offer's m-lines
    proto: str
    address: str
    address_type: str
    port: int
    formats: tuple[RtpFormat, ...]  # in the offer's order (its preference, RFC 3264 §5.1)
    direction: Direction = Direction.SENDRECV
    rtcp_mux: bool = False
    rtcp_port: int | None = None  # a=rtcp (RFC 3605)
    ptime_ms: int | None = None
    maxptime_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Negotiation:
    """What offer and answer agree on: the formats and where the offerer's media goes."""

    media_index: int
    proto: str
    audio: RtpFormat
    telephone_event: RtpFormat | None
    remote_address: str
    remote_port: int
    direction: Direction  # ours, as the answer states it
    rtcp_mux: bool
    ptime_ms: int  # the packet time the offerer asked to receive

    @property
    def codec(self) -> str:
        """The chosen codec's name as the server's settings spell it (opus, pcmu, pcma)."""
        return self.audio.encoding


def read_audio_offer(description: SessionDescription) -> AudioOffer:
    """The first plain-RTP audio m-line with a port; SdpNegotiationError if there is none."""
    for index, media in enumerate(description.media):
        if media.media == "audio" and media.proto in PLAIN_RTP_PROTOS and media.port != 0:
            return _read_media(description, index, media)
    raise SdpNegotiationError(
        "SDP offer has no plain-RTP audio stream (m=audio <port> RTP/AVP <formats>)"
    )


def _read_media(description: SessionDescription, index: int, media: MediaDescription) -> AudioOffer:
    """One audio m-line read in a single pass over its attributes."""
    connection = media.connection or description.connection
    if connection is None:
        raise SdpParseError("SDP offer's audio has no c= line, at media or session level")
    if connection.network_type != "IN" or connection.address_type not in ("IP4", "IP6"):
        raise SdpNegotiationError("SDP offer's audio address is not IN IP4 or IN IP6")
    if "/" in connection.address:
        raise SdpNegotiationError("SDP offer's audio address is multicast, which is not supported")
    offered = set(media.formats)
    rtpmaps: dict[int, tuple[str, int, int]] = {}
    fmtps: dict[int, str] = {}
    direction: Direction | None = None
    rtcp_mux = False
    rtcp_port: int | None = None
    ptime_ms = maxptime_ms = None
    for attribute in media.attributes:
        name, value = attribute.name, attribute.value
        if name == "rtpmap" and value is not None:
            payload_type, rtpmap = _parse_rtpmap(value)
            if str(payload_type) in offered:  # RFC 8866 §6.6: only the m-line's formats count
                rtpmaps.setdefault(payload_type, rtpmap)
        elif name == "fmtp" and value is not None:
            payload_text, _, parameters = value.partition(" ")
            if _PAYLOAD_TYPE.fullmatch(payload_text):
                fmtps.setdefault(int(payload_text), parameters.strip())
        elif name in _DIRECTION_NAMES and value is None:
            direction = _DIRECTION_NAMES[name]
        elif name == "rtcp-mux":
            rtcp_mux = True
        elif name == "rtcp" and value is not None:
            rtcp_port = _parse_rtcp_port(value)
        elif name == "ptime" and value is not None:
            ptime_ms = _parse_milliseconds(value)
        elif name == "maxptime" and value is not None:
            maxptime_ms = _parse_milliseconds(value)
    if direction is None:  # RFC 3264 §5.1: a session-level direction applies to every stream
        direction = next(
            (
                _DIRECTION_NAMES[a.name]
                for a in description.attributes
                if a.name in _DIRECTION_NAMES and a.value is None
            ),
            Direction.SENDRECV,
        )
    formats = []
    for text in media.formats:
        if not _PAYLOAD_TYPE.fullmatch(text) or int(text) > 127:
            raise SdpParseError("SDP offer's audio m-line has a format that is not 0-127")
        payload_type = int(text)
        described = rtpmaps.get(payload_type) or STATIC_PAYLOAD_TYPES.get(payload_type)
        if described is None:
            continue  # a dynamic type without rtpmap describes nothing (RFC 8866 §6.6)
        encoding, clock_rate_hz, channels = described
        formats.append(
            RtpFormat(payload_type, encoding, clock_rate_hz, channels, fmtps.get(payload_type))
        )
    return AudioOffer(
        media_index=index,
        proto=media.proto,
        address=connection.address,
        address_type=connection.address_type,
        port=media.port,
        formats=tuple(formats),
        direction=direction,
        rtcp_mux=rtcp_mux,
        rtcp_port=rtcp_port,
        ptime_ms=ptime_ms,
        maxptime_ms=maxptime_ms,
    )


def _parse_rtpmap(value: str) -> tuple[int, tuple[str, int, int]]:
    """a=rtpmap:<payload type> <encoding name>/<clock rate>[/<channels>] (RFC 8866 §6.6)."""
    match = _RTPMAP.fullmatch(value.strip())
    if match is None or int(match[1]) > 127 or int(match[3]) == 0:
        raise SdpParseError(
            "SDP a=rtpmap is not <payload type 0-127> <encoding>/<clock rate>[/<channels>]"
        )
    channels = int(match[4]) if match[4] else 1
    return int(match[1]), (match[2].lower(), int(match[3]), channels)


def _parse_rtcp_port(value: str) -> int:
    """a=rtcp:<port> [<nettype> <addrtype> <address>] (RFC 3605 §2.1)."""
    port_text = value.split(" ", 1)[0]
    if not _PORT.fullmatch(port_text) or int(port_text) > 0xFFFF:
        raise SdpParseError("SDP a=rtcp port is not 0-65535")
    return int(port_text)


def _parse_milliseconds(value: str) -> int | None:
    """a=ptime / a=maxptime in whole milliseconds; a value that is not a number is a hint lost."""
    match = _MILLISECONDS.fullmatch(value.strip())
    return int(match[1]) if match and int(match[1]) > 0 else None


def parse_event_list(parameters: str | None) -> frozenset[int]:
    """The events a telephone-event fmtp names, e.g. "0-15,66" (RFC 4733 §7.1.1)."""
    if parameters is None or not parameters.strip():
        return DTMF_EVENTS
    ranges = parameters.replace(" ", "").split(",")
    if len(ranges) > MAX_EVENT_RANGES:
        raise SdpParseError(f"SDP telephone-event fmtp lists more than {MAX_EVENT_RANGES} ranges")
    events: set[int] = set()
    for text in ranges:
        match = _EVENT_RANGE.fullmatch(text)
        if match is None:
            raise SdpParseError("SDP telephone-event fmtp is not a list of events such as 0-15")
        first = int(match[1])
        last = int(match[2]) if match[2] else first
        if not first <= last <= 255:
            raise SdpParseError("SDP telephone-event fmtp has a range outside 0-255")
        events.update(range(first, last + 1))
    return frozenset(events)


def _usable(audio_format: RtpFormat) -> bool:
    """True for a codec this server takes, at a payload type its RTP port can carry."""
    accepted = _SUPPORTED_CLOCKS.get(audio_format.encoding)
    if accepted is None or audio_format.payload_type in _RTCP_CONFLICT_PAYLOAD_TYPES:
        return False
    clock_rate_hz, channels = accepted
    return audio_format.clock_rate_hz == clock_rate_hz and audio_format.channels in channels


def negotiate(offer: AudioOffer, preferences: Sequence[str] = DEFAULT_PREFERENCES) -> Negotiation:
    """Choose the codec (our preference first, then the offer's order) and its telephone-event."""
    usable = [f for f in offer.formats if _usable(f)]
    for codec in preferences:
        audio = next((f for f in usable if f.encoding == codec), None)
        if audio is not None:
            break
    else:
        offered = ", ".join(sorted({f"{f.encoding}/{f.clock_rate_hz}" for f in offer.formats}))
        wanted = ", ".join(SUPPORTED_RTPMAPS[codec] for codec in preferences)
        raise SdpNegotiationError(
            f"SDP offer has no codec in common: it offers {offered or 'nothing usable'};"
            f" this server takes {wanted}"
        )
    telephone_event = next(
        (
            f
            for f in offer.formats
            if f.encoding == TELEPHONE_EVENT
            and f.clock_rate_hz == audio.clock_rate_hz
            and f.payload_type not in _RTCP_CONFLICT_PAYLOAD_TYPES
            and parse_event_list(f.parameters) & DTMF_EVENTS
        ),
        None,
    )
    return Negotiation(
        media_index=offer.media_index,
        proto=offer.proto,
        audio=audio,
        telephone_event=telephone_event,
        remote_address=offer.address,
        remote_port=offer.port,
        direction=offer.direction.answer,
        rtcp_mux=offer.rtcp_mux,
        ptime_ms=offer.ptime_ms or DEFAULT_PTIME_MS,
    )


def build_answer(
    offer: SessionDescription,
    negotiation: Negotiation,
    *,
    address: str,
    port: int,
    session_id: int,
    session_version: int = 0,
    ptime_ms: int = DEFAULT_PTIME_MS,
) -> SessionDescription:
    """RFC 3264 §6: the answer naming our address and port; other m-lines rejected (port 0)."""
    address_type = "IP6" if ":" in address else "IP4"
    audio = negotiation.audio
    formats = [str(audio.payload_type)]
    attributes = [Attribute("rtpmap", f"{audio.payload_type} {SUPPORTED_RTPMAPS[audio.encoding]}")]
    event = negotiation.telephone_event
    if event is not None:
        formats.append(str(event.payload_type))
        attributes += [
            Attribute("rtpmap", f"{event.payload_type} {TELEPHONE_EVENT}/{event.clock_rate_hz}"),
            Attribute("fmtp", f"{event.payload_type} {ANSWERED_EVENTS}"),
        ]
    attributes.append(Attribute("ptime", str(ptime_ms)))
    # RFC 5761 §5.1.1: accept rtcp-mux by repeating it; otherwise RFC 3605 names the RTCP port,
    # which is the RTP port all the same.
    attributes.append(
        Attribute("rtcp-mux") if negotiation.rtcp_mux else Attribute("rtcp", f"{port}")
    )
    attributes.append(Attribute(negotiation.direction.value))
    media = []
    for index, offered in enumerate(offer.media):
        if index == negotiation.media_index:
            media.append(
                MediaDescription(
                    "audio", port, negotiation.proto, tuple(formats), attributes=tuple(attributes)
                )
            )
        else:
            media.append(MediaDescription(offered.media, 0, offered.proto, offered.formats))
    return SessionDescription(
        origin=Origin(
            "mediaserver", str(session_id), str(session_version), "IN", address_type, address
        ),
        session_name="-",
        connection=Connection(address, address_type),
        times=(("0", "0"),),
        media=tuple(media),
    )
