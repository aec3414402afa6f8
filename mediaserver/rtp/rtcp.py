"""RTCP compound packets (RFC 3550 §6): sender reports and BYE parsed, the rest kept raw."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from mediaserver.errors import RtpParseError

# RFC 3550 §6.4.1: V(2) P(1) count(5) | packet type(8) | length(16) in 32-bit words minus one.
_COMMON_HEADER = struct.Struct("!BBH")
_WORD_SIZE = 4
RTCP_VERSION = 2
_VERSION_SHIFT = 6
_PADDING_BIT = 0x20
_COUNT_MASK = 0x1F
MAX_COUNT = _COUNT_MASK
# RFC 3550 §6.4.1: sender SSRC, NTP timestamp (64), RTP timestamp, packet count, octet count.
_SENDER_INFO = struct.Struct("!IQIII")
# RFC 3550 §6.4.1: each reception report block is six 32-bit words.
_REPORT_BLOCK_SIZE = 24
_SSRC = struct.Struct("!I")
# RFC 3550 §6.6: the optional reason is a length octet and at most 255 octets of UTF-8 text.
MAX_REASON_SIZE = 0xFF


class RtcpPacketType(IntEnum):
    """RTCP packet types (RFC 3550 §12.1, RFC 4585 §6.1, RFC 3611 §2)."""

    SENDER_REPORT = 200
    RECEIVER_REPORT = 201
    SOURCE_DESCRIPTION = 202
    BYE = 203
    APPLICATION = 204
    TRANSPORT_FEEDBACK = 205
    PAYLOAD_FEEDBACK = 206
    EXTENDED_REPORT = 207


@dataclass(frozen=True, slots=True)
class RtcpSenderReport:
    """A sender report's sender info (RFC 3550 §6.4.1); report blocks are skipped."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int

    @property
    def packet_type(self) -> int:
        """The RTCP packet type, always SR."""
        return RtcpPacketType.SENDER_REPORT


@dataclass(frozen=True, slots=True)
class RtcpBye:
    """A BYE packet (RFC 3550 §6.6): the sources leaving and their optional reason."""

    ssrcs: tuple[int, ...]
    reason: str = ""

    @property
    def packet_type(self) -> int:
        """The RTCP packet type, always BYE."""
        return RtcpPacketType.BYE


@dataclass(frozen=True, slots=True)
class RtcpOther:
    """Any other RTCP packet: its type and its bytes, header included."""

    packet_type: int
    data: bytes


RtcpPacket = RtcpSenderReport | RtcpBye | RtcpOther


def parse_rtcp_compound(data: bytes) -> list[RtcpPacket]:
    """Split a compound RTCP packet (RFC 3550 §6.1) and parse each packet in it."""
    if not data:
        raise RtpParseError("RTCP compound packet is empty")
    packets: list[RtcpPacket] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _COMMON_HEADER.size:
            raise RtpParseError(
                f"RTCP packet at byte {offset} has a truncated header "
                f"({len(data) - offset} of 4 bytes)"
            )
        first, packet_type, length_words = _COMMON_HEADER.unpack_from(data, offset)
        if first >> _VERSION_SHIFT != RTCP_VERSION:
            raise RtpParseError(
                f"RTCP packet at byte {offset} has version {first >> _VERSION_SHIFT}, expected 2"
            )
        end = offset + (length_words + 1) * _WORD_SIZE
        if end > len(data):
            raise RtpParseError(
                f"RTCP packet at byte {offset} declares {end - offset} bytes "
                f"but only {len(data) - offset} remain"
            )
        body_end = end
        if first & _PADDING_BIT:
            # RFC 3550 §6.4.1: the last octet counts the padding octets, itself included.
            padding_size = data[end - 1]
            if padding_size == 0:
                raise RtpParseError(
                    f"RTCP packet at byte {offset} has padding bit set but a padding count of zero"
                )
            body_end -= padding_size
            if body_end < offset + _COMMON_HEADER.size:
                raise RtpParseError(
                    f"RTCP packet at byte {offset} has padding count {padding_size} "
                    "that overruns its header"
                )
        count = first & _COUNT_MASK
        body = data[offset + _COMMON_HEADER.size : body_end]
        if packet_type == RtcpPacketType.SENDER_REPORT:
            packets.append(_parse_sender_report(body, count, offset))
        elif packet_type == RtcpPacketType.BYE:
            packets.append(_parse_bye(body, count, offset))
        else:
            packets.append(RtcpOther(packet_type, bytes(data[offset:end])))
        offset = end
    return packets


def _parse_sender_report(body: bytes, report_count: int, offset: int) -> RtcpSenderReport:
    """Parse a sender report body (after the common header, without padding)."""
    needed = _SENDER_INFO.size + report_count * _REPORT_BLOCK_SIZE
    if len(body) < needed:
        raise RtpParseError(
            f"RTCP sender report at byte {offset} with {report_count} report blocks "
            f"needs {needed} bytes after its header, has {len(body)}"
        )
    ssrc, ntp_timestamp, rtp_timestamp, packet_count, octet_count = _SENDER_INFO.unpack_from(body)
    return RtcpSenderReport(ssrc, ntp_timestamp, rtp_timestamp, packet_count, octet_count)


def _parse_bye(body: bytes, source_count: int, offset: int) -> RtcpBye:
    """Parse a BYE body (after the common header, without padding)."""
    ssrcs_end = source_count * _SSRC.size
    if len(body) < ssrcs_end:
        raise RtpParseError(
            f"RTCP BYE at byte {offset} lists {source_count} SSRCs "
            f"but has room for {len(body) // _SSRC.size}"
        )
    ssrcs = struct.unpack_from(f"!{source_count}I", body)
    reason = ""
    if len(body) > ssrcs_end:
        reason_size = body[ssrcs_end]
        reason_end = ssrcs_end + 1 + reason_size
        if reason_end > len(body):
            raise RtpParseError(
                f"RTCP BYE at byte {offset} has a reason of {reason_size} bytes "
                f"but only {len(body) - ssrcs_end - 1} remain"
            )
        # A peer's malformed UTF-8 must not make the whole compound unreadable.
        reason = body[ssrcs_end + 1 : reason_end].decode("utf-8", errors="replace")
    return RtcpBye(ssrcs, reason)


def build_rtcp_bye(ssrcs: Sequence[int], reason: str = "") -> bytes:
    """Build a BYE packet (RFC 3550 §6.6) for the given sources with an optional reason."""
    if len(ssrcs) > MAX_COUNT:
        raise RtpParseError(f"RTCP BYE lists {len(ssrcs)} SSRCs, at most 31 fit")
    if any(not 0 <= ssrc <= 0xFFFFFFFF for ssrc in ssrcs):
        raise RtpParseError("RTCP BYE SSRC is outside 32 bits")
    body = struct.pack(f"!{len(ssrcs)}I", *ssrcs)
    if reason:
        reason_bytes = reason.encode("utf-8")
        if len(reason_bytes) > MAX_REASON_SIZE:
            raise RtpParseError(
                f"RTCP BYE reason is {len(reason_bytes)} bytes of UTF-8, at most 255 fit"
            )
        body += bytes((len(reason_bytes),)) + reason_bytes
        # RFC 3550 §6.6: the reason is padded with null octets to the next 32-bit boundary.
        body += bytes(-len(body) % _WORD_SIZE)
    length_words = (_COMMON_HEADER.size + len(body)) // _WORD_SIZE - 1
    header = _COMMON_HEADER.pack(
        (RTCP_VERSION << _VERSION_SHIFT) | len(ssrcs), RtcpPacketType.BYE, length_words
    )
    return header + body
