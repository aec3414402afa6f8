"""Tests for RTCP compound parsing and BYE building."""

from __future__ import annotations

import struct

import pytest
from aiortc import rtp as aiortc_rtp
from hypothesis import given
from hypothesis import strategies as st

from mediaserver.errors import RtpParseError
from mediaserver.rtp.rtcp import (
    RtcpBye,
    RtcpOther,
    RtcpPacketType,
    RtcpSenderReport,
    build_rtcp_bye,
    parse_rtcp_compound,
)

uint32 = st.integers(0, 0xFFFFFFFF)

SENDER_REPORT_WITH_BLOCK = bytes.fromhex(
    "81 c8 00 0c"  # V=2 RC=1 | PT=200 SR | length 12 words (52 bytes)
    "00 00 00 2a"  # sender SSRC 42
    "e8 6c 0b 1e 80 00 00 00"  # NTP timestamp: 3899394846.5 s
    "00 01 e2 40"  # RTP timestamp 123456
    "00 00 00 64"  # sender's packet count 100
    "00 00 1f 40"  # sender's octet count 8000
    "00 00 00 07"  # report block: SSRC 7
    "00 00 00 00"  # fraction lost, cumulative lost
    "00 00 01 00"  # extended highest sequence
    "00 00 00 10"  # jitter
    "00 00 00 00"  # LSR
    "00 00 00 00"  # DLSR
)
BYE_WITH_REASON = bytes.fromhex(
    "82 cb 00 03"  # V=2 SC=2 | PT=203 BYE | length 3 words (16 bytes)
    "00 00 00 01"  # SSRC 1
    "00 00 00 02"  # SSRC 2
    "03 62 79 65"  # reason length 3, "bye" (already on a 32-bit boundary)
)
RECEIVER_REPORT_EMPTY = bytes.fromhex(
    "80 c9 00 01"  # V=2 RC=0 | PT=201 RR | length 1 word
    "00 00 00 2a"  # reporter SSRC 42
)


def test_parse_hand_assembled_sender_report() -> None:
    """A sender report yields its SSRC, NTP/RTP timestamps and counts; report blocks are skipped."""
    assert parse_rtcp_compound(SENDER_REPORT_WITH_BLOCK) == [
        RtcpSenderReport(
            ssrc=42,
            ntp_timestamp=(3899394846 << 32) | 0x80000000,
            rtp_timestamp=123456,
            packet_count=100,
            octet_count=8000,
        )
    ]


def test_parse_hand_assembled_compound() -> None:
    """A compound of RR, SR and BYE parses in order, the RR kept raw."""
    packets = parse_rtcp_compound(
        RECEIVER_REPORT_EMPTY + SENDER_REPORT_WITH_BLOCK + BYE_WITH_REASON
    )
    assert [packet.packet_type for packet in packets] == [201, 200, 203]
    assert packets[0] == RtcpOther(RtcpPacketType.RECEIVER_REPORT, RECEIVER_REPORT_EMPTY)
    assert packets[2] == RtcpBye(ssrcs=(1, 2), reason="bye")


def test_parse_bye_without_ssrcs_or_reason() -> None:
    """A BYE with SC=0 and no reason is valid and lists nobody."""
    assert parse_rtcp_compound(bytes.fromhex("80 cb 00 00")) == [RtcpBye(ssrcs=())]


def test_parse_honours_padding() -> None:
    """Padding at the end of a packet is excluded from its body (RFC 3550 §6.4.1)."""
    data = bytes.fromhex(
        "a1 cb 00 03"  # V=2 P=1 SC=1 | BYE | length 3 words
        "00 00 00 09"  # SSRC 9
        "00 00 00 00"  # padding...
        "00 00 00 08"  # ...8 octets, count included
    )
    assert parse_rtcp_compound(data) == [RtcpBye(ssrcs=(9,))]


def test_build_bye_matches_hand_assembled_bytes() -> None:
    """A BYE with two SSRCs and a reason is laid out as RFC 3550 §6.6 draws it."""
    assert build_rtcp_bye([1, 2], "bye") == BYE_WITH_REASON


def test_build_bye_pads_reason_with_null_octets() -> None:
    """A reason that ends off a 32-bit boundary is padded with null octets."""
    assert build_rtcp_bye([5], "call ended") == bytes.fromhex(
        "81 cb 00 04"  # V=2 SC=1 | BYE | length 4 words
        "00 00 00 05"  # SSRC 5
        "0a 63 61 6c 6c 20 65 6e 64 65 64"  # length 10, "call ended"
        "00"  # one null octet to the boundary
    )


