"""Tests for Opus silence packets: exact zeros of the right length when decoded."""

from __future__ import annotations

from typing import cast

import av
import numpy as np
import pytest

from mediaserver.audio.opus_silence import build_silence_packets, silence_packet
from mediaserver.audio.opus_toc import compute_packet_samples

from audio_oracle import encode_tone_packets

SAMPLE_RATE_HZ = 48000


def encode_tone_packets_unflushed(frequency_hz: float, duration_s: float) -> list[bytes]:
    """20 ms tone packets without the encoder's final flush."""
    return encode_tone_packets(frequency_hz, duration_s, flush=False)


# FFmpeg's own Opus decoder and libopus (through FFmpeg) are both checked.
DECODERS = ["opus", "libopus"]


def decode_packets(packets: list[bytes], decoder: str, channels: int = 1) -> list[np.ndarray]:
    """Decode each packet on its own with one decoder; float samples scaled to [-1, 1]."""
    context = cast("av.AudioCodecContext", av.CodecContext.create(decoder, "r"))
    context.sample_rate = SAMPLE_RATE_HZ
    context.layout = "mono" if channels == 1 else "stereo"
    outputs = []
    for packet in packets:
        frames = context.decode(av.Packet(packet))
        samples = np.concatenate([frame.to_ndarray().reshape(channels, -1) for frame in frames], 1)
        if samples.dtype == np.int16:
            samples = samples / 32768.0
        outputs.append(samples)
    return outputs


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("duration_samples", [120, 240, 480, 960, 360, 1920, 2880, 4680, 5760])
def test_decodes_to_exact_zeros(decoder: str, duration_samples: int) -> None:
    """A silence packet decodes to exactly `duration_samples` zero samples, every time."""
    for samples in decode_packets([silence_packet(duration_samples)] * 3, decoder):
        assert samples.shape == (1, duration_samples)
        assert not samples.any()


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("duration_samples", [120, 240, 480, 960])
def test_silence_after_speech_settles_to_zero(decoder: str, duration_samples: int) -> None:
    """After a tone, silence plays the decoder's fading tail, 16-bit silent from 10 ms on."""
    tone = encode_tone_packets_unflushed(440, 0.2)
    silence = [silence_packet(duration_samples)] * (5760 // duration_samples)
    outputs = decode_packets(tone + silence, decoder)
    assert np.abs(outputs[len(tone) - 1]).max() > 0.1  # the tone really played
    after = np.concatenate(outputs[len(tone) :], axis=1)[0]
    assert after.size == 5760
    # The last tone frame's MDCT overlap and post-filter tail still play out (~5 ms).
    assert np.abs(after[240:]).max() < 1e-3
    assert np.abs(after[480:]).max() < 1 / 32768


def test_silence_packets_are_tiny() -> None:
    """One-frame silence packets are three bytes (TOC 0xE0..0xF8, CELT-only fullband mono)."""
    assert silence_packet(960) == b"\xf8\xff\xfe"
    assert [silence_packet(size)[0] for size in (120, 240, 480)] == [0xE0, 0xE8, 0xF0]


@pytest.mark.parametrize("stream_count", [2, 3])
def test_multistream_silence(stream_count: int) -> None:
    """The multistream form holds self-delimited silence for all streams but the last."""
    packet = silence_packet(960, stream_count=stream_count)
    assert packet == b"\xf8\x02\xff\xfe" * (stream_count - 1) + b"\xf8\xff\xfe"


@pytest.mark.parametrize(
    "duration_samples", [0, 120, 960, 1080, 5760, 5880, 48000, 48120, 3600 * 48000 + 360]
)
def test_build_covers_duration_with_fewest_packets(duration_samples: int) -> None:
    """Packets add up to the duration, one per 120 ms and one for the rest."""
    packets = build_silence_packets(duration_samples)
    assert sum(compute_packet_samples(packet) for packet in packets) == duration_samples
    assert len(packets) == -(-duration_samples // 5760)


def test_built_packets_decode_to_silence() -> None:
    """A built run of silence decodes to that many zero samples."""
    outputs = decode_packets(build_silence_packets(12_000), "opus")
    total = np.concatenate(outputs, axis=1)
    assert total.shape == (1, 12_000)
    assert not total.any()


@pytest.mark.parametrize("duration_samples", [-120, 0, 100, 5880])
def test_silence_packet_rejects_impossible_durations(duration_samples: int) -> None:
    """Durations that are not 1..48 frames of 2.5 ms raise ValueError."""
    with pytest.raises(ValueError, match="multiple of 120"):
        silence_packet(duration_samples)


def test_build_rejects_partial_frames() -> None:
    """Silence that is not a whole number of 2.5 ms frames raises ValueError."""
    with pytest.raises(ValueError, match="multiple of 120"):
        build_silence_packets(1000)
