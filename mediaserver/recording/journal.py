"""Append-only packet journal: each packet of a channel with both clocks, readable after a crash."""

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

from mediaserver.errors import JournalError
from mediaserver.recording.channel import Channel, Codec
from mediaserver.recording.packet_columns import PacketColumns
from mediaserver.rtp.media_packet import MediaPacket

MAGIC = b"MSJ1"
VERSION = 1
MAX_PAYLOAD_BYTES = 65535

# magic, version, channel, codec, reserved, clock_rate_hz, wall_start_ns, mono_start_ns, reserved
_HEADER = struct.Struct("<4sBBBBIQQI")
# arrival_ns, rtp_timestamp, ssrc, sequence, payload_type, flags, payload_length
_RECORD = struct.Struct("<QIIHBBH")
_FLAG_MARKER = 0x01
_CHANNEL_CODES = {Channel.CALLER: 0, Channel.AGENT: 1}
_CODEC_CODES = {Codec.OPUS: 0, Codec.PCMU: 1, Codec.PCMA: 2}

HEADER_SIZE = _HEADER.size
RECORD_HEADER_SIZE = _RECORD.size


@dataclass(frozen=True, slots=True)
class JournalHeader:
    """A journal's own description: whose packets, which codec, the call's two start clocks."""

    channel: Channel
    codec: Codec
    wall_start_ns: int
    mono_start_ns: int

    @property
    def clock_rate_hz(self) -> int:
        """RTP clock rate of the journalled packets."""
        return self.codec.clock_rate_hz

    def wall_time_ns(self, arrival_ns: int) -> int:
        """Wall-clock (UTC epoch) time of a monotonic arrival time."""
        return self.wall_start_ns + (arrival_ns - self.mono_start_ns)


def build_journal_header(header: JournalHeader) -> bytes:
    """Encode a journal's fixed-size file header."""
    return _HEADER.pack(
        MAGIC,
        VERSION,
        _CHANNEL_CODES[header.channel],
        _CODEC_CODES[header.codec],
        0,
        header.codec.clock_rate_hz,
        header.wall_start_ns,
        header.mono_start_ns,
        0,
    )


def parse_journal_header(data: bytes) -> JournalHeader:
    """Decode a journal's file header."""
    if len(data) < HEADER_SIZE:
        raise JournalError(f"journal header is truncated: {len(data)} of {HEADER_SIZE} bytes")
    magic, version, channel, codec, _, clock_rate_hz, wall_ns, mono_ns, _ = _HEADER.unpack_from(
        data
    )
    if magic != MAGIC:
        raise JournalError(f"not a packet journal: magic {magic!r}")
    if version != VERSION:
        raise JournalError(f"unsupported journal version {version}")
    try:
        channel_value = next(c for c, code in _CHANNEL_CODES.items() if code == channel)
        codec_value = next(c for c, code in _CODEC_CODES.items() if code == codec)
    except StopIteration:
        raise JournalError(
            f"journal header has unknown channel {channel} or codec {codec}"
        ) from None
    if clock_rate_hz != codec_value.clock_rate_hz:
        raise JournalError(
            f"journal clock rate {clock_rate_hz} Hz does not match {codec_value.value}"
        )
    return JournalHeader(channel_value, codec_value, wall_ns, mono_ns)


def build_journal_record(packet: MediaPacket) -> bytes:
    """Encode one record: fixed header then payload."""
    arrival_ns, timestamp, sequence, ssrc, payload_type, marker, payload = packet
    flags = _FLAG_MARKER if marker else 0
    return _RECORD.pack(
        arrival_ns, timestamp, ssrc, sequence, payload_type, flags, len(payload)
    ) + bytes(payload)


