"""Tests for OggOpusReader: headers, packets, granules and malformed input."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mediaserver.audio.ogg_opus_reader import OggOpusReader
from mediaserver.audio.ogg_opus_writer import OggOpusWriter
from mediaserver.audio.ogg_page import OggPage, build_ogg_page, parse_ogg_pages
from mediaserver.errors import OggError

from audio_oracle import encode_tone_packets

SAMPLE_RATE_HZ = 48000


@pytest.fixture(scope="module")
def tone_packets() -> list[bytes]:
    """Two seconds of 20 ms tone packets."""
    return encode_tone_packets(440, 2.0)


def write_file(packets: list[bytes], end_trim_samples: int = 0, **options: Any) -> bytes:
    """Write 20 ms packets through OggOpusWriter into bytes."""
    out = io.BytesIO()
    writer = OggOpusWriter(out, serial=99, **options)
    for packet in packets:
        writer.write_packet(packet, 960)
    writer.close(end_trim_samples=end_trim_samples)
    return out.getvalue()


def read_all(data: bytes, **options: bool) -> list[tuple[bytes, int | None]]:
    """Every audio packet the reader yields from the bytes."""
    return list(OggOpusReader(io.BytesIO(data), **options))


def join_pages(pages: list[OggPage]) -> bytes:
    """Serialize parsed pages back to bytes, CRCs recomputed."""
    return b"".join(
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


def test_reads_what_ffmpeg_wrote(tmp_path: Path) -> None:
    """An ffmpeg file gives the same packets PyAV demuxes and its final granule."""
    path = tmp_path / "ffmpeg.opus"
    subprocess.run(
        [
            *("ffmpeg", "-loglevel", "error", "-y"),
            *("-f", "lavfi", "-i", "sine=frequency=440:duration=3"),
            *("-c:a", "libopus", str(path)),
        ],
        check=True,
    )
    with path.open("rb") as stream:
        reader = OggOpusReader(stream)
        packets = list(reader)
    with av.open(str(path)) as container:
        expected = [bytes(packet) for packet in container.demux(audio=0) if packet.size]
    assert [packet for packet, _ in packets] == expected
    assert reader.head.channel_count == 1
    assert reader.head.pre_skip_samples == 312
    assert reader.tags.vendor.startswith("Lavf")
    # ffmpeg end-trims its last page to the 3 s of input plus the pre-skip.
    assert reader.last_granule_position == 3 * 48000 + 312


def test_round_trips_the_writer(tone_packets: list[bytes]) -> None:
    """Packets come back in order; each page's granule rides on its last packet."""
    data = write_file(tone_packets, end_trim_samples=100, pre_skip_samples=400)
    reader = OggOpusReader(io.BytesIO(data))
    items = list(reader)
    assert [packet for packet, _ in items] == tone_packets
    assert reader.head.pre_skip_samples == 400
    assert reader.tags.vendor == "mediaserver"
    assert reader.serial == 99
    granules = [(index, granule) for index, (_, granule) in enumerate(items) if granule]
    assert granules[-1] == (len(tone_packets) - 1, len(tone_packets) * 960 - 100)
    for index, granule in granules[:-1]:
        assert granule == (index + 1) * 960
    assert reader.last_granule_position == len(tone_packets) * 960 - 100


def test_reassembles_packets_across_pages(tone_packets: list[bytes]) -> None:
    """Packets larger than a page (continued pages) come back whole."""
    big = tone_packets[3] + bytes(70_000)
    packets = [*tone_packets[:3], big, *tone_packets[4:]]
    out = io.BytesIO()
    writer = OggOpusWriter(out)
    for packet in packets:
        writer.write_packet(packet, 960)
    writer.close()
    assert [packet for packet, _ in read_all(out.getvalue())] == packets


def test_empty_audio_stream(tone_packets: list[bytes]) -> None:
    """A stream with headers only (EOS on the tags page) yields no packets."""
    out = io.BytesIO()
    OggOpusWriter(out, serial=1)
    pages = list(parse_ogg_pages(out.getvalue()))
    eos_tags = build_ogg_page(
        header_type=0x04,
        granule_position=0,
        serial=1,
        sequence=1,
        lacing_values=pages[1].lacing_values,
        body=pages[1].body,
    )
    data = out.getvalue()[: -len(eos_tags)] + eos_tags
    assert read_all(data) == []


