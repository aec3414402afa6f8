"""Voice activity: 16-bit PCM in, speech spans out, with webrtcvad's hang-over trimmed away."""

# webrtcvad (the maintained `webrtcvad-wheels`) decides speech per 10/20/30 ms frame. It keeps
# saying "speech" for 60-130 ms after a talker stops (its GMM decision has a built-in hang-over),
# so each span's edges are trimmed by energy: 10 ms slices quieter than the span's loud part by
# `trim_db` (or within `floor_margin_db` of the channel's noise floor) are not speech.

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import webrtcvad

Pcm = npt.NDArray[np.int16]
SAMPLE_RATES_HZ = (8000, 16000, 32000, 48000)  # what webrtcvad accepts
FRAME_MS_CHOICES = (10, 20, 30)
SLICE_MS = 10  # energy resolution of the edge trim
EXTEND_SLICES = 20  # a span may grow this many slices (200 ms) over loud audio webrtcvad missed
_SILENT_DB = 0.0  # 10*log10(mean square + 1) of digital silence
_PEAK_PERCENTILE = 95
_FLOOR_PERCENTILE = 20


class Span(NamedTuple):
    """A stretch of time in seconds, start inclusive, end exclusive."""

    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class SpeechFeatures:
    """What the spans are computed from: a decision per VAD frame and an energy per 10 ms."""

    decisions: npt.NDArray[np.bool_]
    energies_db: npt.NDArray[np.float32]
    samples: int  # PCM samples fed (the partial frame at the end included)


def join_features(parts: Sequence[SpeechFeatures]) -> SpeechFeatures:
    """The features of consecutive stretches (each but the last a whole number of frames)."""
    return SpeechFeatures(
        np.concatenate([p.decisions for p in parts]) if parts else np.zeros(0, bool),
        np.concatenate([p.energies_db for p in parts]) if parts else np.zeros(0, np.float32),
        sum(p.samples for p in parts),
    )


@dataclass(frozen=True, slots=True)
class VadConfig:
    """How speech is told from silence."""

    mode: int = 3  # webrtcvad aggressiveness, 0 (least) .. 3 (most)
    frame_ms: int = 30
    sample_rate_hz: int = 16000
    min_speech_ms: int = 90  # shorter bursts (clicks, breaths) are dropped
    min_silence_ms: int = 300  # shorter pauses inside speech are bridged
    trim_db: float = 35.0  # edge slices this far below the span's loud part are cut
    floor_margin_db: float = 6.0  # ... and slices this close to the noise floor

    def validate(self) -> VadConfig:
        """Return self, or raise ValueError naming what webrtcvad cannot do."""
        if self.mode not in (0, 1, 2, 3):
            raise ValueError(f"vad mode must be 0..3, got {self.mode}")
        if self.frame_ms not in FRAME_MS_CHOICES:
            raise ValueError(f"vad frame must be 10, 20 or 30 ms, got {self.frame_ms}")
        if self.sample_rate_hz not in SAMPLE_RATES_HZ:
            raise ValueError(
                f"vad rate must be one of {SAMPLE_RATES_HZ}, got {self.sample_rate_hz}"
            )
        if self.min_speech_ms < 0 or self.min_silence_ms < 0 or self.trim_db <= 0:
            raise ValueError("vad thresholds must be positive")
        return self


class SpeechDetector:
    """Feeds PCM blocks of any size through webrtcvad; finish() returns the speech spans."""

    def __init__(self, config: VadConfig) -> None:
        """Start with no audio."""
        self.config = config.validate()
        self._vad = webrtcvad.Vad(config.mode)
        self._frame_samples = config.sample_rate_hz * config.frame_ms // 1000
        self._slice_samples = config.sample_rate_hz * SLICE_MS // 1000
        self._carry = np.zeros(0, np.int16)
        self._decisions: list[bool] = []
        self._energies: list[npt.NDArray[np.float32]] = []
        self.samples = 0

    def feed(self, pcm: Pcm) -> None:
        """Take the next PCM samples (mono, 16-bit, at the configured rate)."""
        self.samples += pcm.size
        data = np.concatenate([self._carry, pcm]) if self._carry.size else pcm
        whole = data.size // self._frame_samples * self._frame_samples
        frames = data[:whole]
        self._carry = data[whole:].copy()
        if not whole:
            return
        is_speech = self._vad.is_speech
        rate = self.config.sample_rate_hz
        raw = frames.tobytes()
        step = self._frame_samples * 2
        self._decisions.extend(
            is_speech(raw[offset : offset + step], rate) for offset in range(0, len(raw), step)
        )
        slices = frames.astype(np.float32).reshape(-1, self._slice_samples)
        self._energies.append(
            (10 * np.log10(np.mean(slices * slices, axis=1) + 1.0)).astype(np.float32)
        )

    def features(self) -> SpeechFeatures:
        """webrtcvad's decisions and the 10 ms energies of every whole frame fed so far."""
        energies = np.concatenate(self._energies) if self._energies else np.zeros(0, np.float32)
        return SpeechFeatures(np.array(self._decisions, bool), energies, self.samples)

    def finish(self) -> list[Span]:
        """The speech spans of everything fed (a trailing partial frame counts as silence)."""
        features = self.features()
        return compute_speech_spans(features.decisions, features.energies_db, self.config)


