"""RTP packets (RFC 3550 §5.1): parsing, building and a fast header-only parser."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from mediaserver.errors import RtpParseError

# RFC 3550 §5.1: V(2) P(1) X(1) CC(4) | M(1) PT(7) | sequence(16) | timestamp(32) | SSRC(32).
_FIXED_HEADER = struct.Struct("!BBHII")
FIXED_HEADER_SIZE = _FIXED_HEADER.size
RTP_VERSION = 2
_VERSION_SHIFT = 6
_PADDING_BIT = 0x20
_EXTENSION_BIT = 0x10
_CSRC_COUNT_MASK = 0x0F
_MARKER_BIT = 0x80
_PAYLOAD_TYPE_MASK = 0x7F
_CSRC_SIZE = 4
MAX_CSRC_COUNT = 15
# RFC 3550 §5.3.1: a 16-bit profile-defined field, then the extension length in 32-bit words.
_EXTENSION_HEADER = struct.Struct("!HH")
_EXTENSION_WORD_SIZE = 4
MAX_EXTENSION_SIZE = 0xFFFF * _EXTENSION_WORD_SIZE
# RFC 3550 §5.1: the last padding octet counts the padding octets, itself included.
MAX_PADDING_SIZE = 0xFF
# RFC 5761 §4: RTCP packet types 192-223 occupy the second octet where RTP keeps M and PT, so a
# multiplexed stream must avoid RTP payload types 64-95 and is split on that octet.
_RTCP_SECOND_OCTET_MIN = 192
_RTCP_SECOND_OCTET_MAX = 223


_new_tuple = tuple.__new__


class RtpHeader(NamedTuple):
    """The RTP header fields the live ingest needs, with the payload's bounds in the datagram."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool
    payload_offset: int
    payload_end: int


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet (version 2); padding octets other than the count are not kept."""

    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    csrc: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension: bytes = b""
    payload: bytes = b""
    padding_size: int = 0

    def __post_init__(self) -> None:
        """Reject field values that no RTP header can carry."""
        if not 0 <= self.payload_type <= _PAYLOAD_TYPE_MASK:
            raise RtpParseError(f"RTP payload type {self.payload_type} is outside 0-127")
        if not 0 <= self.sequence <= 0xFFFF:
            raise RtpParseError(f"RTP sequence number {self.sequence} is outside 0-65535")
        if not 0 <= self.timestamp <= 0xFFFFFFFF:
            raise RtpParseError(f"RTP timestamp {self.timestamp} is outside 32 bits")
        if not 0 <= self.ssrc <= 0xFFFFFFFF:
            raise RtpParseError(f"RTP SSRC {self.ssrc} is outside 32 bits")
        if len(self.csrc) > MAX_CSRC_COUNT:
            raise RtpParseError(f"RTP packet has {len(self.csrc)} CSRCs, at most 15 fit")
        if any(not 0 <= csrc <= 0xFFFFFFFF for csrc in self.csrc):
            raise RtpParseError("RTP CSRC is outside 32 bits")
        if self.extension_profile is None:
            if self.extension:
                raise RtpParseError("RTP header extension data needs an extension profile")
        else:
            if not 0 <= self.extension_profile <= 0xFFFF:
                raise RtpParseError(
                    f"RTP extension profile {self.extension_profile} is outside 16 bits"
                )
            if len(self.extension) % _EXTENSION_WORD_SIZE:
                raise RtpParseError(
                    f"RTP header extension of {len(self.extension)} bytes "
                    "is not a whole number of 32-bit words"
                )
            if len(self.extension) > MAX_EXTENSION_SIZE:
                raise RtpParseError(
                    f"RTP header extension of {len(self.extension)} bytes is too long"
                )
        if not 0 <= self.padding_size <= MAX_PADDING_SIZE:
            raise RtpParseError(f"RTP padding size {self.padding_size} is outside 0-255")

    def __bytes__(self) -> bytes:
        """Serialize the packet; see `build_rtp_packet`."""
        return build_rtp_packet(self)


def parse_rtp_header(data: bytes) -> RtpHeader:
    """Validate an RTP packet and return its header fields without copying the payload."""
    size = len(data)
    if size < FIXED_HEADER_SIZE:
        raise RtpParseError(
            f"RTP packet is {size} bytes, shorter than the {FIXED_HEADER_SIZE}-byte fixed header"
        )
    first, second, sequence, timestamp, ssrc = _FIXED_HEADER.unpack_from(data)
    if first >> _VERSION_SHIFT != RTP_VERSION:
        raise RtpParseError(f"RTP packet has version {first >> _VERSION_SHIFT}, expected 2")
    offset = FIXED_HEADER_SIZE + _CSRC_SIZE * (first & _CSRC_COUNT_MASK)
    if offset > size:
        raise RtpParseError("RTP packet has truncated CSRC list")
    if first & _EXTENSION_BIT:
        if offset + _EXTENSION_HEADER.size > size:
            raise RtpParseError("RTP packet has truncated header extension header")
        # The length is in 32-bit words and excludes the 4-byte extension header (RFC 3550 §5.3.1).
        extension_words = (data[offset + 2] << 8) | data[offset + 3]
        offset += _EXTENSION_HEADER.size + _EXTENSION_WORD_SIZE * extension_words
        if offset > size:
            raise RtpParseError("RTP packet has truncated header extension data")
    end = size
    if first & _PADDING_BIT:
        padding_size = data[-1]
        if padding_size == 0:
            raise RtpParseError("RTP packet has padding bit set but a padding count of zero")
        end -= padding_size
        if end < offset:
            raise RtpParseError(
                f"RTP packet padding count {padding_size} exceeds the "
                f"{size - offset} bytes after the header"
            )
    # tuple.__new__ skips the NamedTuple's Python-level __new__, a third of the time per packet.
    return _new_tuple(
        RtpHeader,
        (
            second & _PAYLOAD_TYPE_MASK,
            sequence,
            timestamp,
            ssrc,
            bool(second & _MARKER_BIT),
            offset,
            end,
        ),
    )


def parse_rtp_packet(data: bytes) -> RtpPacket:
    """Parse an RTP packet (RFC 3550 §5.1, header extension §5.3.1)."""
    header = parse_rtp_header(data)
    first = data[0]
    csrc_count = first & _CSRC_COUNT_MASK
    csrc = struct.unpack_from(f"!{csrc_count}I", data, FIXED_HEADER_SIZE)
    extension_profile: int | None = None
    extension = b""
    if first & _EXTENSION_BIT:
        extension_start = FIXED_HEADER_SIZE + _CSRC_SIZE * csrc_count
        extension_profile, _ = _EXTENSION_HEADER.unpack_from(data, extension_start)
        extension = bytes(data[extension_start + _EXTENSION_HEADER.size : header.payload_offset])
    return RtpPacket(
        marker=header.marker,
        payload_type=header.payload_type,
        sequence=header.sequence,
        timestamp=header.timestamp,
        ssrc=header.ssrc,
        csrc=csrc,
        extension_profile=extension_profile,
        extension=extension,
        payload=bytes(data[header.payload_offset : header.payload_end]),
        padding_size=len(data) - header.payload_end,
    )


def build_rtp_packet(packet: RtpPacket) -> bytes:
    """Serialize an RTP packet; padding is zero octets followed by the count (RFC 3550 §5.1)."""
    has_extension = packet.extension_profile is not None
    first = (
        (RTP_VERSION << _VERSION_SHIFT)
        | (_PADDING_BIT if packet.padding_size else 0)
        | (_EXTENSION_BIT if has_extension else 0)
        | len(packet.csrc)
    )
    second = (_MARKER_BIT if packet.marker else 0) | packet.payload_type
    parts = [
        _FIXED_HEADER.pack(first, second, packet.sequence, packet.timestamp, packet.ssrc),
        struct.pack(f"!{len(packet.csrc)}I", *packet.csrc),
    ]
    if packet.extension_profile is not None:
        extension_words = len(packet.extension) // _EXTENSION_WORD_SIZE
        parts.append(_EXTENSION_HEADER.pack(packet.extension_profile, extension_words))
        parts.append(packet.extension)
    parts.append(packet.payload)
    if packet.padding_size:
        parts.append(bytes(packet.padding_size - 1))
        parts.append(bytes((packet.padding_size,)))
    return b"".join(parts)


def is_rtcp(data: bytes) -> bool:
    """Tell RTCP from RTP on a multiplexed port by the second octet (RFC 5761 §4)."""
    return len(data) >= 2 and _RTCP_SECOND_OCTET_MIN <= data[1] <= _RTCP_SECOND_OCTET_MAX
