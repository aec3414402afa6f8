"""Tests for Opus TOC parsing and packet sample counts (RFC 6716 §3.1-3.2)."""

from __future__ import annotations

import ctypes
import ctypes.util
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mediaserver.audio.opus_toc import (
    OpusBandwidth,
    OpusMode,
    OpusToc,
    compute_frame_count,
    compute_packet_samples,
    frame_duration_samples,
    parse_opus_toc,
)
from mediaserver.errors import OpusPacketError

_LIBOPUS_PATH = ctypes.util.find_library("opus")
# libopus's opus_defines.h bandwidth constants.
LIBOPUS_BANDWIDTHS = {
    1101: OpusBandwidth.NARROWBAND,
    1102: OpusBandwidth.MEDIUMBAND,
    1103: OpusBandwidth.WIDEBAND,
    1104: OpusBandwidth.SUPERWIDEBAND,
    1105: OpusBandwidth.FULLBAND,
}
MAX_PACKET_SAMPLES_48K = 5760


def libopus() -> ctypes.CDLL:
    """The system libopus, the reference implementation of RFC 6716."""
    assert _LIBOPUS_PATH is not None
    return ctypes.CDLL(_LIBOPUS_PATH)


def libopus_packet_samples(data: bytes, sample_rate_hz: int = 48000) -> int | None:
    """Samples in a packet per libopus's own framing parser, None if it rejects the packet."""
    lib = libopus()
    frame_sizes = (ctypes.c_int16 * 48)()
    frame_count = lib.opus_packet_parse(data, len(data), None, None, frame_sizes, None)
    if frame_count < 0:
        return None
    return int(frame_count * lib.opus_packet_get_samples_per_frame(data, sample_rate_hz))


TOC_CASES = [
    # TOC byte, then config (bits 7-3), stereo (bit 2), frame count code (bits 1-0).
    pytest.param(0x00, OpusToc(0, OpusMode.SILK, OpusBandwidth.NARROWBAND, 10_000, False, 0),
                 id="config 0: SILK NB 10 ms, mono, code 0"),
    pytest.param(0x4B, OpusToc(9, OpusMode.SILK, OpusBandwidth.WIDEBAND, 20_000, False, 3),
                 id="config 9: SILK WB 20 ms, mono, code 3"),
    pytest.param(0x1D, OpusToc(3, OpusMode.SILK, OpusBandwidth.NARROWBAND, 60_000, True, 1),
                 id="config 3: SILK NB 60 ms, stereo, code 1"),
    pytest.param(0x2A, OpusToc(5, OpusMode.SILK, OpusBandwidth.MEDIUMBAND, 20_000, False, 2),
                 id="config 5: SILK MB 20 ms, mono, code 2"),
    pytest.param(0x60, OpusToc(12, OpusMode.HYBRID, OpusBandwidth.SUPERWIDEBAND, 10_000, False, 0),
                 id="config 12: Hybrid SWB 10 ms"),
    pytest.param(0x7C, OpusToc(15, OpusMode.HYBRID, OpusBandwidth.FULLBAND, 20_000, True, 0),
                 id="config 15: Hybrid FB 20 ms, stereo"),
    pytest.param(0x80, OpusToc(16, OpusMode.CELT, OpusBandwidth.NARROWBAND, 2_500, False, 0),
                 id="config 16: CELT NB 2.5 ms"),
    pytest.param(0xB1, OpusToc(22, OpusMode.CELT, OpusBandwidth.WIDEBAND, 10_000, False, 1),
                 id="config 22: CELT WB 10 ms, code 1"),
    pytest.param(0xC8, OpusToc(25, OpusMode.CELT, OpusBandwidth.SUPERWIDEBAND, 5_000, False, 0),
                 id="config 25: CELT SWB 5 ms"),
    pytest.param(0xF8, OpusToc(31, OpusMode.CELT, OpusBandwidth.FULLBAND, 20_000, False, 0),
                 id="config 31: CELT FB 20 ms (typical WebRTC)"),
    pytest.param(0xFF, OpusToc(31, OpusMode.CELT, OpusBandwidth.FULLBAND, 20_000, True, 3),
                 id="config 31: CELT FB 20 ms, stereo, code 3"),
]  # fmt: skip


@pytest.mark.parametrize(("toc", "expected"), TOC_CASES)
def test_parse_toc_table(toc: int, expected: OpusToc) -> None:
    """TOC bytes decode to the configuration, mode, bandwidth, frame size, channels and code."""
    assert parse_opus_toc(bytes([toc])) == expected


