"""Independent checks of audio files: decode with PyAV, validate with opusinfo, find tone onsets."""

import json
import math
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

RATE_HZ = 48000


def decode_ogg(path: Path) -> npt.NDArray[np.float32]:
    """Decode an Ogg Opus file with PyAV to float samples shaped (channels, samples)."""
    chunks: list[npt.NDArray[np.float32]] = []
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", rate=RATE_HZ)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
    return np.concatenate(chunks, axis=1) if chunks else np.zeros((1, 0), np.float32)


def run_opusinfo(path: Path) -> subprocess.CompletedProcess[str]:
    """Run the strict Ogg Opus checker."""
    return subprocess.run(["opusinfo", str(path)], capture_output=True, text=True, check=False)


def assert_valid_opus(path: Path) -> None:
    """opusinfo accepts the file (exit code 0, no warnings)."""
    result = run_opusinfo(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout, result.stdout


def tone_envelope(
    signal: npt.NDArray[np.float32], freq_hz: float, window_s: float = 0.005
) -> npt.NDArray[np.float64]:
    """Amplitude of one frequency over time: heterodyne, then a centred moving average."""
    t = np.arange(signal.size) / RATE_HZ
    mixed = signal.astype(np.float64) * np.exp(-2j * np.pi * freq_hz * t)
    width = max(1, int(window_s * RATE_HZ))
    kernel = np.ones(width) / width
    return 2 * np.abs(np.convolve(mixed, kernel, mode="same"))


def find_onset(
    signal: npt.NDArray[np.float32],
    freq_hz: float,
    around_s: float,
    search_s: float = 0.3,
    min_amplitude: float = 0.05,
) -> float | None:
    """Time of the first rise of a tone near `around_s` (50 % of its peak), or None if absent."""
    start = max(0, int((around_s - search_s) * RATE_HZ))
    end = min(signal.size, int((around_s + search_s) * RATE_HZ))
    if end <= start:
        return None
    envelope = tone_envelope(signal[start:end], freq_hz)
    peak = float(envelope.max(initial=0.0))
    if peak < min_amplitude:
        return None
    first = int(np.argmax(envelope >= peak / 2))
    return (start + first) / RATE_HZ


def tone_amplitude(
    signal: npt.NDArray[np.float32], freq_hz: float, at_s: float, length_s: float
) -> float:
    """Mean amplitude of a frequency over a stretch of the signal."""
    start, end = int(at_s * RATE_HZ), int((at_s + length_s) * RATE_HZ)
    segment = signal[max(0, start) : max(0, end)]
    if segment.size == 0:
        return 0.0
    return float(tone_envelope(segment, freq_hz).mean())


def encode_tone_packets(
    frequency_hz: float,
    duration_s: float,
    frame_duration_ms: float = 20,
    bit_rate: int = 32000,
    *,
    flush: bool = True,
) -> list[bytes]:
    """Mono Opus packets of a sine tone from PyAV's libopus encoder (flushed unless told not)."""
    context = av.CodecContext.create("libopus", "w")
    context.sample_rate = RATE_HZ
    context.layout = "mono"
    context.format = "s16"
    context.bit_rate = bit_rate
    context.options = {"frame_duration": f"{frame_duration_ms:g}"}
    context.open()
    frame_samples = context.frame_size
    total_samples = round(RATE_HZ * duration_s / frame_samples) * frame_samples
    time_s = np.arange(total_samples) / RATE_HZ
    pcm = (np.sin(2 * np.pi * frequency_hz * time_s) * 10_000).astype(np.int16)
    packets: list[bytes] = []
    for start in range(0, total_samples, frame_samples):
        frame = av.AudioFrame.from_ndarray(
            pcm[start : start + frame_samples].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE_HZ
        frame.pts = start
        frame.time_base = Fraction(1, RATE_HZ)
        packets += [bytes(packet) for packet in context.encode(frame)]
    if flush:
        packets += [bytes(packet) for packet in context.encode(None)]
    return packets


def check_peaks(peaks_json: bytes, channel_files: tuple[Path, Path], duration_ms: float) -> None:
    """Waveform peaks (audiowaveform JSON v2) match min/max of the decoded channel files."""
    peaks = json.loads(peaks_json)
    assert {key: peaks[key] for key in ("version", "channels", "sample_rate", "bits")} == {
        "version": 2,
        "channels": 2,
        "sample_rate": RATE_HZ,
        "bits": 8,
    }
    spp = peaks["samples_per_pixel"]
    total = round(duration_ms * RATE_HZ / 1000)
    assert peaks["length"] == -(-total // spp)
    assert len(peaks["data"]) == peaks["length"] * 4
    decoded = [decode_ogg(path)[0] for path in channel_files]
    for channel, signal in enumerate(decoded):
        for point in range(peaks["length"]):
            # Straight from the format's description: one (min, max) pair per channel per point.
            segment = signal[point * spp : (point + 1) * spp]
            low = max(-128, min(127, math.floor(float(segment.min(initial=0.0)) * 128)))
            high = max(-128, min(127, math.floor(float(segment.max(initial=0.0)) * 128)))
            offset = (point * 2 + channel) * 2
            got = peaks["data"][offset : offset + 2]
            assert abs(got[0] - low) <= 1, (channel, point, got, low)
            assert abs(got[1] - high) <= 1, (channel, point, got, high)
