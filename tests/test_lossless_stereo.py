"""Tests for the lossless two-stream stereo mux (RFC 7845 family 1, RFC 6716 Appendix B)."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from mediaserver.audio.lossless_stereo import (
    LosslessResult,
    build_self_delimited_packet,
    mux_lossless_stereo,
)
from mediaserver.audio.ogg_opus_reader import OggOpusReader
from mediaserver.audio.ogg_opus_writer import OggOpusWriter
from mediaserver.errors import MergeError

from audio_oracle import encode_tone_packets

SAMPLE_RATE_HZ = 48000


def frame_length_bytes(size: int) -> bytes:
    """RFC 6716 §3.2.1 frame length: one byte below 252, else two."""
    if size < 252:
        return bytes((size,))
    first = 252 + (size & 3)
    return bytes((first, (size - first) // 4))


def as_code_2(packets: list[bytes]) -> list[bytes]:
    """Pair consecutive one-frame packets into two-frame VBR packets (RFC 6716 §3.2.4)."""
    paired = []
    for first, second in zip(packets[0::2], packets[1::2], strict=False):
        toc = (first[0] & 0xFC) | 0x02
        paired.append(bytes((toc,)) + frame_length_bytes(len(first) - 1) + first[1:] + second[1:])
    return paired


def as_code_3_vbr_padded(packets: list[bytes]) -> list[bytes]:
    """Group three one-frame packets into padded VBR code 3 packets (RFC 6716 §3.2.5)."""
    grouped = []
    for index in range(0, len(packets) - 2, 3):
        frames = [packet[1:] for packet in packets[index : index + 3]]
        toc = (packets[index][0] & 0xFC) | 0x03
        header = bytes((toc, 0x80 | 0x40 | 3, 255, 10))  # VBR, padded by 254 + 10 bytes, M=3
        lengths = frame_length_bytes(len(frames[0])) + frame_length_bytes(len(frames[1]))
        grouped.append(header + lengths + b"".join(frames) + bytes(264))
    return grouped


def write_mono(
    packets: list[bytes],
    duration_samples: int,
    end_trim_samples: int = 0,
    **options: Any,
) -> bytes:
    """A mono Ogg Opus file of packets that each last `duration_samples`."""
    out = io.BytesIO()
    writer = OggOpusWriter(out, **options)
    for packet in packets:
        writer.write_packet(packet, duration_samples)
    writer.close(end_trim_samples=end_trim_samples)
    return out.getvalue()


def decode_ogg(data: bytes) -> np.ndarray:
    """Decode an Ogg Opus file with PyAV to a (channels, samples) float array."""
    with av.open(io.BytesIO(data), "r") as container:
        frames = [frame.to_ndarray() for frame in container.decode(audio=0)]
    return np.concatenate(frames, axis=1)


def dominant_frequency_hz(samples: np.ndarray) -> float:
    """Frequency of the strongest FFT bin."""
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum)) * SAMPLE_RATE_HZ / len(samples)


def mux(left: bytes, right: bytes) -> tuple[bytes, LosslessResult]:
    """Run the mux on two files in memory; return the stereo bytes and the result."""
    out = io.BytesIO()
    result = mux_lossless_stereo(io.BytesIO(left), io.BytesIO(right), out, serial=7)
    return out.getvalue(), result


def run_opusinfo(data: bytes, tmp_path: Path) -> int:
    """opusinfo's exit status on the bytes written as a file."""
    path = tmp_path / "stereo.opus"
    path.write_bytes(data)
    return subprocess.run(["opusinfo", str(path)], capture_output=True, check=False).returncode


@pytest.fixture(scope="module")
def left_packets() -> list[bytes]:
    """One second of a 440 Hz tone in 20 ms packets."""
    return encode_tone_packets(440, 1.0)


@pytest.fixture(scope="module")
def right_packets() -> list[bytes]:
    """One second of a 1000 Hz tone in 20 ms packets."""
    return encode_tone_packets(1000, 1.0)


