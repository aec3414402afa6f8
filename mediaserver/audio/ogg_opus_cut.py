"""Pieces of an Ogg Opus file, remuxed without re-encoding: by size limit, or by time span."""

# A piece is a whole Ogg Opus stream of its own (RFC 7845 headers, granules from zero), made of
# the source's packets unchanged. A piece that starts inside the source begins with up to 80 ms
# of the packets before it, which its pre-skip discards: RFC 7845 §4.4 asks a decoder to start
# that early to converge. `offset_s` says where the piece's first audible sample is in the
# source's time (which starts after the source's own pre-skip).

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mediaserver.audio.ogg_opus_reader import OggOpusReader
from mediaserver.audio.ogg_opus_writer import OggOpusWriter
from mediaserver.audio.opus_toc import compute_packet_samples

OPUS_RATE_HZ = 48000
# Headers (two pages) and page overhead (27 bytes + lacing per ~4 KB page) on top of the packets.
HEADER_ALLOWANCE_BYTES = 1024
PAGE_OVERHEAD_FRACTION = 0.02
WARM_UP_SAMPLES = 3840  # RFC 7845 §4.4: decode at least 80 ms before the wanted start


@dataclass(frozen=True, slots=True)
class OggPiece:
    """One piece written to disk and where it starts in the source."""

    path: Path
    offset_s: float
    duration_s: float


@dataclass(frozen=True, slots=True)
class _Packet:
    """A source packet and its place: samples from the start of the stream (pre-skip included)."""

    data: bytes
    start: int
    samples: int


def split_ogg_opus_file(source: Path, out_dir: Path, *, max_bytes: int) -> list[OggPiece]:
    """Cut a mono Ogg Opus file into pieces of at most `max_bytes` each (a worker's task)."""
    budget = int(max_bytes * (1 - PAGE_OVERHEAD_FRACTION)) - HEADER_ALLOWANCE_BYTES
    with source.open("rb") as stream:
        reader = OggOpusReader(stream)
        pre_skip = reader.head.pre_skip_samples
        packets = list(_packets(reader))
    pieces: list[OggPiece] = []
    first = 0
    while first < len(packets):
        warm_up = _warm_up_start(packets, first)
        size = sum(len(p.data) for p in packets[warm_up:first])
        last = first
        while last < len(packets) and size + len(packets[last].data) <= budget:
            size += len(packets[last].data)
            last += 1
        if last == first:
            raise ValueError(f"a piece of {max_bytes} bytes cannot hold an Ogg Opus stream")
        pieces.append(_write(out_dir, len(pieces), packets, warm_up, first, last, pre_skip))
        first = last
    return pieces


def cut_ogg_opus_file(
    source: Path, spans_s: Sequence[tuple[float, float]], out_dir: Path
) -> list[OggPiece]:
    """One piece per (start_s, end_s) span: the packets that overlap it (a worker's task)."""
    with source.open("rb") as stream:
        reader = OggOpusReader(stream)
        pre_skip = reader.head.pre_skip_samples
        packets = list(_packets(reader))
    pieces: list[OggPiece] = []
    for start_s, end_s in spans_s:
        first_sample = round(start_s * OPUS_RATE_HZ) + pre_skip
        last_sample = round(end_s * OPUS_RATE_HZ) + pre_skip
        inside = [
            index
            for index, p in enumerate(packets)
            if p.start < last_sample and p.start + p.samples > first_sample
        ]
        if inside:
            first, last = inside[0], inside[-1] + 1
            warm_up = _warm_up_start(packets, first)
            pieces.append(_write(out_dir, len(pieces), packets, warm_up, first, last, pre_skip))
    return pieces


def _packets(reader: OggOpusReader) -> Iterator[_Packet]:
    """The reader's packets with their start positions."""
    position = 0
    for data, _ in reader:
        samples = compute_packet_samples(data) if data else 0
        yield _Packet(data, position, samples)
        position += samples


def _warm_up_start(packets: Sequence[_Packet], first: int) -> int:
    """The index of the earliest packet within WARM_UP_SAMPLES before packet `first`."""
    start = first
    while start > 0 and packets[first].start - packets[start - 1].start <= WARM_UP_SAMPLES:
        start -= 1
    return start


def _write(
    out_dir: Path,
    index: int,
    packets: Sequence[_Packet],
    warm_up: int,
    first: int,
    last: int,
    source_pre_skip: int,
) -> OggPiece:
    """Write packets [warm_up, last) as a stream whose audible part starts at packet `first`."""
    path = out_dir / f"piece-{index:04d}.ogg"
    # The audible start: packet `first`, or the source's own start if that is later.
    audible = max(packets[first].start, source_pre_skip)
    pre_skip = audible - packets[warm_up].start
    with path.open("wb") as out:
        writer = OggOpusWriter(out, channel_count=1, pre_skip_samples=pre_skip)
        for packet in packets[warm_up:last]:
            writer.write_packet(packet.data, packet.samples)
        writer.close()
    end = packets[last - 1].start + packets[last - 1].samples
    return OggPiece(
        path,
        (audible - source_pre_skip) / OPUS_RATE_HZ,
        (end - audible) / OPUS_RATE_HZ,
    )
