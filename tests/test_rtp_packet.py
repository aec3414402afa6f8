"""Tests for RTP packet parsing, building, the fast header parser and RTP/RTCP demultiplexing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiortc import rtp as aiortc_rtp
from hypothesis import given
from hypothesis import strategies as st

from mediaserver.errors import RtpParseError
from mediaserver.rtp.packet import (
    RtpHeader,
    RtpPacket,
    build_rtp_packet,
    is_rtcp,
    parse_rtp_header,
    parse_rtp_packet,
)

# Hand-assembled packets: (bytes, expected packet).
WIRE_CASES = [
    pytest.param(
        bytes.fromhex(
            "80 00 00 01"  # V=2 P=0 X=0 CC=0 | M=0 PT=0 (PCMU) | sequence 1
            "00 00 00 a0"  # timestamp 160
            "de ad be ef"  # SSRC
            "ff ff"  # two μ-law silence bytes
        ),
        RtpPacket(False, 0, 1, 160, 0xDEADBEEF, payload=b"\xff\xff"),
        id="pcmu",
    ),
    pytest.param(
        bytes.fromhex(
            "80 ef ff ff"  # V=2 | M=1 PT=111 (Opus) | sequence 65535
            "ff ff ff ff"  # timestamp 2**32 - 1
            "00 00 00 01"  # SSRC 1
            "f8 ff fe"  # Opus CELT FB 20 ms TOC and two bytes
        ),
        RtpPacket(True, 111, 0xFFFF, 0xFFFFFFFF, 1, payload=b"\xf8\xff\xfe"),
        id="opus-marker-max-fields",
    ),
    pytest.param(
        bytes.fromhex(
            "82 08 12 34"  # V=2 CC=2 | PT=8 (PCMA) | sequence 0x1234
            "00 01 00 00"  # timestamp 65536
            "11 11 11 11"  # SSRC
            "22 22 22 22"  # CSRC 1
            "33 33 33 33"  # CSRC 2
            "d5"  # A-law zero
        ),
        RtpPacket(
            False, 8, 0x1234, 65536, 0x11111111, csrc=(0x22222222, 0x33333333), payload=b"\xd5"
        ),
        id="csrc",
    ),
    pytest.param(
        bytes.fromhex(
            "90 6f 00 07"  # V=2 X=1 | PT=111 | sequence 7
            "00 00 03 c0"  # timestamp 960
            "00 00 00 09"  # SSRC 9
            "be de 00 01"  # RFC 8285 one-byte profile 0xBEDE, 1 word of extension
            "10 ff 00 00"  # id 1 (audio level) len 1, value 0xff, two bytes of padding
            "f8"  # Opus TOC
        ),
        RtpPacket(
            False,
            111,
            7,
            960,
            9,
            extension_profile=0xBEDE,
            extension=b"\x10\xff\x00\x00",
            payload=b"\xf8",
        ),
        id="extension",
    ),
    pytest.param(
        bytes.fromhex(
            "90 6f 00 07"  # V=2 X=1 | PT=111 | sequence 7
            "00 00 03 c0"  # timestamp 960
            "00 00 00 09"  # SSRC 9
            "10 00 00 00"  # RFC 8285 two-byte profile 0x1000, zero words of extension
        ),
        RtpPacket(False, 111, 7, 960, 9, extension_profile=0x1000),
        id="empty-extension-no-payload",
    ),
    pytest.param(
        bytes.fromhex(
            "a0 60 00 02"  # V=2 P=1 | PT=96 | sequence 2
            "00 00 00 00"  # timestamp 0
            "00 00 00 05"  # SSRC 5
            "ab cd"  # payload
            "00 00 03"  # three octets of padding, the last one counting them
        ),
        RtpPacket(False, 96, 2, 0, 5, payload=b"\xab\xcd", padding_size=3),
        id="padding",
    ),
]

PARSERS = [
    pytest.param(parse_rtp_packet, id="packet"),
    pytest.param(parse_rtp_header, id="header"),
]

uint16 = st.integers(0, 0xFFFF)
uint32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def rtp_packets(draw: st.DrawFn) -> RtpPacket:
    """Any representable RTP packet."""
    extension_profile = draw(st.none() | uint16)
    extension = b""
    if extension_profile is not None:
        extension = draw(st.binary(max_size=64).map(lambda b: b + bytes(-len(b) % 4)))
    return RtpPacket(
        marker=draw(st.booleans()),
        payload_type=draw(st.integers(0, 127)),
        sequence=draw(uint16),
        timestamp=draw(uint32),
        ssrc=draw(uint32),
        csrc=tuple(draw(st.lists(uint32, max_size=15))),
        extension_profile=extension_profile,
        extension=extension,
        payload=draw(st.binary(max_size=200)),
        padding_size=draw(st.integers(0, 255)),
    )


def parse_or_error_message(
    parse: Callable[[bytes], RtpPacket | RtpHeader], data: bytes
) -> RtpPacket | RtpHeader | str:
    """The parser's result, or its RtpParseError's message."""
    try:
        return parse(data)
    except RtpParseError as error:
        return str(error)


def zero_padding_fill(data: bytes) -> bytes:
    """The packet with padding octets before the count set to zero, as the builder writes them."""
    if not data[0] & 0x20:
        return data
    padding_size = data[-1]
    return data[:-padding_size] + bytes(padding_size - 1) + data[-1:]


@pytest.mark.parametrize(("data", "expected"), WIRE_CASES)
def test_parse_hand_assembled_packets(data: bytes, expected: RtpPacket) -> None:
    """Hand-assembled packets parse to the fields their bytes spell."""
    assert parse_rtp_packet(data) == expected


@pytest.mark.parametrize(("data", "expected"), WIRE_CASES)
def test_build_reproduces_hand_assembled_packets(data: bytes, expected: RtpPacket) -> None:
    """Building the expected packet gives back the hand-assembled bytes, and so does bytes()."""
    assert build_rtp_packet(expected) == data
    assert bytes(parse_rtp_packet(data)) == data


@pytest.mark.parametrize(("data", "expected"), WIRE_CASES)
def test_header_matches_packet(data: bytes, expected: RtpPacket) -> None:
    """The fast header parser agrees with the full parser and bounds the payload exactly."""
    header = parse_rtp_header(data)
    assert header == RtpHeader(
        payload_type=expected.payload_type,
        sequence=expected.sequence,
        timestamp=expected.timestamp,
        ssrc=expected.ssrc,
        marker=expected.marker,
        payload_offset=header.payload_offset,
        payload_end=len(data) - expected.padding_size,
    )
    assert data[header.payload_offset : header.payload_end] == expected.payload


@given(
    st.builds(
        RtpPacket,
        marker=st.booleans(),
        payload_type=st.integers(0, 127),
        sequence=uint16,
        timestamp=uint32,
        ssrc=uint32,
        csrc=st.lists(uint32, max_size=15).map(tuple),
        payload=st.binary(max_size=200),
    )
)
def test_parse_agrees_with_aiortc_serialize(expected: RtpPacket) -> None:
    """Packets serialized by aiortc parse to aiortc's fields; our builder writes aiortc's bytes."""
    theirs = aiortc_rtp.RtpPacket(
        payload_type=expected.payload_type,
        marker=int(expected.marker),
        sequence_number=expected.sequence,
        timestamp=expected.timestamp,
        ssrc=expected.ssrc,
        payload=expected.payload,
    )
    theirs.csrc = list(expected.csrc)
    data = theirs.serialize()
    assert parse_rtp_packet(data) == expected
    assert build_rtp_packet(expected) == data


@given(rtp_packets())
def test_aiortc_parses_what_we_build(packet: RtpPacket) -> None:
    """aiortc's parser reads back the fields of every packet we build."""
    theirs = aiortc_rtp.RtpPacket.parse(build_rtp_packet(packet))
    assert (
        bool(theirs.marker),
        theirs.payload_type,
        theirs.sequence_number,
        theirs.timestamp,
        theirs.ssrc,
        tuple(theirs.csrc),
        theirs.payload,
        theirs.padding_size,
    ) == (
        packet.marker,
        packet.payload_type,
        packet.sequence,
        packet.timestamp,
        packet.ssrc,
        packet.csrc,
        packet.payload,
        packet.padding_size,
    )


