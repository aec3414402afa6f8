"""Tests for Ogg page CRC, lacing, building and parsing (RFC 3533)."""

from __future__ import annotations

import io
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaserver.audio.ogg_page import (
    FLAG_BOS,
    FLAG_CONTINUED,
    FLAG_EOS,
    NO_GRANULE_POSITION,
    OggPage,
    build_lacing_values,
    build_ogg_page,
    build_ogg_pages,
    compute_ogg_crc,
    parse_ogg_page,
    parse_ogg_pages,
    read_ogg_pages,
)
from mediaserver.errors import OggError

CRC_OFFSET = 22


def bitwise_ogg_crc(data: bytes) -> int:
    """CRC-32 straight from RFC 3533 §6: poly 0x04C11DB7, MSB first, init 0, no final xor."""
    register = 0
    for byte in data:
        register ^= byte << 24
        for _ in range(8):
            if register & 0x80000000:
                register = ((register << 1) ^ 0x04C11DB7) & 0xFFFFFFFF
            else:
                register = (register << 1) & 0xFFFFFFFF
    return register


@pytest.fixture(scope="module")
def ffmpeg_ogg(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Three seconds of tone encoded to Ogg Opus by the ffmpeg CLI."""
    path: Path = tmp_path_factory.mktemp("ffmpeg") / "tone.opus"
    subprocess.run(
        [
            *("ffmpeg", "-loglevel", "error", "-y"),
            *("-f", "lavfi", "-i", "sine=frequency=440:duration=3"),
            *("-c:a", "libopus", "-b:a", "32k", str(path)),
        ],
        check=True,
    )
    return path.read_bytes()


def test_crc_matches_catalogue_check_value() -> None:
    """CRC of "123456789" is 0x89A1897F (CRC-32/CKSUM's check 0x765E7680 without its xorout)."""
    assert compute_ogg_crc(b"123456789") == 0x89A1897F


def test_crc_of_empty_input_is_zero() -> None:
    """The CRC register starts at zero, so no data gives zero."""
    assert compute_ogg_crc(b"") == 0


@given(st.binary(max_size=600))
def test_crc_matches_bitwise_definition(data: bytes) -> None:
    """The fast CRC equals a bit-by-bit implementation of the RFC 3533 definition."""
    assert compute_ogg_crc(data) == bitwise_ogg_crc(data)


def test_crc_verifies_every_page_ffmpeg_wrote(ffmpeg_ogg: bytes) -> None:
    """Recomputing each ffmpeg page's CRC (its CRC field zeroed) gives the stored value."""
    offset = 0
    page_count = 0
    while offset < len(ffmpeg_ogg):
        segment_count = ffmpeg_ogg[offset + 26]
        lacing = ffmpeg_ogg[offset + 27 : offset + 27 + segment_count]
        end = offset + 27 + segment_count + sum(lacing)
        page = bytearray(ffmpeg_ogg[offset:end])
        (stored_crc,) = struct.unpack_from("<I", page, CRC_OFFSET)
        page[CRC_OFFSET : CRC_OFFSET + 4] = bytes(4)
        assert compute_ogg_crc(bytes(page)) == stored_crc
        offset = end
        page_count += 1
    assert page_count >= 3


def test_parser_reads_ffmpeg_file(ffmpeg_ogg: bytes) -> None:
    """Every page ffmpeg wrote parses, one serial, BOS first, EOS last, rebuilt byte for byte."""
    pages = list(parse_ogg_pages(ffmpeg_ogg))
    assert pages[0].is_bos
    assert pages[-1].is_eos
    assert len({page.serial for page in pages}) == 1
    assert [page.sequence for page in pages] == list(range(len(pages)))
    rebuilt = b"".join(
        build_ogg_page(
            header_type=page.header_type,
            granule_position=page.granule_position,
            serial=page.serial,
            sequence=page.sequence,
            lacing_values=page.lacing_values,
            body=page.body,
        )
        for page in pages
    )
    assert rebuilt == ffmpeg_ogg


def test_stream_reader_matches_buffer_parser(ffmpeg_ogg: bytes) -> None:
    """read_ogg_pages on a stream yields the same pages as parse_ogg_pages on the bytes."""
    assert list(read_ogg_pages(io.BytesIO(ffmpeg_ogg))) == list(parse_ogg_pages(ffmpeg_ogg))


@pytest.mark.parametrize(
    ("packet_size", "expected"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (254, b"\xfe"),
        (255, b"\xff\x00"),  # exactly 255 bytes: a 0 lacing value ends the packet
        (256, b"\xff\x01"),
        (510, b"\xff\xff\x00"),
        (600, b"\xff\xff\x5a"),
    ],
)
def test_lacing_values(packet_size: int, expected: bytes) -> None:
    """Lacing values are 255s then the remainder, with a trailing 0 for multiples of 255."""
    assert build_lacing_values(packet_size) == expected


def test_page_header_layout() -> None:
    """Fields sit where RFC 3533 §6 puts them, little-endian, with the CRC over the page."""
    page = build_ogg_page(
        header_type=FLAG_BOS,
        granule_position=0x0102030405060708,
        serial=0x0A0B0C0D,
        sequence=7,
        lacing_values=b"\x03",
        body=b"abc",
    )
    assert page[:4] == b"OggS"  # capture pattern
    assert page[4] == 0  # stream structure version
    assert page[5] == 0x02  # header type: BOS
    assert page[6:14] == bytes.fromhex("0807060504030201")  # granule position
    assert page[14:18] == bytes.fromhex("0d0c0b0a")  # serial
    assert page[18:22] == bytes.fromhex("07000000")  # sequence
    assert page[26] == 1  # segment count
    assert page[27:] == b"\x03abc"  # segment table, body
    zeroed = page[:CRC_OFFSET] + bytes(4) + page[CRC_OFFSET + 4 :]
    assert struct.unpack_from("<I", page, CRC_OFFSET)[0] == bitwise_ogg_crc(zeroed)


def test_negative_granule_position_round_trips() -> None:
    """-1 ('no packet ends here') is stored as all ones and parsed back as -1."""
    page = build_ogg_page(
        header_type=0, granule_position=-1, serial=1, sequence=1, lacing_values=b"", body=b""
    )
    assert page[6:14] == b"\xff" * 8
    parsed, end = parse_ogg_page(page)
    assert parsed.granule_position == NO_GRANULE_POSITION
    assert end == len(page)


def test_build_page_rejects_inconsistent_lacing() -> None:
    """Lacing values must add up to the body and number at most 255."""
    with pytest.raises(ValueError, match="add up"):
        build_ogg_page(
            header_type=0,
            granule_position=0,
            serial=1,
            sequence=0,
            lacing_values=b"\x02",
            body=b"a",
        )
    with pytest.raises(ValueError, match="255 segments"):
        build_ogg_page(
            header_type=0,
            granule_position=0,
            serial=1,
            sequence=0,
            lacing_values=b"\x00" * 256,
            body=b"",
        )


def test_packet_of_255_times_255_bytes_spans_two_pages() -> None:
    """A 65,025-byte packet needs 256 lacing values: a full page, then a continued page."""
    packet = bytes(range(255)) * 255
    pages = [
        parse_ogg_page(page)[0]
        for page in build_ogg_pages([(packet, 960)], serial=5, first_sequence=2, eos=True)
    ]
    assert [page.sequence for page in pages] == [2, 3]
    assert pages[0].lacing_values == b"\xff" * 255
    assert pages[0].granule_position == NO_GRANULE_POSITION  # no packet ends on it
    assert not pages[0].is_continued
    assert not pages[0].is_eos
    assert pages[1].lacing_values == b"\x00"
    assert pages[1].header_type == FLAG_CONTINUED | FLAG_EOS
    assert pages[1].granule_position == 960
    assert pages[0].body + pages[1].body == packet


def test_full_segment_table_starts_a_fresh_page() -> None:
    """The 256th one-segment packet opens a new page that is not flagged as continued."""
    packets = [(bytes([index]) * 10, index + 1) for index in range(256)]
    pages = [
        parse_ogg_page(page)[0] for page in build_ogg_pages(packets, serial=1, first_sequence=0)
    ]
    assert [len(page.lacing_values) for page in pages] == [255, 1]
    assert [page.granule_position for page in pages] == [255, 256]
    assert pages[1].header_type == 0


def test_segments_rejoin_packets_split_across_pages() -> None:
    """compute_segments returns whole packets and the open tail of a continued packet."""
    packets = [(b"a" * 100, 1), (b"b" * 70_000, 2), (b"c" * 255, 3), (b"d", 4)]
    pages = [
        parse_ogg_page(page)[0] for page in build_ogg_pages(packets, serial=1, first_sequence=0)
    ]
    rebuilt: list[bytes] = []
    partial = b""
    for page in pages:
        pieces, last_is_open = page.compute_segments()
        if page.is_continued:
            pieces[0] = partial + pieces[0]
        partial = pieces.pop() if last_is_open else b""
        rebuilt += pieces
    assert rebuilt == [packet for packet, _ in packets]


def test_pages_without_packets_give_one_empty_page() -> None:
    """Building from no packets still yields one (empty) page, e.g. for an EOS marker."""
    (page,) = build_ogg_pages([], serial=1, first_sequence=9, eos=True)
    parsed, _ = parse_ogg_page(page)
    assert parsed.is_eos
    assert parsed.lacing_values == b""


def _valid_page() -> bytes:
    return build_ogg_page(
        header_type=0,
        granule_position=960,
        serial=1,
        sequence=3,
        lacing_values=b"\x05",
        body=b"hello",
    )


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda page: b"OggT" + page[4:], "capture pattern"),
        (lambda page: page[:4] + b"\x01" + page[5:], "version"),
        (lambda page: page[:5] + b"\x08" + page[6:], "header type"),
        (lambda page: page[:-1] + b"X", "CRC"),
        (lambda page: page[:20], "header is truncated"),
        (lambda page: page[:27], "segment table is truncated"),
        (lambda page: page[:-2], "body is truncated"),
    ],
)
def test_parser_rejects_malformed_page(corrupt: Callable[[bytes], bytes], message: str) -> None:
    """A wrong capture pattern, version, flag, CRC or a cut page raises a clear OggError."""
    data = corrupt(_valid_page())
    with pytest.raises(OggError, match=message):
        list(parse_ogg_pages(data))
    with pytest.raises(OggError, match=message):
        list(read_ogg_pages(io.BytesIO(data)))