def detect_speech(blocks: Iterable[Pcm], config: VadConfig) -> list[Span]:
    """Speech spans of a whole channel given as PCM blocks."""
    detector = SpeechDetector(config)
    for block in blocks:
        detector.feed(block)
    return detector.finish()


def compute_speech_spans(
    decisions: npt.NDArray[np.bool_], energies_db: npt.NDArray[np.float32], config: VadConfig
) -> list[Span]:
    """Spans from per-frame decisions and 10 ms energies, with edges where speech is audible."""
    # 1. webrtcvad's runs of speech frames, pauses shorter than min_silence bridged: regions.
    # 2. Per region, a loudness threshold (below its loud part by trim_db, above the noise floor).
    # 3. The region's loud slices, extended over loud slices just outside it (a soft onset that
    #    webrtcvad noticed late), regrouped with min_silence: the hang-over's quiet tail and any
    #    pause it had bridged fall out, so spans begin and end where speech is audible.
    slices_per_frame = config.frame_ms // SLICE_MS
    bridge_slices = config.min_silence_ms // SLICE_MS
    regions: list[list[int]] = []
    for start, end in _runs(decisions):
        first, last = start * slices_per_frame, min(end * slices_per_frame, energies_db.size)
        if regions and first - regions[-1][1] < bridge_slices:
            regions[-1][1] = last
        elif first < last:
            regions.append([first, last])
    floor_db = _noise_floor_db(decisions, energies_db, slices_per_frame)
    spans: list[Span] = []
    for index, (region_first, region_last) in enumerate(regions):
        first, last = region_first, region_last
        threshold_db = _threshold_db(energies_db[first:last], floor_db, config)
        lower = regions[index - 1][1] if index else 0
        upper = regions[index + 1][0] if index + 1 < len(regions) else energies_db.size
        while first > max(lower, first - EXTEND_SLICES) and energies_db[first - 1] >= threshold_db:
            first -= 1
        while last < min(upper, last + EXTEND_SLICES) and energies_db[last] >= threshold_db:
            last += 1
        loud = np.flatnonzero(energies_db[first:last] >= threshold_db) + first
        for group_first, group_last in _group(loud, bridge_slices):
            if (group_last - group_first) * SLICE_MS >= config.min_speech_ms:
                spans.append(Span(group_first * SLICE_MS / 1000, group_last * SLICE_MS / 1000))
    return spans


def _runs(decisions: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """(start, end) frame indexes of each run of True."""
    if not decisions.size:
        return []
    padded = np.concatenate([[False], decisions, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _noise_floor_db(
    decisions: npt.NDArray[np.bool_], energies_db: npt.NDArray[np.float32], slices_per_frame: int
) -> float:
    """The channel's background level: a low percentile of the slices webrtcvad calls silence."""
    # Low, because those slices include soft speech webrtcvad missed (onsets such as "th").
    quiet = np.repeat(~decisions, slices_per_frame)[: energies_db.size]
    background = energies_db[: quiet.size][quiet]
    return float(np.percentile(background, _FLOOR_PERCENTILE)) if background.size else _SILENT_DB


def _threshold_db(
    energies_db: npt.NDArray[np.float32], floor_db: float, config: VadConfig
) -> float:
    """The level below which a 10 ms slice of this region is not speech."""
    loud_db = float(np.percentile(energies_db, _PEAK_PERCENTILE)) if energies_db.size else 0.0
    return max(loud_db - config.trim_db, floor_db + config.floor_margin_db)


def _group(indexes: npt.NDArray[np.intp], bridge: int) -> list[tuple[int, int]]:
    """Sorted slice indexes as (first, end) groups, gaps shorter than `bridge` slices closed."""
    if not indexes.size:
        return []
    breaks = np.flatnonzero(np.diff(indexes) > bridge) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [indexes.size]])
    return [(int(indexes[a]), int(indexes[b - 1]) + 1) for a, b in zip(starts, ends, strict=True)]