@pytest.mark.parametrize("toc", range(256))
def test_toc_agrees_with_libopus(toc: int) -> None:
    """Bandwidth, channel count and frame size of every TOC byte match libopus's accessors."""
    lib = libopus()
    data = bytes([toc])
    parsed = parse_opus_toc(data)
    assert parsed.bandwidth == LIBOPUS_BANDWIDTHS[lib.opus_packet_get_bandwidth(data)]
    assert (2 if parsed.stereo else 1) == lib.opus_packet_get_nb_channels(data)
    for sample_rate_hz in (8000, 12000, 16000, 24000, 48000):
        assert frame_duration_samples(parsed.config, sample_rate_hz) == (
            lib.opus_packet_get_samples_per_frame(data, sample_rate_hz)
        )


PACKET_CASES = [
    pytest.param(bytes([0xF8]), 960, id="code 0, empty frame (DTX): 1 x 20 ms"),
    pytest.param(bytes([0xF8]) + bytes(1275), 960, id="code 0, 1275-byte frame: 1 x 20 ms"),
    pytest.param(bytes([0x18]) + bytes(40), 2880, id="code 0, SILK NB 60 ms"),
    pytest.param(bytes([0xF9]), 1920, id="code 1, two empty frames: 2 x 20 ms"),
    pytest.param(bytes([0x81]) + bytes(10), 240, id="code 1, two 5-byte frames: 2 x 2.5 ms"),
    pytest.param(bytes([0xFA, 0x00]), 1920, id="code 2, two empty frames"),
    pytest.param(bytes([0xFA, 0x03]) + bytes(5), 1920, id="code 2, frames of 3 and 2 bytes"),
    pytest.param(bytes([0x1A, 0xFC, 0x01, *bytes(256)]), 5760,
                 id="code 2, two-byte length 252 + 4 x 1 = 256: 2 x 60 ms"),
    pytest.param(bytes([0xFB, 0x01]), 960, id="code 3 CBR, M=1, empty frame"),
    pytest.param(bytes([0xFB, 0x06]) + bytes(12), 5760, id="code 3 CBR, M=6 x 20 ms = 120 ms"),
    pytest.param(bytes([0x83, 0x30]), 5760, id="code 3 CBR, M=48 x 2.5 ms = 120 ms, empty"),
    pytest.param(bytes([0xFB, 0x43, 0x02]) + bytes(3) + bytes(2), 2880,
                 id="code 3 CBR padded: M=3, 2 bytes padding, three 1-byte frames"),
    pytest.param(bytes([0xFB, 0x43, 0xFF, 0x00]) + bytes(254), 2880,
                 id="code 3 CBR padded: 255 then 0 = 254 bytes padding, empty frames"),
    pytest.param(bytes([0xFB, 0x83, 0x01, 0x02]) + bytes(6), 2880,
                 id="code 3 VBR: M=3, frames of 1, 2 and 3 bytes"),
    pytest.param(bytes([0xFB, 0xC2, 0x01, 0x05]) + bytes(5) + bytes(1), 1920,
                 id="code 3 VBR padded: 1 byte padding, frames of 5 and 0 bytes"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "expected_samples"), PACKET_CASES)
def test_packet_samples_table(data: bytes, expected_samples: int) -> None:
    """Hand-assembled packets of each frame count code count frames times the frame size."""
    assert compute_packet_samples(data) == expected_samples


@pytest.mark.parametrize(("data", "expected_samples"), PACKET_CASES)
def test_packet_table_agrees_with_libopus(data: bytes, expected_samples: int) -> None:
    """libopus's framing parser accepts each table packet with the same sample count."""
    assert libopus_packet_samples(data) == expected_samples


@pytest.mark.parametrize("sample_rate_hz", [8000, 12000, 16000, 24000, 48000])
def test_packet_samples_scale_with_sample_rate(sample_rate_hz: int) -> None:
    """Sample counts at the other Opus rates are the 48 kHz count scaled down."""
    data = bytes([0x83, 0x30])  # 48 x 2.5 ms
    assert compute_packet_samples(data, sample_rate_hz) == 120 * sample_rate_hz // 1000


def test_frame_duration_samples_rejects_non_opus_rate() -> None:
    """44.1 kHz is not a rate Opus decodes at."""
    with pytest.raises(ValueError, match="44100 Hz is not an Opus sample rate"):
        frame_duration_samples(31, 44100)


def test_frame_duration_samples_rejects_config_beyond_31() -> None:
    """The TOC has five configuration bits."""
    with pytest.raises(ValueError, match="Opus configuration 32 is outside 0-31"):
        frame_duration_samples(32)