def test_aiortc_random_padding_parses_and_rebuilds_with_zero_fill() -> None:
    """aiortc pads with random octets; we keep only the count and rebuild with zero octets."""
    theirs = aiortc_rtp.RtpPacket(payload_type=111, sequence_number=9, payload=b"\x01\x02")
    theirs.padding_size = 8
    data = theirs.serialize()
    ours = parse_rtp_packet(data)
    assert ours.padding_size == 8
    assert ours.payload == b"\x01\x02"
    assert bytes(ours) == data[:-8] + bytes(7) + b"\x08"


@given(rtp_packets())
def test_build_then_parse_round_trips(packet: RtpPacket) -> None:
    """Every packet survives build → parse unchanged."""
    assert parse_rtp_packet(build_rtp_packet(packet)) == packet


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize("size", [0, 1, 11])
def test_rejects_packet_shorter_than_fixed_header(
    parse: Callable[[bytes], object], size: int
) -> None:
    """Fewer than 12 bytes cannot hold the fixed header."""
    with pytest.raises(
        RtpParseError, match=f"RTP packet is {size} bytes, shorter than the 12-byte"
    ):
        parse(bytes.fromhex("80 00 00 01 00 00 00 a0 de ad be")[:size])


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize(("first_byte", "version"), [(0x00, 0), (0x40, 1), (0xC0, 3)])
def test_rejects_version_other_than_2(
    parse: Callable[[bytes], object], first_byte: int, version: int
) -> None:
    """Only RTP version 2 is accepted."""
    data = bytes([first_byte]) + bytes.fromhex("00 00 01 00 00 00 a0 de ad be ef")
    with pytest.raises(RtpParseError, match=f"RTP packet has version {version}, expected 2"):
        parse(data)