def test_left_and_right_keep_their_audio(
    left_packets: list[bytes], right_packets: list[bytes], tmp_path: Path
) -> None:
    """Stereo decodes to two channels, each sample-identical to its mono file's decode."""
    left = write_mono(left_packets, 960)
    right = write_mono(right_packets, 960)
    stereo, result = mux(left, right)
    assert run_opusinfo(stereo, tmp_path) == 0
    pcm = decode_ogg(stereo)
    assert pcm.shape == (2, len(left_packets) * 960 - 312)
    assert dominant_frequency_hz(pcm[0]) == pytest.approx(440, abs=2)
    assert dominant_frequency_hz(pcm[1]) == pytest.approx(1000, abs=2)
    np.testing.assert_array_equal(pcm[0], decode_ogg(left)[0])
    np.testing.assert_array_equal(pcm[1], decode_ogg(right)[0])
    reader = OggOpusReader(io.BytesIO(stereo))
    assert (reader.head.channel_count, reader.head.mapping_family) == (2, 1)
    assert (reader.head.stream_count, reader.head.coupled_count) == (2, 0)
    assert reader.head.channel_mapping == b"\x00\x01"
    assert result.packet_count == len(left_packets)
    assert result.duration_samples == pcm.shape[1]


@pytest.mark.parametrize(
    ("kind", "duration_samples"),
    [
        ("code 0, 10 ms", 480),
        ("code 0, frames over 252 bytes", 960),
        ("code 1, 40 ms", 1920),
        ("code 3, 60 ms", 2880),
        ("code 2", 1920),
        ("code 3 VBR padded", 2880),
    ],
)
def test_every_framing_is_self_delimited_correctly(
    kind: str, duration_samples: int, tmp_path: Path
) -> None:
    """Each Opus framing code, muxed as the first stream, decodes exactly as its mono file."""
    packets_by_kind = {
        "code 0, 10 ms": lambda tone: encode_tone_packets(tone, 0.5, 10),
        "code 0, frames over 252 bytes": lambda tone: encode_tone_packets(tone, 0.5, 20, 256_000),
        "code 1, 40 ms": lambda tone: encode_tone_packets(tone, 0.5, 40, 64_000),
        "code 3, 60 ms": lambda tone: encode_tone_packets(tone, 0.5, 60),
        "code 2": lambda tone: as_code_2(encode_tone_packets(tone, 0.5, 20)),
        "code 3 VBR padded": lambda tone: as_code_3_vbr_padded(encode_tone_packets(tone, 0.5, 20)),
    }
    left_packets = packets_by_kind[kind](440)
    right_packets = packets_by_kind[kind](1000)[: len(left_packets)]
    codes = {packet[0] & 3 for packet in left_packets}
    assert codes == {int(kind[5])}
    if "252" in kind:
        assert max(len(packet) for packet in left_packets) > 253
    left = write_mono(left_packets, duration_samples)
    right = write_mono(right_packets, duration_samples)
    stereo, _ = mux(left, right)
    assert run_opusinfo(stereo, tmp_path) == 0
    pcm = decode_ogg(stereo)
    np.testing.assert_array_equal(pcm[0], decode_ogg(left)[0])
    np.testing.assert_array_equal(pcm[1], decode_ogg(right)[0])


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        # code 0: TOC, then the frame's length
        (b"\xf8abc", b"\xf8\x03abc"),
        # code 0, 300-byte frame: two-byte length 252 + 4 * 12
        (b"\x78" + bytes(300), b"\x78\xfc\x0c" + bytes(300)),
        # code 1: the one length both frames share
        (b"\xf9abcd", b"\xf9\x02abcd"),
        # code 2: first length (1) is there; the second frame's (2) follows it
        (b"\xfa\x01abc", b"\xfa\x01\x02abc"),
        # code 3 CBR, M=2: after the count byte, the shared length
        (b"\xfb\x02abcd", b"\xfb\x02\x02abcd"),
        # code 3 VBR, padded by 2, M=2: count, padding length, first length, then the last's
        (b"\xfb\xc2\x02\x01abc\x00\x00", b"\xfb\xc2\x02\x01\x02abc\x00\x00"),
    ],
)
def test_self_delimited_framing_bytes(packet: bytes, expected: bytes) -> None:
    """The extra length lands where RFC 6716 Appendix B, Figures 26-30, put it."""
    assert build_self_delimited_packet(packet) == expected


def test_different_end_trims_keep_the_longer_channel(
    left_packets: list[bytes], right_packets: list[bytes], tmp_path: Path
) -> None:
    """The stereo file ends where the longer channel ends; the shorter's tail decodes as coded."""
    left = write_mono(left_packets, 960, end_trim_samples=700)
    right = write_mono(right_packets, 960, end_trim_samples=100)
    stereo, result = mux(left, right)
    assert run_opusinfo(stereo, tmp_path) == 0
    pcm = decode_ogg(stereo)
    right_pcm = decode_ogg(right)[0]
    assert pcm.shape[1] == right_pcm.size == len(right_packets) * 960 - 312 - 100
    np.testing.assert_array_equal(pcm[1], right_pcm)
    left_pcm = decode_ogg(left)[0]
    np.testing.assert_array_equal(pcm[0, : left_pcm.size], left_pcm)
    assert result.duration_samples == pcm.shape[1]


