"""Waveform peaks: each channel's min and max per pixel, as BBC audiowaveform JSON (version 2)."""

# Format (github.com/bbc/audiowaveform doc/DataFormat.md): {"version": 2, "channels",
# "sample_rate", "samples_per_pixel", "bits", "length", "data"}, where `data` holds `length`
# points, each a (min, max) pair per channel, channels interleaved:
# data[(point * channels + channel) * 2] is the min, the next value the max.

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

AUDIOWAVEFORM_VERSION = 2
DEFAULT_BITS = 8  # a screen pixel cannot show more: 16 bits would double the JSON for nothing
# Short calls get 100 points per second (10 ms at 48 kHz); longer ones are capped at MAX_POINTS,
# so a 60-minute call is 8,000 points (~2.2 per second, six times a 1280-pixel-wide screen) and
# its JSON stays near 100 KB.
POINT_STEP_SAMPLES = 480
MAX_POINTS = 8000
# Samples reduced at once: large enough that numpy's per-call cost vanishes, small enough to stay
# a few MB.
_BATCH_SAMPLES = 1 << 16
_MERGE_PARTS = 64  # reduced batches kept apart before they are joined into one array
# Sample frames per row in the first reduction (the largest that divides samples_per_pixel).
_ROW_FRAMES = (240, 48, 16, 1)

FloatPcm = npt.NDArray[np.float32]
Levels = npt.NDArray[np.int16]


@dataclass(frozen=True)
class Peaks:
    """Min and max per point and channel, quantized to `bits` (shape: points x channels)."""

    sample_rate_hz: int
    samples_per_pixel: int
    bits: int
    minima: Levels
    maxima: Levels

    @property
    def length(self) -> int:
        """Number of points."""
        return int(self.minima.shape[0])

    @property
    def channels(self) -> int:
        """Number of channels."""
        return int(self.minima.shape[1])

    def to_audiowaveform(self) -> dict[str, object]:
        """The audiowaveform JSON object (version 2, channels interleaved)."""
        data = np.empty((self.length, self.channels, 2), dtype=np.int16)
        data[:, :, 0] = self.minima
        data[:, :, 1] = self.maxima
        return {
            "version": AUDIOWAVEFORM_VERSION,
            "channels": self.channels,
            "sample_rate": self.sample_rate_hz,
            "samples_per_pixel": self.samples_per_pixel,
            "bits": self.bits,
            "length": self.length,
            "data": data.reshape(-1).tolist(),
        }


def choose_samples_per_pixel(
    total_samples: int, *, step: int = POINT_STEP_SAMPLES, max_points: int = MAX_POINTS
) -> int:
    """The smallest multiple of `step` that keeps `total_samples` within `max_points` points."""
    return step * max(1, math.ceil(total_samples / (max_points * step)))


def compute_peaks(
    pcm: FloatPcm, samples_per_pixel: int, *, sample_rate_hz: int = 48000, bits: int = DEFAULT_BITS
) -> Peaks:
    """Peaks of float PCM shaped (samples, channels) in [-1, 1]; the last point may be partial."""
    builder = PeaksBuilder(
        samples_per_pixel, pcm.shape[1], sample_rate_hz=sample_rate_hz, bits=bits
    )
    builder.add(pcm)
    return builder.build()


def build_audiowaveform_json(peaks: Peaks) -> bytes:
    """Compact JSON bytes of the audiowaveform object."""
    return json.dumps(peaks.to_audiowaveform(), separators=(",", ":")).encode()


def combine_channels(parts: Sequence[Peaks], *, length: int = 0) -> Peaks:
    """Put the channels of several Peaks side by side, padded with silence to a common length."""
    first = parts[0]
    if any(
        (p.samples_per_pixel, p.sample_rate_hz, p.bits)
        != (first.samples_per_pixel, first.sample_rate_hz, first.bits)
        for p in parts
    ):
        raise ValueError("peaks to combine must share samples per pixel, rate and bits")
    length = max(length, *(p.length for p in parts))

    def padded(levels: Levels) -> Levels:
        return np.pad(levels, ((0, length - levels.shape[0]), (0, 0)))

    return Peaks(
        first.sample_rate_hz,
        first.samples_per_pixel,
        first.bits,
        np.concatenate([padded(p.minima) for p in parts], axis=1),
        np.concatenate([padded(p.maxima) for p in parts], axis=1),
    )