@pytest.mark.parametrize("parse", PARSERS)
def test_rejects_truncated_csrc_list(parse: Callable[[bytes], object]) -> None:
    """A CSRC count larger than the bytes after the fixed header is rejected."""
    data = bytes.fromhex(
        "83 00 00 01 00 00 00 a0 de ad be ef"  # CC=3: needs 12 more bytes
        "00 00 00 01 00 00 00 02"  # only two CSRCs present
    )
    with pytest.raises(RtpParseError, match="RTP packet has truncated CSRC list"):
        parse(data)


@pytest.mark.parametrize("parse", PARSERS)
def test_rejects_truncated_extension_header(parse: Callable[[bytes], object]) -> None:
    """The X bit needs four more bytes for the extension profile and length."""
    data = bytes.fromhex("90 00 00 01 00 00 00 a0 de ad be ef be de 00")  # 3 of 4 bytes
    with pytest.raises(RtpParseError, match="RTP packet has truncated header extension header"):
        parse(data)


@pytest.mark.parametrize("parse", PARSERS)
def test_rejects_truncated_extension_data(parse: Callable[[bytes], object]) -> None:
    """An extension length beyond the packet's end is rejected."""
    data = bytes.fromhex(
        "90 00 00 01 00 00 00 a0 de ad be ef"
        "be de 00 02"  # two words declared
        "10 ff 00 00"  # one word present
    )
    with pytest.raises(RtpParseError, match="RTP packet has truncated header extension data"):
        parse(data)


@pytest.mark.parametrize("parse", PARSERS)
def test_rejects_zero_padding_count(parse: Callable[[bytes], object]) -> None:
    """With the P bit set, a final padding count of zero is invalid (it counts itself)."""
    data = bytes.fromhex("a0 00 00 01 00 00 00 a0 de ad be ef ff ff 00")
    with pytest.raises(RtpParseError, match="padding bit set but a padding count of zero"):
        parse(data)


@pytest.mark.parametrize("parse", PARSERS)
def test_rejects_padding_longer_than_packet_body(parse: Callable[[bytes], object]) -> None:
    """A padding count beyond the bytes after the header is rejected."""
    data = bytes.fromhex("a0 00 00 01 00 00 00 a0 de ad be ef ff 03")  # 2 bytes, count 3
    with pytest.raises(RtpParseError, match="padding count 3 exceeds the 2 bytes after the header"):
        parse(data)


@pytest.mark.parametrize("parse", PARSERS)
def test_rejects_padding_bit_with_no_bytes_after_header(parse: Callable[[bytes], object]) -> None:
    """With P set and nothing after the header, the count byte would be header: rejected."""
    data = bytes.fromhex("a0 00 00 01 00 00 00 a0 de ad be 01")
    with pytest.raises(RtpParseError, match="padding count 1 exceeds the 0 bytes"):
        parse(data)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"payload_type": 128}, "payload type 128"),
        ({"sequence": 65536}, "sequence number 65536"),
        ({"timestamp": -1}, "timestamp -1"),
        ({"ssrc": 1 << 32}, "SSRC 4294967296"),
        ({"csrc": tuple(range(16))}, "16 CSRCs"),
        ({"csrc": (1 << 32,)}, "CSRC is outside"),
        ({"extension": b"\x00" * 4}, "needs an extension profile"),
        ({"extension_profile": 1, "extension": b"\x00" * 3}, "not a whole number of 32-bit"),
        ({"extension_profile": 1 << 16}, "extension profile 65536"),
        ({"padding_size": 256}, "padding size 256"),
    ],
)
def test_packet_rejects_values_no_header_can_carry(fields: dict[str, object], message: str) -> None:
    """Constructing a packet with an unrepresentable field fails with a message naming it."""
    base: dict[str, object] = {
        "marker": False,
        "payload_type": 0,
        "sequence": 0,
        "timestamp": 0,
        "ssrc": 0,
    }
    with pytest.raises(RtpParseError, match=message):
        RtpPacket(**(base | fields))  # type: ignore[arg-type]