def _rebuild(page: OggPage) -> bytes:
    return build_ogg_page(
        header_type=page.header_type,
        granule_position=page.granule_position,
        serial=page.serial,
        sequence=page.sequence,
        lacing_values=page.lacing_values,
        body=page.body,
    )


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data: bytes) -> None:
    """Random bytes either raise OggError or parse to pages that rebuild to the same bytes."""
    try:
        pages = list(parse_ogg_pages(data))
    except OggError:
        return
    assert b"".join(_rebuild(page) for page in pages) == data


@settings(max_examples=300)
@given(
    st.lists(st.binary(max_size=600), min_size=1, max_size=5),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    st.integers(0, 10_000),
)
def test_fuzz_mutated_pages(packets: list[bytes], flips: list[tuple[int, int]], cut: int) -> None:
    """Valid pages with bytes changed or cut off either raise OggError or parse and rebuild."""
    data = bytearray(
        b"".join(
            build_ogg_pages(
                [(packet, index) for index, packet in enumerate(packets)],
                serial=7,
                first_sequence=0,
            )
        )
    )
    for position, value in flips:
        data[position % len(data)] = value
    mutated = bytes(data[: len(data) - cut % len(data)])
    try:
        pages = list(read_ogg_pages(io.BytesIO(mutated)))
    except OggError:
        return
    assert b"".join(_rebuild(page) for page in pages) == mutated