class PeaksBuilder:
    """Accumulates PCM blocks of any size and reduces them to peaks in large batches."""

    def __init__(
        self,
        samples_per_pixel: int,
        channel_count: int,
        *,
        sample_rate_hz: int = 48000,
        bits: int = DEFAULT_BITS,
    ) -> None:
        """Reduce `channel_count` channels to one point per `samples_per_pixel` samples."""
        if samples_per_pixel < 1 or channel_count < 1 or bits not in (8, 16):
            raise ValueError("peaks need samples_per_pixel >= 1, channels >= 1, 8 or 16 bits")
        self.samples_per_pixel = samples_per_pixel
        self.channel_count = channel_count
        self.sample_rate_hz = sample_rate_hz
        self.bits = bits
        self._batch_samples = samples_per_pixel * max(1, _BATCH_SAMPLES // samples_per_pixel)
        self._pending: list[FloatPcm] = []
        self._pending_samples = 0
        self._minima: list[FloatPcm] = []
        self._maxima: list[FloatPcm] = []

    def add(self, pcm: FloatPcm) -> None:
        """Take float samples shaped (samples, channels)."""
        if pcm.ndim != 2 or pcm.shape[1] != self.channel_count:
            raise ValueError(
                f"expected PCM shaped (samples, {self.channel_count}), got {pcm.shape}"
            )
        if not pcm.shape[0]:
            return
        self._pending.append(pcm)
        self._pending_samples += pcm.shape[0]
        if self._pending_samples >= self._batch_samples:
            self._reduce(final=False)

    def build(self) -> Peaks:
        """The peaks of everything added (the last point covers what is left)."""
        self._reduce(final=True)
        if self._minima:
            minima = np.concatenate(self._minima)
            maxima = np.concatenate(self._maxima)
        else:
            minima = maxima = np.zeros((0, self.channel_count), dtype=np.float32)
        return Peaks(
            self.sample_rate_hz,
            self.samples_per_pixel,
            self.bits,
            _quantize(minima, self.bits),
            _quantize(maxima, self.bits),
        )

    def _reduce(self, *, final: bool) -> None:
        """Reduce the whole points pending (and, when final, the partial last one)."""
        if not self._pending:
            return
        pcm = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        spp = self.samples_per_pixel
        whole = pcm.shape[0] // spp * spp
        if whole:
            minima, maxima = _reduce_points(pcm[:whole], spp)
            self._minima.append(minima)
            self._maxima.append(maxima)
            if len(self._minima) >= _MERGE_PARTS:
                # Thousands of tiny arrays cost more than their points: keep one of each.
                self._minima = [np.concatenate(self._minima)]
                self._maxima = [np.concatenate(self._maxima)]
        rest = pcm[whole:]
        if final and rest.shape[0]:
            self._minima.append(rest.min(axis=0, keepdims=True))
            self._maxima.append(rest.max(axis=0, keepdims=True))
            rest = rest[:0]
        # A copy: a view would keep the whole batch alive until the next one.
        self._pending = [rest.copy()] if rest.shape[0] else []
        self._pending_samples = rest.shape[0]


def _reduce_points(pcm: FloatPcm, samples_per_pixel: int) -> tuple[FloatPcm, FloatPcm]:
    """Min and max of each whole point of interleaved PCM, shaped (points, channels)."""
    # Reducing (points, samples, channels) over its middle axis walks rows of 1-2 floats, which
    # numpy does ~30x slower than rows it can vectorize. So rows hold `k` whole sample frames:
    # the first reduction runs over long contiguous rows, the second over `k` frames per point.
    points = pcm.shape[0] // samples_per_pixel
    channels = pcm.shape[1]
    k = next(k for k in _ROW_FRAMES if samples_per_pixel % k == 0)
    rows = pcm.reshape(points, samples_per_pixel // k, k * channels)
    minima = rows.min(axis=1).reshape(points, k, channels).min(axis=1)
    maxima = rows.max(axis=1).reshape(points, k, channels).max(axis=1)
    return minima, maxima


def _quantize(levels: FloatPcm, bits: int) -> Levels:
    """Float levels in [-1, 1] to signed `bits`-bit integers (as audiowaveform scales them)."""
    full_scale = 1 << (bits - 1)
    scaled = np.floor(levels.astype(np.float64) * full_scale)
    return np.clip(scaled, -full_scale, full_scale - 1).astype(np.int16)