@given(st.binary(max_size=80))
def test_fuzz_parse_packet_raises_or_round_trips(data: bytes) -> None:
    """Arbitrary bytes either raise RtpParseError or rebuild to themselves (padding zero-filled)."""
    try:
        packet = parse_rtp_packet(data)
    except RtpParseError:
        return
    assert bytes(packet) == zero_padding_fill(data)


@given(st.binary(min_size=12, max_size=80).map(lambda b: bytes([0x80 | (b[0] & 0x3F)]) + b[1:]))
def test_fuzz_version_2_headers_raise_or_round_trip(data: bytes) -> None:
    """Bytes with version 2 forced (so the deeper checks run) raise or round-trip."""
    try:
        packet = parse_rtp_packet(data)
    except RtpParseError:
        return
    assert bytes(packet) == zero_padding_fill(data)


@given(st.binary(max_size=80).map(lambda b: bytes([0x80 | (b[0] & 0x3F)]) + b[1:] if b else b))
def test_fuzz_header_agrees_with_packet(data: bytes) -> None:
    """The fast header parser fails exactly when the full parser does and agrees on every field."""
    packet = parse_or_error_message(parse_rtp_packet, data)
    header = parse_or_error_message(parse_rtp_header, data)
    if isinstance(packet, str):
        assert header == packet
        return
    assert isinstance(packet, RtpPacket)
    assert isinstance(header, RtpHeader)
    assert (header.payload_type, header.sequence, header.timestamp, header.ssrc, header.marker) == (
        packet.payload_type,
        packet.sequence,
        packet.timestamp,
        packet.ssrc,
        packet.marker,
    )
    assert data[header.payload_offset : header.payload_end] == packet.payload
    assert len(data) - header.payload_end == packet.padding_size


RTCP_FROM_AIORTC = [
    pytest.param(
        aiortc_rtp.RtcpSrPacket(
            ssrc=1, sender_info=aiortc_rtp.RtcpSenderInfo(1 << 40, 960, 10, 1000)
        ),
        id="sender-report",
    ),
    pytest.param(aiortc_rtp.RtcpRrPacket(ssrc=1), id="receiver-report"),
    pytest.param(aiortc_rtp.RtcpSdesPacket(), id="source-description"),
    pytest.param(aiortc_rtp.RtcpByePacket(sources=[1, 2]), id="bye"),
    pytest.param(aiortc_rtp.RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=2, lost=[5]), id="nack"),
    pytest.param(aiortc_rtp.RtcpPsfbPacket(fmt=1, ssrc=1, media_ssrc=2), id="pli"),
]


@pytest.mark.parametrize("packet", RTCP_FROM_AIORTC)
def test_is_rtcp_accepts_rtcp_from_aiortc(packet: object) -> None:
    """RTCP packets of every type aiortc sends are told apart from RTP."""
    assert is_rtcp(bytes(packet))  # type: ignore[call-overload]


@pytest.mark.parametrize("payload_type", [0, 8, 9, 13, 63, 96, 111, 127])
@pytest.mark.parametrize("marker", [0, 1])
def test_is_rtcp_rejects_rtp_from_aiortc(payload_type: int, marker: int) -> None:
    """RTP packets with payload types outside 64-95 are not taken for RTCP, marker or not."""
    data = aiortc_rtp.RtpPacket(payload_type=payload_type, marker=marker).serialize()
    assert not is_rtcp(data)


@pytest.mark.parametrize("data", [b"", b"\x80"])
def test_is_rtcp_rejects_datagrams_too_short_to_tell(data: bytes) -> None:
    """A datagram without a second byte is not RTCP."""
    assert not is_rtcp(data)