class JournalWriter:
    """Appends records to a binary stream; the stream's owner decides when to flush."""

    __slots__ = ("_out", "_pack", "byte_count", "packet_count")

    def __init__(self, out: BinaryIO, header: JournalHeader) -> None:
        self._out = out
        self._pack = _RECORD.pack
        out.write(build_journal_header(header))
        self.packet_count = 0
        self.byte_count = HEADER_SIZE

    def append(self, packet: MediaPacket) -> None:
        """Append one packet; O(1), a copy into the stream's buffer."""
        arrival_ns, rtp_timestamp, sequence, ssrc, payload_type, marker, payload = packet
        length = len(payload)
        if length > MAX_PAYLOAD_BYTES:
            raise JournalError(f"payload of {length} bytes exceeds {MAX_PAYLOAD_BYTES}")
        # One write per record: a second method call costs more than copying ~70 bytes twice.
        flags = _FLAG_MARKER if marker else 0
        self._out.write(
            self._pack(arrival_ns, rtp_timestamp, ssrc, sequence, payload_type, flags, length)
            + payload
        )
        self.packet_count += 1
        self.byte_count += RECORD_HEADER_SIZE + length

    def flush(self) -> None:
        """Hand buffered records to the operating system (survives a killed process)."""
        self._out.flush()


def iter_journal_records(data: bytes | memoryview) -> Iterator[MediaPacket]:
    """Yield the records after the header, stopping silently at a torn last record."""
    for _, packet in _whole_records(memoryview(data), HEADER_SIZE):
        yield packet


def _whole_records(buffer: bytes | memoryview, at: int) -> Iterator[tuple[int, MediaPacket]]:
    """The complete records of `buffer` from `at` on, each with where its payload starts."""
    end = len(buffer)
    unpack_from = _RECORD.unpack_from
    while at + RECORD_HEADER_SIZE <= end:
        arrival_ns, timestamp, ssrc, sequence, payload_type, flags, length = unpack_from(buffer, at)
        start = at + RECORD_HEADER_SIZE
        if start + length > end:
            return  # cut short: by a crash, or by the end of the block read so far
        payload = bytes(buffer[start : start + length])
        marker = bool(flags & _FLAG_MARKER)
        packet = MediaPacket(arrival_ns, timestamp, sequence, ssrc, payload_type, marker, payload)
        yield start, packet
        at = start + length


def parse_journal(data: bytes) -> tuple[JournalHeader, list[MediaPacket]]:
    """Decode a whole journal file's bytes into its header and records."""
    header = parse_journal_header(data)
    return header, list(iter_journal_records(data))


def read_journal_columns(data: bytes) -> tuple[JournalHeader, PacketColumns]:
    """Decode a journal into its header and its records as columns over `data` (compact)."""
    header = parse_journal_header(data)
    columns = PacketColumns(data)
    offset = HEADER_SIZE
    end = len(data)
    unpack_from = _RECORD.unpack_from
    append = columns.append
    while offset + RECORD_HEADER_SIZE <= end:
        arrival_ns, timestamp, ssrc, sequence, payload_type, flags, length = unpack_from(
            data, offset
        )
        start = offset + RECORD_HEADER_SIZE
        if start + length > end:
            break  # a record cut short by a crash: everything before it is whole
        append(
            arrival_ns,
            timestamp,
            sequence,
            ssrc,
            payload_type,
            bool(flags & _FLAG_MARKER),
            start,
            length,
        )
        offset = start + length
    return header, columns


class JournalEntry(NamedTuple):
    """One record read from a journal stream, with where its payload starts in the stream."""

    payload_offset: int
    packet: MediaPacket


def read_journal_stream(
    stream: BinaryIO, block_bytes: int = 1 << 20
) -> tuple[JournalHeader, Iterator[JournalEntry]]:
    """A journal's header and its records read a block at a time (a torn last record ends it)."""
    header = parse_journal_header(stream.read(HEADER_SIZE))
    return header, _iter_stream_records(stream, block_bytes)


def _iter_stream_records(stream: BinaryIO, block_bytes: int) -> Iterator[JournalEntry]:
    """Records after the header, holding one block of the stream at a time."""
    buffer = b""
    base = HEADER_SIZE  # stream offset of buffer[0]
    at = 0
    while True:
        block = stream.read(block_bytes)
        if block:
            buffer = buffer[at:] + block
            base += at
            at = 0
        for start, packet in _whole_records(buffer, at):
            yield JournalEntry(base + start, packet)
            at = start + len(packet.payload)
        if not block:
            return  # whatever is left is a record cut short by a crash
