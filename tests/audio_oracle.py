"""Independent checks of audio files: decode with PyAV, validate with opusinfo, find tone onsets."""

import subprocess
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