@given(ssrcs=st.lists(uint32, max_size=31))
def test_aiortc_parses_our_bye(ssrcs: list[int]) -> None:
    """aiortc's RTCP parser reads the SSRCs of every BYE we build."""
    (theirs,) = aiortc_rtp.RtcpPacket.parse(build_rtcp_bye(ssrcs, "done"))
    assert isinstance(theirs, aiortc_rtp.RtcpByePacket)
    assert theirs.sources == ssrcs


@given(ssrcs=st.lists(uint32, max_size=31), reason=st.text(max_size=60))
def test_build_then_parse_bye_round_trips(ssrcs: list[int], reason: str) -> None:
    """Every BYE we build parses back to its SSRCs and reason and is whole 32-bit words."""
    data = build_rtcp_bye(ssrcs, reason)
    assert len(data) % 4 == 0
    assert parse_rtcp_compound(data) == [RtcpBye(tuple(ssrcs), reason)]


@pytest.mark.parametrize(
    ("ssrcs", "reason", "message"),
    [
        (list(range(32)), "", "lists 32 SSRCs, at most 31 fit"),
        ([1 << 32], "", "SSRC is outside 32 bits"),
        ([1], "é" * 128, "reason is 256 bytes of UTF-8, at most 255 fit"),
    ],
)
def test_build_bye_rejects_what_the_format_cannot_carry(
    ssrcs: list[int], reason: str, message: str
) -> None:
    """Too many SSRCs, an SSRC over 32 bits or a reason over 255 bytes is refused."""
    with pytest.raises(RtpParseError, match=message):
        build_rtcp_bye(ssrcs, reason)


@st.composite
def aiortc_rtcp_packets(draw: st.DrawFn) -> object:
    """An RTCP packet of one of the types aiortc builds."""
    receiver_info = st.builds(
        aiortc_rtp.RtcpReceiverInfo,
        ssrc=uint32,
        fraction_lost=st.integers(0, 255),
        packets_lost=st.integers(-(1 << 23), (1 << 23) - 1),
        highest_sequence=uint32,
        jitter=uint32,
        lsr=uint32,
        dlsr=uint32,
    )
    kind = draw(st.sampled_from(["sr", "rr", "bye", "nack", "pli"]))
    if kind == "sr":
        return aiortc_rtp.RtcpSrPacket(
            ssrc=draw(uint32),
            sender_info=aiortc_rtp.RtcpSenderInfo(
                draw(st.integers(0, (1 << 64) - 1)), draw(uint32), draw(uint32), draw(uint32)
            ),
            reports=draw(st.lists(receiver_info, max_size=3)),
        )
    if kind == "rr":
        return aiortc_rtp.RtcpRrPacket(
            ssrc=draw(uint32), reports=draw(st.lists(receiver_info, max_size=3))
        )
    if kind == "bye":
        return aiortc_rtp.RtcpByePacket(sources=draw(st.lists(uint32, max_size=31)))
    if kind == "nack":
        return aiortc_rtp.RtcpRtpfbPacket(
            fmt=1,
            ssrc=draw(uint32),
            media_ssrc=draw(uint32),
            lost=sorted(set(draw(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=5)))),
        )
    return aiortc_rtp.RtcpPsfbPacket(fmt=1, ssrc=draw(uint32), media_ssrc=draw(uint32))


@given(st.lists(aiortc_rtcp_packets(), min_size=1, max_size=5))
def test_parse_agrees_with_aiortc_compounds(packets: list[object]) -> None:
    """Compounds aiortc builds parse to aiortc's fields, unknown types kept byte for byte."""
    wires = [bytes(packet) for packet in packets]  # type: ignore[call-overload]
    parsed = parse_rtcp_compound(b"".join(wires))
    assert len(parsed) == len(packets)
    for theirs, wire, ours in zip(packets, wires, parsed, strict=True):
        if isinstance(theirs, aiortc_rtp.RtcpSrPacket):
            info = theirs.sender_info
            assert ours == RtcpSenderReport(
                theirs.ssrc,
                info.ntp_timestamp,
                info.rtp_timestamp,
                info.packet_count,
                info.octet_count,
            )
        elif isinstance(theirs, aiortc_rtp.RtcpByePacket):
            assert ours == RtcpBye(tuple(theirs.sources))
        else:
            assert ours == RtcpOther(wire[1], wire)


def test_rejects_empty_compound() -> None:
    """Zero bytes are not an RTCP packet."""
    with pytest.raises(RtpParseError, match="RTCP compound packet is empty"):
        parse_rtcp_compound(b"")


def test_rejects_truncated_common_header() -> None:
    """Trailing bytes too short for a common header are rejected."""
    with pytest.raises(RtpParseError, match=r"at byte 8 has a truncated header \(3 of 4 bytes\)"):
        parse_rtcp_compound(RECEIVER_REPORT_EMPTY + b"\x80\xc9\x00")


