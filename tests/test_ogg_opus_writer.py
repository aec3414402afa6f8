"""Tests for OggOpusWriter: files opusinfo accepts and PyAV decodes to the right audio."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from mediaserver.audio.ogg_opus_writer import OggOpusWriter
from mediaserver.audio.ogg_page import parse_ogg_pages

from audio_oracle import encode_tone_packets

SAMPLE_RATE_HZ = 48000
PRE_SKIP_SAMPLES = 312


def decode_ogg(data: bytes) -> np.ndarray:
    """Decode an Ogg Opus file with PyAV to a (channels, samples) float array."""
    with av.open(io.BytesIO(data), "r") as container:
        frames = [frame.to_ndarray() for frame in container.decode(audio=0)]
    if not frames:
        return np.zeros((1, 0), dtype=np.float32)
    return np.concatenate(frames, axis=1)


def run_opusinfo(data: bytes, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run opusinfo on the bytes as a file."""
    path = tmp_path / "checked.opus"
    path.write_bytes(data)
    return subprocess.run(["opusinfo", str(path)], capture_output=True, text=True, check=False)


def dominant_frequency_hz(samples: np.ndarray) -> float:
    """Frequency of the strongest FFT bin."""
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum)) * SAMPLE_RATE_HZ / len(samples)


def pad_packet(packet: bytes, size: int) -> bytes:
    """Grow a one-frame packet to `size` bytes with code 3 padding (RFC 6716 §3.2.5)."""
    assert packet[0] & 0x03 == 0
    frame = packet[1:]
    padding_size = size - 2 - len(frame)
    while True:
        # Each 255 length byte adds 254 bytes of padding; the last byte adds its value.
        length_bytes = b"\xff" * (padding_size // 254) + bytes((padding_size % 254,))
        total = 2 + len(length_bytes) + len(frame) + padding_size
        if total == size:
            break
        padding_size -= total - size
    toc = bytes((packet[0] | 0x03,))
    return toc + b"\x41" + length_bytes + frame + bytes(padding_size)


def write_file(
    packets: list[tuple[bytes, int]], end_trim_samples: int = 0, **options: Any
) -> bytes:
    """Write `(packet, duration)` pairs through OggOpusWriter into bytes."""
    out = io.BytesIO()
    writer = OggOpusWriter(out, **options)
    for packet, duration_samples in packets:
        writer.write_packet(packet, duration_samples)
    writer.close(end_trim_samples=end_trim_samples)
    return out.getvalue()


@pytest.mark.parametrize("frame_duration_ms", [2.5, 5, 10, 20, 40, 60])
def test_frame_durations_decode_exactly(frame_duration_ms: float, tmp_path: Path) -> None:
    """Packets of 2.5 to 60 ms make a file opusinfo accepts, decoding to the tone and length."""
    packets = encode_tone_packets(440, 1.0, frame_duration_ms)
    duration_samples = int(frame_duration_ms * 48)
    data = write_file([(packet, duration_samples) for packet in packets])
    assert run_opusinfo(data, tmp_path).returncode == 0
    pcm = decode_ogg(data)
    assert pcm.shape == (1, len(packets) * duration_samples - PRE_SKIP_SAMPLES)
    assert dominant_frequency_hz(pcm[0]) == pytest.approx(440, abs=2)


def test_mixed_durations(tmp_path: Path) -> None:
    """Packets of different durations in one stream add up exactly."""
    packets: list[tuple[bytes, int]] = []
    for frame_duration_ms in (60, 20, 2.5, 40, 10, 5, 20):
        packets += [
            (packet, int(frame_duration_ms * 48))
            for packet in encode_tone_packets(440, 0.3, frame_duration_ms)
        ]
    data = write_file(packets)
    assert run_opusinfo(data, tmp_path).returncode == 0
    expected_samples = sum(duration for _, duration in packets) - PRE_SKIP_SAMPLES
    assert decode_ogg(data).shape == (1, expected_samples)


def test_long_file_pages(tmp_path: Path) -> None:
    """A 40 s file has gapless pages of at most ~4 KB and 1 s with rising granules."""
    packets = encode_tone_packets(440, 2.0, bit_rate=64000) * 20
    data = write_file([(packet, 960) for packet in packets], serial=0x1234)
    assert run_opusinfo(data, tmp_path).returncode == 0
    pages = list(parse_ogg_pages(data))
    assert [page.sequence for page in pages] == list(range(len(pages)))
    assert {page.serial for page in pages} == {0x1234}
    audio_pages = pages[2:]
    granules = [page.granule_position for page in audio_pages]
    assert granules == sorted(granules)
    assert granules[-1] == len(packets) * 960
    steps = np.diff([0, *granules])
    assert steps.max() <= 48000
    assert max(len(page.body) for page in audio_pages) <= 4096
    assert len(audio_pages) >= 40  # pages close at 1 s even when not full
    assert decode_ogg(data).shape == (1, len(packets) * 960 - PRE_SKIP_SAMPLES)


@pytest.mark.parametrize("end_trim_samples", [0, 1, 500, 959])
def test_end_trim(end_trim_samples: int, tmp_path: Path) -> None:
    """End trimming lowers the last granule and the decoded length by exactly that much."""
    packets = encode_tone_packets(440, 0.5)
    data = write_file([(packet, 960) for packet in packets], end_trim_samples=end_trim_samples)
    assert run_opusinfo(data, tmp_path).returncode == 0
    last_page = list(parse_ogg_pages(data))[-1]
    assert last_page.is_eos
    assert last_page.granule_position == len(packets) * 960 - end_trim_samples
    expected = len(packets) * 960 - PRE_SKIP_SAMPLES - end_trim_samples
    assert decode_ogg(data).shape == (1, expected)


def test_end_trim_can_span_the_last_page() -> None:
    """Trimming more than the last packet works when the last page holds enough packets."""
    packets = encode_tone_packets(440, 0.5)
    data = write_file([(packet, 960) for packet in packets], end_trim_samples=1500)
    assert decode_ogg(data).shape == (1, len(packets) * 960 - PRE_SKIP_SAMPLES - 1500)


@pytest.mark.parametrize("sizes", [[254, 255, 256], [510, 765], [65_025], [70_000, 255]])
def test_lacing_of_255_multiple_packets(sizes: list[int], tmp_path: Path) -> None:
    """Packets of 255*k bytes (0 lacing value) and over one page decode intact."""
    packets = encode_tone_packets(440, 0.5)
    for index, size in enumerate(sizes):
        position = 5 + 3 * index
        packets[position] = pad_packet(packets[position], size)
        assert len(packets[position]) == size
    data = write_file([(packet, 960) for packet in packets])
    assert run_opusinfo(data, tmp_path).returncode == 0
    pcm = decode_ogg(data)
    assert pcm.shape == (1, len(packets) * 960 - PRE_SKIP_SAMPLES)
    assert dominant_frequency_hz(pcm[0]) == pytest.approx(440, abs=2)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"pre_skip_samples": 3840},
        {"channel_count": 2, "stream_count": 2, "channel_mapping": b"\x00\x01"},
    ],
)
def test_stream_without_audio_is_valid(options: dict[str, Any], tmp_path: Path) -> None:
    """Closing without packets still gives a file opusinfo accepts and that decodes to nothing."""
    data = write_file([], **options)
    assert run_opusinfo(data, tmp_path).returncode == 0
    assert decode_ogg(data).shape[1] == 0


