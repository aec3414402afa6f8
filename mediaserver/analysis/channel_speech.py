"""One channel file's speech: decode (part of) the Ogg Opus file, run VAD (worker tasks)."""

from collections.abc import Sequence
from pathlib import Path

from mediaserver.analysis.vad import (
    Span,
    SpeechDetector,
    SpeechFeatures,
    VadConfig,
    compute_speech_spans,
    join_features,
)
from mediaserver.audio.ogg_opus_decode import decode_ogg_opus_file


def extract_file_features(
    path: Path, config: VadConfig, first_s: float = 0.0, end_s: float | None = None
) -> SpeechFeatures:
    """VAD decisions and energies of [first_s, end_s) of a mono Ogg Opus file (CPU-bound)."""
    detector = SpeechDetector(config)
    rate = config.sample_rate_hz
    for block in decode_ogg_opus_file(
        path,
        rate,
        first_sample=round(first_s * rate),
        end_sample=None if end_s is None else round(end_s * rate),
    ):
        detector.feed(block)
    return detector.features()


def compute_channel_spans(parts: Sequence[SpeechFeatures], config: VadConfig) -> list[Span]:
    """A channel's speech spans from the features of its consecutive parts."""
    features = join_features(parts)
    return compute_speech_spans(features.decisions, features.energies_db, config)


def detect_file_speech(path: Path, config: VadConfig) -> tuple[list[Span], float]:
    """Speech spans of a whole mono Ogg Opus file and its duration in seconds (CPU-bound)."""
    features = extract_file_features(path, config)
    spans = compute_speech_spans(features.decisions, features.energies_db, config)
    return spans, features.samples / config.sample_rate_hz
