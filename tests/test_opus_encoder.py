"""Tests for the mono PCM to Opus encoder, checked by decoding with FFmpeg's Opus decoder."""

from __future__ import annotations

import av
import numpy as np
import numpy.typing as npt
import pytest

from mediaserver.audio.opus_encoder import EncodedPacket, OpusEncoder

OPUS_RATE_HZ = 48000


def tone(rate_hz: int, frequency_hz: float, duration_s: float) -> npt.NDArray[np.int16]:
    """A sine tone at a third of full scale."""
    t = np.arange(round(rate_hz * duration_s)) / rate_hz
    return (np.sin(2 * np.pi * frequency_hz * t) * 10000).astype(np.int16)


def encode_in_chunks(
    encoder: OpusEncoder, samples: npt.NDArray[np.int16], chunk: int
) -> list[EncodedPacket]:
    """Feed the encoder odd-sized chunks, as a network source would, then flush it."""
    packets: list[EncodedPacket] = []
    for start in range(0, len(samples), chunk):
        packets += encoder.encode(samples[start : start + chunk])
    return packets + encoder.flush()


def decode(packets: list[EncodedPacket]) -> list[npt.NDArray[np.float32]]:
    """Decode each packet on its own with FFmpeg's Opus decoder; one array per packet."""
    decoder = av.CodecContext.create("opus", "r")
    decoder.layout = "mono"
    decoder.sample_rate = OPUS_RATE_HZ
    decoded = []
    for packet in packets:
        frames = decoder.decode(av.Packet(packet.payload))
        decoded.append(np.concatenate([frame.to_ndarray()[0] for frame in frames]))
    return decoded


def peak_frequency_hz(samples: npt.NDArray[np.float32], rate_hz: int) -> float:
    """Frequency of the strongest FFT bin."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate_hz / len(samples))


@pytest.mark.parametrize("input_rate_hz", [8000, 16000, 24000, 48000])
def test_tone_survives_encoding_at_its_frequency(input_rate_hz: int) -> None:
    """A 440 Hz tone encoded from 8/16/24/48 kHz PCM decodes to a 440 Hz peak at 48 kHz."""
    encoder = OpusEncoder(input_rate_hz=input_rate_hz)
    packets = encode_in_chunks(encoder, tone(input_rate_hz, 440, 1.0), chunk=137)
    decoded = np.concatenate(decode(packets))
    steady = decoded[encoder.pre_skip + 4800 : encoder.pre_skip + 43200]
    assert abs(peak_frequency_hz(steady, OPUS_RATE_HZ) - 440) <= 2


@pytest.mark.parametrize("input_rate_hz", [8000, 16000, 24000, 48000])
def test_decoded_length_covers_input_plus_pre_skip(input_rate_hz: int) -> None:
    """Decoded samples = 48 kHz input length + pre-skip, padded up to less than one more frame."""
    encoder = OpusEncoder(input_rate_hz=input_rate_hz)
    samples = tone(input_rate_hz, 440, 0.731)
    packets = encode_in_chunks(encoder, samples, chunk=251)
    decoded_samples = sum(len(pcm) for pcm in decode(packets))
    expected = len(samples) * OPUS_RATE_HZ // input_rate_hz
    assert encoder.input_duration_samples == expected
    assert 0 <= decoded_samples - encoder.pre_skip - expected < 960


def test_packet_durations_are_960_at_48_khz_for_20_ms_frames() -> None:
    """Each 20 ms packet is reported, and decodes, as 960 samples whatever the input rate."""
    encoder = OpusEncoder(input_rate_hz=8000)
    packets = encode_in_chunks(encoder, tone(8000, 440, 0.5), chunk=160)
    assert [packet.duration_samples for packet in packets] == [960] * len(packets)
    assert [len(pcm) for pcm in decode(packets)] == [960] * len(packets)


def test_60_ms_frames_report_2880_samples() -> None:
    """A 60 ms frame duration yields packets that decode to 2880 samples each."""
    encoder = OpusEncoder(input_rate_hz=16000, frame_duration_ms=60)
    packets = encode_in_chunks(encoder, tone(16000, 440, 0.5), chunk=333)
    assert [packet.duration_samples for packet in packets] == [2880] * len(packets)
    assert [len(pcm) for pcm in decode(packets)] == [2880] * len(packets)


def test_partial_frames_wait_for_more_samples() -> None:
    """Less than a frame of input yields nothing until the frame is complete."""
    encoder = OpusEncoder(input_rate_hz=8000)
    samples = tone(8000, 440, 0.04)
    assert encoder.encode(samples[:100]) == []
    assert encoder.encode(samples[100:159]) == []
    assert len(encoder.encode(samples[159:161])) == 1


def test_click_stays_at_its_time_after_pre_skip() -> None:
    """A click at 8 kHz sample N decodes at 48 kHz sample 6N + pre-skip, within 1 ms."""
    samples = np.zeros(8000, dtype=np.int16)
    click_index = 3001
    samples[click_index : click_index + 4] = 30000
    encoder = OpusEncoder(input_rate_hz=8000)
    decoded = np.concatenate(decode(encode_in_chunks(encoder, samples, chunk=80)))
    found_index = int(np.argmax(np.abs(decoded))) - encoder.pre_skip
    assert abs(found_index - click_index * 6) <= 48


def test_pre_skip_is_the_encoder_lookahead() -> None:
    """pre_skip is libopus's 6.5 ms lookahead (312 samples at 48 kHz) at every input rate."""
    assert {OpusEncoder(input_rate_hz=rate).pre_skip for rate in (8000, 24000, 48000)} == {312}


def test_bit_rate_setting_changes_packet_sizes() -> None:
    """A higher bit rate produces proportionally bigger packets for the same audio."""
    samples = tone(48000, 440, 1.0) + tone(48000, 3100, 1.0) // 2

    def total_bytes(bitrate_bps: int) -> int:
        encoder = OpusEncoder(input_rate_hz=48000, bitrate_bps=bitrate_bps)
        return sum(len(packet.payload) for packet in encode_in_chunks(encoder, samples, 960))

    assert total_bytes(64000) > 1.5 * total_bytes(24000)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_rate_hz": 44100}, "44100 Hz"),
        ({"input_rate_hz": 8000, "frame_duration_ms": 30}, "30 ms"),
        ({"input_rate_hz": 8000, "complexity": 11}, "complexity"),
    ],
)
def test_settings_libopus_cannot_use_are_refused(kwargs: dict[str, int], message: str) -> None:
    """Rates, frame durations and complexities outside what Opus supports raise ValueError."""
    with pytest.raises(ValueError, match=message):
        OpusEncoder(**kwargs)


def test_samples_must_be_1d_int16() -> None:
    """Float or 2-D input is refused rather than silently reinterpreted."""
    encoder = OpusEncoder(input_rate_hz=8000)
    with pytest.raises(ValueError, match="int16"):
        encoder.encode(np.zeros(160, dtype=np.float32))
    with pytest.raises(ValueError, match="1-D"):
        encoder.encode(np.zeros((2, 160), dtype=np.int16))