@pytest.mark.parametrize("parse", [parse_opus_toc, compute_packet_samples, compute_frame_count])
def test_rejects_empty_packet(parse: object) -> None:
    """R1: a packet has at least the TOC byte."""
    with pytest.raises(OpusPacketError, match=r"Opus packet is empty.*R1"):
        parse(b"")  # type: ignore[operator]


def test_rejects_code_0_frame_over_1275_bytes() -> None:
    """R2: a code 0 frame of 1276 bytes is too long."""
    with pytest.raises(OpusPacketError, match=r"frame of 1276 bytes is longer than 1275.*R2"):
        compute_packet_samples(bytes([0xF8]) + bytes(1276))


def test_rejects_code_1_frames_over_1275_bytes() -> None:
    """R2: code 1 halves over 1275 bytes are too long."""
    with pytest.raises(OpusPacketError, match=r"frame of 1276 bytes.*R2"):
        compute_packet_samples(bytes([0xF9]) + bytes(2552))


def test_rejects_code_1_odd_payload() -> None:
    """R3: code 1 frames are equal, so the bytes after the TOC must be even."""
    with pytest.raises(OpusPacketError, match=r"code 1 packet has an odd payload of 3 bytes.*R3"):
        compute_packet_samples(bytes([0xF9, 1, 2, 3]))


def test_rejects_code_2_without_length() -> None:
    """R4: code 2 needs a length byte after the TOC."""
    with pytest.raises(
        OpusPacketError, match=r"missing the length of its code 2 first frame \(R4\)"
    ):
        compute_packet_samples(bytes([0xFA]))


def test_rejects_code_2_truncated_two_byte_length() -> None:
    """R4: a first length byte of 252-255 needs a second byte."""
    with pytest.raises(OpusPacketError, match=r"truncated two-byte length.*code 2 first frame"):
        compute_packet_samples(bytes([0xFA, 0xFC]))


def test_rejects_code_2_first_frame_overrun() -> None:
    """R4: the first frame's length cannot exceed the bytes that remain."""
    with pytest.raises(OpusPacketError, match=r"first frame of 5 bytes overruns the 4 bytes.*R4"):
        compute_packet_samples(bytes([0xFA, 0x05]) + bytes(4))


def test_rejects_code_2_second_frame_over_1275_bytes() -> None:
    """R2: the implied second frame of a code 2 packet is at most 1275 bytes."""
    with pytest.raises(OpusPacketError, match=r"frame of 1276 bytes.*R2"):
        compute_packet_samples(bytes([0xFA, 0x00]) + bytes(1276))


def test_rejects_code_3_without_frame_count_byte() -> None:
    """R6/R7: code 3 needs its frame count byte."""
    with pytest.raises(OpusPacketError, match="code 3 packet has no frame count byte"):
        compute_packet_samples(bytes([0xFB]))


def test_rejects_code_3_zero_frames() -> None:
    """R5: code 3 packets hold at least one frame."""
    with pytest.raises(OpusPacketError, match=r"frame count of zero.*R5"):
        compute_packet_samples(bytes([0xFB, 0x00]))


def test_rejects_code_3_over_120_ms() -> None:
    """R5: seven 20 ms frames are 140 ms, over the 120 ms limit."""
    with pytest.raises(OpusPacketError, match=r"holds 7 frames, 140 ms, more than 120 ms.*R5"):
        compute_packet_samples(bytes([0xFB, 0x07]))


def test_rejects_code_3_over_120_ms_of_short_frames() -> None:
    """R5: forty-nine 2.5 ms frames are 122.5 ms."""
    with pytest.raises(OpusPacketError, match=r"holds 49 frames, 122.5 ms"):
        compute_packet_samples(bytes([0x83, 0x31]))


def test_rejects_code_3_truncated_padding_length() -> None:
    """R6/R7: a padding length of 255 promises another length byte."""
    with pytest.raises(OpusPacketError, match="truncated padding length"):
        compute_packet_samples(bytes([0xFB, 0x41, 0xFF]))


def test_rejects_code_3_padding_overrun() -> None:
    """R6/R7: the padding cannot be longer than the bytes left."""
    with pytest.raises(OpusPacketError, match="has 10 bytes of padding but only 3 bytes left"):
        compute_packet_samples(bytes([0xFB, 0x41, 0x0A]) + bytes(3))


