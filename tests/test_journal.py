"""Packet journal: format round trips, crash-torn tails, malformed headers."""

import contextlib
import io
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediaserver.errors import JournalError
from mediaserver.recording.channel import Channel, Codec
from mediaserver.recording.journal import (
    HEADER_SIZE,
    RECORD_HEADER_SIZE,
    JournalHeader,
    JournalWriter,
    build_journal_header,
    parse_journal,
    parse_journal_header,
)
from mediaserver.rtp.media_packet import MediaPacket

HEADER = JournalHeader(
    Channel.CALLER, Codec.OPUS, wall_start_ns=1_790_000_000_000_000_000, mono_start_ns=5
)


def _write(records: list[MediaPacket]) -> bytes:
    out = io.BytesIO()
    writer = JournalWriter(out, HEADER)
    for r in records:
        writer.append(r)
    writer.flush()
    return out.getvalue()


records_strategy = st.lists(
    st.builds(
        MediaPacket,
        arrival_ns=st.integers(0, 2**64 - 1),
        rtp_timestamp=st.integers(0, 2**32 - 1),
        ssrc=st.integers(0, 2**32 - 1),
        sequence=st.integers(0, 2**16 - 1),
        payload_type=st.integers(0, 127),
        marker=st.booleans(),
        payload=st.binary(max_size=300),
    ),
    max_size=30,
)


@given(records_strategy)
def test_records_round_trip(records: list[MediaPacket]) -> None:
    """Every field of every appended record reads back unchanged."""
    header, parsed = parse_journal(_write(records))
    assert header == HEADER
    assert parsed == records


@given(records_strategy, st.data())
def test_torn_tail_keeps_whole_records(records: list[MediaPacket], data: st.DataObject) -> None:
    """A journal cut anywhere (a crash mid-write) yields exactly the records before the cut."""
    blob = _write(records)
    cut = data.draw(st.integers(HEADER_SIZE, len(blob)))
    _, parsed = parse_journal(blob[:cut])
    ends = []
    offset = HEADER_SIZE
    for r in records:
        offset += RECORD_HEADER_SIZE + len(r.payload)
        ends.append(offset)
    assert parsed == records[: sum(1 for end in ends if end <= cut)]


def test_record_layout_is_little_endian_fixed_header() -> None:
    """A record is arrival ns, timestamp, SSRC, sequence, PT, flags, length, then the payload."""
    blob = _write([MediaPacket(7, 0x01020304, 0x1234, 0xAABBCCDD, 111, True, b"\xf8\xff\xfe")])
    record = blob[HEADER_SIZE:]
    assert record[:8] == (7).to_bytes(8, "little")  # arrival_ns
    assert record[8:12] == bytes([4, 3, 2, 1])  # RTP timestamp
    assert record[12:16] == bytes([0xDD, 0xCC, 0xBB, 0xAA])  # SSRC
    assert record[16:18] == bytes([0x34, 0x12])  # sequence
    assert record[18] == 111  # payload type
    assert record[19] == 1  # flags: marker
    assert record[20:22] == bytes([3, 0])  # payload length
    assert record[22:] == b"\xf8\xff\xfe"


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"MSJ1", "truncated"),
        (b"XXXX" + bytes(HEADER_SIZE), "not a packet journal"),
        (build_journal_header(HEADER)[:4] + b"\x09" + build_journal_header(HEADER)[5:], "version"),
        (build_journal_header(HEADER)[:5] + b"\x07" + build_journal_header(HEADER)[6:], "unknown"),
        (build_journal_header(HEADER)[:6] + b"\x09" + build_journal_header(HEADER)[7:], "unknown"),
        (
            build_journal_header(HEADER)[:8]
            + struct.pack("<I", 8000)
            + build_journal_header(HEADER)[12:],
            "clock rate",
        ),
    ],
)
def test_malformed_header_is_rejected(blob: bytes, message: str) -> None:
    """A header that is not ours, or inconsistent, raises JournalError saying what is wrong."""
    with pytest.raises(JournalError, match=message):
        parse_journal_header(blob)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_journal_error_or_parse(blob: bytes) -> None:
    """Arbitrary input never raises anything but JournalError."""
    with contextlib.suppress(JournalError):
        parse_journal(blob)


def test_oversized_payload_is_refused() -> None:
    """A payload longer than the length field can hold is refused, not truncated."""
    writer = JournalWriter(io.BytesIO(), HEADER)
    with pytest.raises(JournalError, match="exceeds"):
        writer.append(MediaPacket(0, 0, 0, 0, 0, False, bytes(70000)))