def test_missing_last_packet_becomes_silence(
    left_packets: list[bytes], right_packets: list[bytes], tmp_path: Path
) -> None:
    """A channel one packet short is padded with silence and the stereo keeps full length."""
    left = write_mono(left_packets, 960)
    right = write_mono(right_packets[:-1], 960)
    stereo, result = mux(left, right)
    assert run_opusinfo(stereo, tmp_path) == 0
    assert result.right_silence_packets == 1
    assert result.left_silence_packets == 0
    pcm = decode_ogg(stereo)
    assert pcm.shape == (2, len(left_packets) * 960 - 312)
    np.testing.assert_array_equal(pcm[0], decode_ogg(left)[0])
    right_pcm = decode_ogg(right)[0]
    np.testing.assert_array_equal(pcm[1, : right_pcm.size], right_pcm)
    # After the decoder's ~5 ms tail the padded end is silent.
    assert np.abs(pcm[1, right_pcm.size + 480 :]).max() < 1 / 32768


def test_left_shorter_is_padded_too(left_packets: list[bytes], right_packets: list[bytes]) -> None:
    """Padding works on the left channel as well."""
    left = write_mono(left_packets[:-1], 960)
    right = write_mono(right_packets, 960)
    stereo, result = mux(left, right)
    assert result.left_silence_packets == 1
    assert decode_ogg(stereo).shape == (2, len(right_packets) * 960 - 312)


def test_different_pre_skips_use_the_larger(
    left_packets: list[bytes], right_packets: list[bytes]
) -> None:
    """With pre-skips 312 and 600 the stereo uses 600 and the left channel plays 288 early."""
    left = write_mono(left_packets, 960, pre_skip_samples=312)
    right = write_mono(right_packets, 960, pre_skip_samples=600)
    stereo, result = mux(left, right)
    assert result.pre_skip_samples == 600
    assert result.left_shift_samples == 288
    assert result.right_shift_samples == 0
    pcm = decode_ogg(stereo)
    np.testing.assert_array_equal(pcm[1], decode_ogg(right)[0])
    np.testing.assert_array_equal(pcm[0], decode_ogg(left)[0][288:])


def test_empty_channels_give_a_valid_file(tmp_path: Path) -> None:
    """Two channel files without audio mux to a valid, empty stereo file."""
    stereo, _ = mux(write_mono([], 960), write_mono([], 960))
    assert run_opusinfo(stereo, tmp_path) == 0


@pytest.mark.parametrize(
    "problem",
    [
        "durations differ",
        "two packets short",
        "stereo input",
        "not ogg",
        "gains differ",
        "pre-skips too far apart",
        "invalid opus packet",
    ],
)
def test_refuses_what_it_cannot_mux(
    problem: str, left_packets: list[bytes], right_packets: list[bytes]
) -> None:
    """Unpairable input raises MergeError saying why, so the caller can re-encode instead."""
    left = write_mono(left_packets, 960)
    right = write_mono(right_packets, 960)
    if problem == "durations differ":
        right = write_mono(encode_tone_packets(1000, 1.0, 10), 480)
        message = "lasts 960 samples on the left and 480 on the right"
    elif problem == "two packets short":
        right = write_mono(right_packets[:-2], 960)
        message = "differ in length"
    elif problem == "stereo input":
        right = write_mono(right_packets, 960, channel_count=2)
        message = "right channel file is not mono"
    elif problem == "not ogg":
        left = b"RIFF" + bytes(100)
        message = "cannot read channel file"
    elif problem == "gains differ":
        right = write_mono(right_packets, 960, output_gain_q8_db=256)
        message = "output gains"
    elif problem == "pre-skips too far apart":
        right = write_mono(right_packets, 960, pre_skip_samples=312 + 961)
        message = "pre-skips differ"
    else:
        broken = [*right_packets]
        broken[10] = b"\xfb\x00"  # code 3 with a frame count of 0 (RFC 6716 R5)
        right = write_mono(broken, 960)
        message = "packet 10 is not a valid Opus packet"
    with pytest.raises(MergeError, match=message):
        mux(left, right)