def test_rejects_code_3_cbr_uneven_split() -> None:
    """R6: CBR frame data must split evenly into M frames."""
    with pytest.raises(OpusPacketError, match=r"5 bytes of frame data do not split into 2.*R6"):
        compute_packet_samples(bytes([0xFB, 0x02]) + bytes(5))


def test_rejects_code_3_cbr_frames_over_1275_bytes() -> None:
    """R2: each CBR frame is at most 1275 bytes."""
    with pytest.raises(OpusPacketError, match=r"frame of 1276 bytes.*R2"):
        compute_packet_samples(bytes([0xFB, 0x02]) + bytes(2552))


def test_rejects_code_3_vbr_missing_length() -> None:
    """R7: a VBR packet needs a length for every frame but the last."""
    with pytest.raises(
        OpusPacketError, match=r"missing the length of its code 3 VBR frame 1 \(R7\)"
    ):
        compute_packet_samples(bytes([0xFB, 0x83, 0x00]))


def test_rejects_code_3_vbr_length_in_padding() -> None:
    """R7: frame lengths cannot be read from the padding."""
    with pytest.raises(OpusPacketError, match=r"missing the length of its code 3 VBR frame 0"):
        compute_packet_samples(bytes([0xFB, 0xC2, 0x01, 0x00]))


def test_rejects_code_3_vbr_frames_overrun() -> None:
    """R7: the coded frame lengths cannot add up to more than the bytes left."""
    with pytest.raises(
        OpusPacketError, match=r"VBR frames of 7 bytes overrun the 5 bytes left.*R7"
    ):
        compute_packet_samples(bytes([0xFB, 0x83, 0x03, 0x04]) + bytes(5))


def test_rejects_code_3_vbr_last_frame_over_1275_bytes() -> None:
    """R2: the implied last VBR frame is at most 1275 bytes."""
    with pytest.raises(OpusPacketError, match=r"frame of 1276 bytes.*R2"):
        compute_packet_samples(bytes([0xFB, 0x82, 0x00]) + bytes(1276))


@given(st.binary(max_size=40) | st.binary(min_size=1270, max_size=2600))
@example(bytes([0xFB, 0xC1, 0xFF, 0xFF]) + bytes(600))  # two 255 padding bytes, then 0x00
def test_fuzz_agrees_with_libopus(data: bytes) -> None:
    """Arbitrary bytes are rejected exactly when libopus rejects them, else counted the same."""
    try:
        ours: int | None = compute_packet_samples(data)
    except OpusPacketError:
        ours = None
    assert ours == libopus_packet_samples(data)


@given(st.binary(max_size=3000))
def test_fuzz_raises_or_counts_at_most_120_ms(data: bytes) -> None:
    """Arbitrary bytes raise OpusPacketError or count between 1 sample and 120 ms at 48 kHz."""
    try:
        samples = compute_packet_samples(data)
    except OpusPacketError:
        return
    assert 0 < samples <= MAX_PACKET_SAMPLES_48K


def encode_with_pyav(frame_duration: str, application: str, bit_rate: int) -> list[av.Packet[Any]]:
    """Encode 0.48 s of a 440 Hz tone with FFmpeg's libopus wrapper at one frame duration."""
    context = av.CodecContext.create("libopus", "w")
    context.sample_rate = 48000
    context.layout = "mono"
    context.format = "s16"
    context.bit_rate = bit_rate
    context.time_base = Fraction(1, 48000)
    context.options = {"frame_duration": frame_duration, "application": application}
    context.open()
    time_s = np.arange(23040) / 48000
    tone = (np.sin(2 * np.pi * 440 * time_s) * 10000).astype(np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
    frame.sample_rate = 48000
    frame.pts = 0
    return [*context.encode(frame), *context.encode(None)]


@pytest.mark.parametrize("frame_duration", ["2.5", "5", "10", "20", "40", "60", "80", "120"])
@pytest.mark.parametrize(
    ("application", "bit_rate"), [("audio", 64000), ("voip", 12000)], ids=["celt", "silk"]
)
def test_sample_count_matches_pyav_packet_duration(
    frame_duration: str, application: str, bit_rate: int
) -> None:
    """Every libopus packet (but the end-trimmed last) counts what FFmpeg stamps as its duration."""
    packets = encode_with_pyav(frame_duration, application, bit_rate)
    assert len(packets) > 2
    expected_samples = round(float(frame_duration) * 48)
    for packet in packets[:-1]:
        assert packet.time_base == Fraction(1, 48000)
        assert packet.duration == expected_samples
        assert compute_packet_samples(bytes(packet)) == packet.duration