def test_missing_eos_is_an_error_unless_allowed(tone_packets: list[bytes]) -> None:
    """A file cut at a page boundary (a crashed writer) fails, or reads with require_eos=False."""
    data = write_file(tone_packets)
    last_page = list(parse_ogg_pages(data))[-1]
    page_size = 27 + len(last_page.lacing_values) + len(last_page.body)
    cut = data[:-page_size]
    with pytest.raises(OggError, match="without an EOS"):
        read_all(cut)
    packets = read_all(cut, require_eos=False)
    assert [packet for packet, _ in packets] == tone_packets[: len(packets)]


def _with_page(data: bytes, index: int, **fields: Any) -> bytes:
    pages = list(parse_ogg_pages(data))
    pages[index] = dataclasses.replace(pages[index], **fields)
    return join_pages(pages)


def _drop_page(data: bytes, index: int) -> bytes:
    pages = list(parse_ogg_pages(data))
    del pages[index]
    return join_pages(pages)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        ("empty", "empty"),
        ("bad_crc", "CRC"),
        ("truncated", "truncated"),
        ("not_opus", "not an OpusHead"),
        ("head_only", "before its OpusTags"),
        ("no_bos", "BOS"),
        ("two_bos", "BOS flag on a page after"),
        ("sequence_gap", "sequence jumps"),
        ("other_serial", "another logical stream"),
        ("bad_continued", "continues a packet"),
        ("no_granule", "no granule"),
        ("chained", "chained"),
        ("tags_shares_page", "OpusTags header must end"),
    ],
)
def test_rejects_malformed_streams(corrupt: str, message: str, tone_packets: list[bytes]) -> None:
    """Each kind of damaged or non-Opus stream raises OggError naming the problem."""
    data = write_file(tone_packets[:60], max_page_duration_samples=9600)
    pages = list(parse_ogg_pages(data))
    head_and_tags = data[
        : 2 * 27 + sum(len(page.lacing_values) + len(page.body) for page in pages[:2])
    ]
    corruptions: dict[str, Callable[[], bytes]] = {
        "empty": lambda: b"",
        "bad_crc": lambda: data[:-1] + bytes((data[-1] ^ 1,)),
        "truncated": lambda: data[:-3],
        "not_opus": lambda: _with_page(data, 0, body=b"\x01vorbis" + bytes(12)),
        "head_only": lambda: data[: 27 + 1 + len(pages[0].body)],
        "no_bos": lambda: _with_page(data, 0, header_type=0),
        "two_bos": lambda: _with_page(data, 3, header_type=0x02),
        "sequence_gap": lambda: _drop_page(data, 3),
        "other_serial": lambda: _with_page(data, 4, serial=5),
        "bad_continued": lambda: _with_page(data, 3, header_type=0x01),
        "no_granule": lambda: _with_page(data, 3, granule_position=-1),
        "chained": lambda: data + head_and_tags,
        "tags_shares_page": lambda: _with_page(
            data,
            1,
            lacing_values=pages[1].lacing_values + b"\x03",
            body=pages[1].body + b"abc",
        ),
    }
    corrupted = corruptions[corrupt]()
    with pytest.raises(OggError, match=message):
        read_all(corrupted)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 255)), max_size=3),
    st.integers(0, 100_000),
)
def test_fuzz_damaged_files(
    tone_packets: list[bytes], flips: list[tuple[int, int]], cut: int
) -> None:
    """Bytes changed or cut off anywhere give OggError or a clean read, nothing else."""
    data = bytearray(write_file(tone_packets[:30], max_page_duration_samples=4800))
    for position, value in flips:
        data[position % len(data)] = value
    damaged = bytes(data[: len(data) - cut % (len(data) + 1)])
    with contextlib.suppress(OggError):
        read_all(damaged)


@settings(max_examples=150)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    """Random bytes after a capture pattern give OggError or a clean read."""
    with contextlib.suppress(OggError):
        read_all(b"OggS" + data)