def test_header_pages(tmp_path: Path) -> None:
    """OpusHead is alone on the BOS page, OpusTags on the next, audio after, EOS only last."""
    packets = encode_tone_packets(440, 0.2)
    data = write_file(
        [(packet, 960) for packet in packets],
        vendor="test-vendor",
        comments=[("TITLE", "call 1")],
    )
    pages = list(parse_ogg_pages(data))
    assert pages[0].header_type == 0x02
    assert pages[0].body.startswith(b"OpusHead")
    assert len(pages[0].lacing_values) == 1
    assert pages[0].granule_position == 0
    assert pages[1].body.startswith(b"OpusTags")
    assert b"test-vendor" in pages[1].body
    assert [page.is_eos for page in pages] == [False] * (len(pages) - 1) + [True]
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream_tags=title", "-of", "csv=p=0", "-"],
        input=data,
        capture_output=True,
        check=True,
    )
    assert result.stdout.decode().strip() == "call 1"


def test_serial_is_random_by_default() -> None:
    """Two writers without a serial pick different ones (os.urandom)."""
    serials = {next(parse_ogg_pages(write_file([]))).serial for _ in range(4)}
    assert len(serials) == 4


def test_pages_reach_the_stream_before_close() -> None:
    """Audio pages are written as they fill; nothing waits for close()."""
    out = io.BytesIO()
    writer = OggOpusWriter(out)
    packet = encode_tone_packets(440, 0.1)[2]
    headers_size = len(out.getvalue())
    for _ in range(150):  # 3 s
        writer.write_packet(packet, 960)
    pages = list(parse_ogg_pages(out.getvalue()))
    assert len(out.getvalue()) > headers_size
    assert pages[-1].granule_position >= 2 * 48000


def test_rejects_invalid_use() -> None:
    """Empty packets, impossible durations, over-long trims and writes after close fail."""
    packet = encode_tone_packets(440, 0.1)[2]
    writer = OggOpusWriter(io.BytesIO())
    with pytest.raises(ValueError, match="empty"):
        writer.write_packet(b"", 960)
    with pytest.raises(ValueError, match="duration"):
        writer.write_packet(packet, 0)
    with pytest.raises(ValueError, match="duration"):
        writer.write_packet(packet, 5761)
    writer.write_packet(packet, 960)
    with pytest.raises(ValueError, match="pre-skip"):
        writer.close(end_trim_samples=700)
    writer = OggOpusWriter(io.BytesIO(), max_page_duration_samples=960)
    for _ in range(3):
        writer.write_packet(packet, 960)
    with pytest.raises(ValueError, match="last page"):
        writer.close(end_trim_samples=961)
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write_packet(packet, 960)
