"""Tests for G.711 μ-law and A-law coding."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import av
import numpy as np
import numpy.typing as npt
import pytest

from mediaserver.audio.g711 import decode_pcma, decode_pcmu, encode_pcma, encode_pcmu

Decoder = Callable[[bytes], npt.NDArray[np.int16]]
Encoder = Callable[[npt.NDArray[np.int16]], bytes]
CODECS = [
    pytest.param("pcm_mulaw", decode_pcmu, encode_pcmu, id="pcmu"),
    pytest.param("pcm_alaw", decode_pcma, encode_pcma, id="pcma"),
]
ALL_CODES = bytes(range(256))
ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)


def encode_with_ffmpeg(codec_name: str, samples: npt.NDArray[np.int16]) -> bytes:
    """Encode mono 8 kHz samples with FFmpeg's G.711 encoder through PyAV."""
    context = cast("av.AudioCodecContext", av.CodecContext.create(codec_name, "w"))
    context.sample_rate = 8000
    context.layout = "mono"
    context.format = "s16"
    context.open()
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    return b"".join(bytes(packet) for packet in [*context.encode(frame), *context.encode(None)])


def decode_with_ffmpeg(codec_name: str, data: bytes) -> npt.NDArray[np.int16]:
    """Decode G.711 bytes with FFmpeg's decoder through PyAV."""
    context = cast("av.AudioCodecContext", av.CodecContext.create(codec_name, "r"))
    context.sample_rate = 8000
    context.layout = "mono"
    frames = context.decode(av.Packet(data))
    return np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames])


@pytest.mark.parametrize(
    ("code", "sample"),
    [
        (0xFF, 0),  # positive zero
        (0x7F, 0),  # negative zero
        (0x00, -32124),  # most negative
        (0x80, 32124),  # most positive
        (0xFE, 8),  # smallest positive level: 2 in 14-bit units
        (0x70, -120),  # last level of the first segment: -30 in 14-bit units
        (0xEF, 132),  # first level of the second segment: 33 in 14-bit units
        (0x6F, -132),
    ],
)
def test_pcmu_known_values(code: int, sample: int) -> None:
    """μ-law codes decode to the values of G.711 Table 2 (scaled to 16 bits)."""
    assert decode_pcmu(bytes([code])).tolist() == [sample]


@pytest.mark.parametrize(
    ("code", "sample"),
    [
        (0xD5, 8),  # smallest positive (even bits inverted on the wire)
        (0x55, -8),  # smallest negative
        (0xAA, 32256),  # most positive
        (0x2A, -32256),  # most negative
        (0xC5, 264),  # first level of segment 2: 33 in 12-bit units
        (0xF5, 528),  # first level of segment 3: 66 in 12-bit units
        (0xE5, 1056),  # first level of segment 4: 132 in 12-bit units
    ],
)
def test_pcma_known_values(code: int, sample: int) -> None:
    """A-law codes decode to the values of G.711 Table 1 (scaled to 16 bits)."""
    assert decode_pcma(bytes([code])).tolist() == [sample]


@pytest.mark.parametrize(("codec_name", "decode", "encode"), CODECS)
def test_decode_matches_ffmpeg_for_every_code(
    codec_name: str, decode: Decoder, encode: Encoder
) -> None:
    """All 256 codes decode to what FFmpeg's decoder gives."""
    expected = decode_with_ffmpeg(codec_name, ALL_CODES)
    assert decode(ALL_CODES).tolist() == expected.tolist()


def test_pcmu_every_code_round_trips_but_negative_zero() -> None:
    """Decoding then encoding every μ-law code gives it back, except 0x7F (-0) which becomes +0."""
    round_tripped = encode_pcmu(decode_pcmu(ALL_CODES))
    expected = bytearray(ALL_CODES)
    expected[0x7F] = 0xFF
    assert round_tripped == bytes(expected)


def test_pcma_every_code_round_trips() -> None:
    """Decoding then encoding every A-law code gives it back."""
    assert encode_pcma(decode_pcma(ALL_CODES)) == ALL_CODES


@pytest.mark.parametrize(("codec_name", "decode", "encode"), CODECS)
def test_encode_matches_ffmpeg_on_a_sine(codec_name: str, decode: Decoder, encode: Encoder) -> None:
    """A full-scale 440 Hz sine encodes to the same bytes as FFmpeg's encoder."""
    time_s = np.arange(8000) / 8000
    sine = (np.sin(2 * np.pi * 440 * time_s) * 30000).astype(np.int16)
    assert encode(sine) == encode_with_ffmpeg(codec_name, sine)


@pytest.mark.parametrize(("codec_name", "decode", "encode"), CODECS)
def test_encode_differs_from_ffmpeg_only_between_neighbouring_levels(
    codec_name: str, decode: Decoder, encode: Encoder
) -> None:
    """Over every int16, where FFmpeg's midpoint rule and G.711's decision values disagree, both
    codes decode to the two levels that bracket the sample."""
    ours = decode(encode(ALL_SAMPLES)).astype(np.int32)
    theirs = decode(encode_with_ffmpeg(codec_name, ALL_SAMPLES)).astype(np.int32)
    differs = ours != theirs
    samples = ALL_SAMPLES.astype(np.int32)[differs]
    low = np.minimum(ours[differs], theirs[differs])
    high = np.maximum(ours[differs], theirs[differs])
    assert ((low <= samples) & (samples <= high)).all()
    levels = np.unique(decode(ALL_CODES))
    assert (np.searchsorted(levels, high) - np.searchsorted(levels, low) == 1).all()


@pytest.mark.parametrize(("codec_name", "decode", "encode"), CODECS)
def test_encode_is_a_monotonic_quantizer(codec_name: str, decode: Decoder, encode: Encoder) -> None:
    """Over every int16, the decoded level never falls as the input rises, and every level lies
    inside the run of inputs that map to it."""
    decoded = decode(encode(ALL_SAMPLES)).astype(np.int32)
    assert (np.diff(decoded) >= 0).all()
    run_starts = np.flatnonzero(np.diff(decoded, prepend=decoded[0] - 1))
    run_ends = np.append(run_starts[1:], len(decoded)) - 1
    first_inputs = ALL_SAMPLES[run_starts].astype(np.int32)
    last_inputs = ALL_SAMPLES[run_ends].astype(np.int32)
    levels = decoded[run_starts]
    assert ((first_inputs <= levels) & (levels <= last_inputs)).all()


def test_encode_accepts_strided_views() -> None:
    """Encoding a non-contiguous view (e.g. one channel of interleaved stereo) works."""
    stereo = np.array([[100, -100], [2000, -2000], [30000, -30000]], dtype=np.int16)
    assert encode_pcmu(stereo[:, 0]) == encode_pcmu(np.ascontiguousarray(stereo[:, 0]))
    assert encode_pcma(stereo[:, 1]) == encode_with_ffmpeg("pcm_alaw", stereo[:, 1].copy())


@pytest.mark.parametrize("encode", [encode_pcmu, encode_pcma])
def test_encode_rejects_non_int16_samples(encode: Encoder) -> None:
    """Float or int32 arrays are refused rather than silently truncated."""
    with pytest.raises(TypeError, match=r"G\.711 encodes int16 samples, not float64"):
        encode(np.zeros(4))  # type: ignore[arg-type]


def test_decode_empty() -> None:
    """No bytes decode to no samples, and no samples encode to no bytes."""
    assert decode_pcmu(b"").size == 0
    assert encode_pcma(np.zeros(0, dtype=np.int16)) == b""