@pytest.mark.parametrize(("first_byte", "version"), [(0x00, 0), (0x40, 1), (0xC0, 3)])
def test_rejects_version_other_than_2(first_byte: int, version: int) -> None:
    """Only RTCP version 2 is accepted."""
    data = bytes([first_byte]) + RECEIVER_REPORT_EMPTY[1:]
    with pytest.raises(RtpParseError, match=f"at byte 0 has version {version}, expected 2"):
        parse_rtcp_compound(data)


def test_rejects_length_beyond_compound() -> None:
    """A length field that reaches past the datagram is rejected."""
    data = bytes.fromhex("80 c9 00 02 00 00 00 2a")  # declares 12 bytes, has 8
    with pytest.raises(RtpParseError, match="declares 12 bytes but only 8 remain"):
        parse_rtcp_compound(data)


def test_rejects_zero_padding_count() -> None:
    """With the P bit set, a final padding count of zero is invalid."""
    data = bytes.fromhex("a0 c9 00 01 00 00 00 00")
    with pytest.raises(RtpParseError, match="padding bit set but a padding count of zero"):
        parse_rtcp_compound(data)


def test_rejects_padding_into_the_header() -> None:
    """A padding count larger than the packet body is rejected."""
    data = bytes.fromhex("a0 c9 00 01 00 00 00 05")  # 4-byte body, 5 octets of padding
    with pytest.raises(RtpParseError, match="padding count 5 that overruns its header"):
        parse_rtcp_compound(data)


def test_rejects_sender_report_too_short_for_sender_info() -> None:
    """A sender report needs its SSRC and 20 bytes of sender info after the header."""
    data = bytes.fromhex("80 c8 00 01 00 00 00 2a")
    with pytest.raises(RtpParseError, match=r"with 0 report blocks needs 24 bytes .* has 4"):
        parse_rtcp_compound(data)


def test_rejects_sender_report_too_short_for_its_report_blocks() -> None:
    """A report count beyond the blocks present is rejected."""
    data = bytes([0x82]) + SENDER_REPORT_WITH_BLOCK[1:]  # RC=2, one block present
    with pytest.raises(RtpParseError, match=r"with 2 report blocks needs 72 bytes .* has 48"):
        parse_rtcp_compound(data)


def test_rejects_bye_too_short_for_its_ssrcs() -> None:
    """A source count beyond the SSRCs present is rejected."""
    data = bytes.fromhex("83 cb 00 02 00 00 00 01 00 00 00 02")  # SC=3, two SSRCs
    with pytest.raises(RtpParseError, match="lists 3 SSRCs but has room for 2"):
        parse_rtcp_compound(data)


def test_rejects_bye_reason_beyond_packet() -> None:
    """A reason length past the end of the BYE is rejected."""
    data = bytes.fromhex("81 cb 00 02 00 00 00 01 09 61 62 63")  # length 9, three bytes
    with pytest.raises(RtpParseError, match="reason of 9 bytes but only 3 remain"):
        parse_rtcp_compound(data)


def walk_common_headers(data: bytes) -> list[tuple[int, int]]:
    """(packet type, size) of each packet in a compound, from the length fields alone."""
    packets = []
    offset = 0
    while offset < len(data):
        _, packet_type, length_words = struct.unpack_from("!BBH", data, offset)
        packets.append((packet_type, (length_words + 1) * 4))
        offset += (length_words + 1) * 4
    return packets


@given(st.binary(max_size=120))
def test_fuzz_parse_raises_or_splits_consistently(data: bytes) -> None:
    """Arbitrary bytes raise RtpParseError or split where the length fields say, in order."""
    try:
        packets = parse_rtcp_compound(data)
    except RtpParseError:
        return
    walked = walk_common_headers(data)
    assert sum(size for _, size in walked) == len(data)
    assert [packet.packet_type for packet in packets] == [packet_type for packet_type, _ in walked]


@given(
    st.lists(
        st.tuples(
            st.integers(0, 31),  # count field
            st.sampled_from([200, 201, 202, 203, 204, 205, 206]),
            st.binary(max_size=40).map(lambda b: b + bytes(-len(b) % 4)),
            st.booleans(),  # padding bit
        ),
        min_size=1,
        max_size=4,
    )
)
def test_fuzz_well_framed_compounds_raise_or_parse(
    packets: list[tuple[int, int, bytes, bool]],
) -> None:
    """Compounds with valid framing but arbitrary bodies raise RtpParseError or parse in order."""
    data = b"".join(
        struct.pack("!BBH", 0x80 | (0x20 if padded else 0) | count, packet_type, len(body) // 4)
        + body
        for count, packet_type, body, padded in packets
    )
    try:
        parsed = parse_rtcp_compound(data)
    except RtpParseError:
        return
    assert [packet.packet_type for packet in parsed] == [packet[1] for packet in packets]
